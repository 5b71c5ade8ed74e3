"""Long-tailed class profiles and the index selection of Cao et al. (LDAM-DRW, 2019).

Exponential profile: ``n_i = int(n_max * r ** (i / (C - 1)))`` with ``r = 1 / imbalance_ratio``.
Step profile: the first ``C // 2`` classes keep ``n_max``, the rest get ``int(n_max * r)``.

Selection: one ``numpy.random.RandomState(seed)`` created once before the class loop; for each
class ``i`` in order, shuffle the indices of that class and keep the first ``n_i``. With
``seed=0`` this is exactly what ``np.random.seed(0)`` followed by ``np.random.shuffle`` per class
does in the reference code, so the same images are picked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from focalsam.errors import DataError

if TYPE_CHECKING:
    from typing_extensions import Self  # Python 3.10 has no typing.Self

Profile = Literal["exp", "step"]

__all__ = [
    "LongTailSubsets",
    "Profile",
    "class_counts",
    "long_tailed_counts",
    "long_tailed_indices",
    "select_long_tailed",
    "validate_imbalance_ratio",
]


def validate_imbalance_ratio(imbalance_ratio: float) -> float:
    """Check that ``imbalance_ratio = n_max / n_min`` is a finite number >= 1 and return it."""
    try:
        ratio = float(imbalance_ratio)
    except (TypeError, ValueError):  # float() of a non-number
        raise DataError(
            f"imbalance_ratio must be a number >= 1 (n_max / n_min), got {imbalance_ratio!r}"
        ) from None
    if not np.isfinite(ratio) or ratio < 1:
        raise DataError(
            f"imbalance_ratio must be a finite number >= 1 (n_max / n_min), got {imbalance_ratio!r}"
        )
    return ratio


def long_tailed_counts(
    n_max: int, num_classes: int, imbalance_ratio: float, profile: Profile = "exp"
) -> list[int]:
    """Per-class image counts of a long-tailed profile.

    ``exp``: ``n_i = int(n_max * (1 / ratio) ** (i / (C - 1)))``;
    ``step``: ``n_max`` for the first ``C // 2`` classes, ``int(n_max / ratio)`` for the rest.

    >>> long_tailed_counts(5000, 10, 100)
    [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    >>> sum(long_tailed_counts(500, 100, 100))
    10847
    """
    ratio = validate_imbalance_ratio(imbalance_ratio)
    if isinstance(n_max, bool) or not isinstance(n_max, int | np.integer) or n_max < 1:
        raise DataError(f"n_max must be a positive integer, got {n_max!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise DataError(f"num_classes must be a positive integer, got {num_classes!r}")
    if num_classes < 1:
        raise DataError(f"num_classes must be a positive integer, got {num_classes!r}")
    factor = 1.0 / ratio
    if profile == "exp":
        if num_classes == 1:
            return [int(n_max)]
        return [int(n_max * factor ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    if profile == "step":
        head = num_classes // 2
        # The reference code emits C // 2 tail classes, which drops one class when C is odd;
        # here every class past the first half is a tail class.
        return [int(n_max)] * head + [int(n_max * factor)] * (num_classes - head)
    raise DataError(f"profile must be 'exp' or 'step', got {profile!r}")


def class_counts(labels: Sequence[int] | np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Number of samples per class, ``counts[i] = #{n : labels[n] == i}`` (int64, length C)."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DataError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"labels must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if num_classes is None:
        num_classes = int(arr.max()) + 1 if arr.size else 0
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        bad = arr[(arr < 0) | (arr >= num_classes)][0]
        raise DataError(f"label {int(bad)} is out of range: expected 0 <= label < {num_classes}")
    return np.bincount(arr, minlength=num_classes).astype(np.int64)


def select_long_tailed(
    labels: Sequence[int] | np.ndarray, counts: Sequence[int], seed: int = 0
) -> np.ndarray:
    """Indices of a long-tailed subset: per class ``i``, the first ``counts[i]`` of a shuffle.

    One ``RandomState(seed)`` is created before the class loop and shuffles each class's
    indices (in dataset order) in turn; the result is concatenated class by class, as in the
    reference code, so ``labels[result]`` is sorted by class.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DataError(f"labels must be one-dimensional, got shape {arr.shape}")
    num_classes = len(counts)
    have = class_counts(arr, num_classes)
    for i, (want, got) in enumerate(zip(counts, have, strict=True)):
        if want < 0:
            raise DataError(f"counts[{i}] = {want} is negative")
        if want > got:
            raise DataError(
                f"class {i} has {int(got)} samples but the profile asks for {want}; "
                "lower n_max or the imbalance ratio"
            )
    rng = np.random.RandomState(seed)
    picked = []
    for i in range(num_classes):
        idx = np.where(arr == i)[0]
        rng.shuffle(idx)
        picked.append(idx[: int(counts[i])])
    if not picked:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(picked).astype(np.int64)


def long_tailed_indices(
    labels: Sequence[int] | np.ndarray,
    num_classes: int,
    imbalance_ratio: float,
    profile: Profile = "exp",
    seed: int = 0,
    n_max: int | None = None,
) -> np.ndarray:
    """Indices of the long-tailed subset of a labelled set: counts from
    :func:`long_tailed_counts`, images from :func:`select_long_tailed`.

    ``n_max`` defaults to the smallest class size, so every class can supply its share
    (``N / C`` for a balanced set such as CIFAR). A profile that leaves a class with no
    images raises ``DataError``.
    """
    if n_max is None:
        n_max = int(class_counts(labels, num_classes).min())
    counts = long_tailed_counts(n_max, num_classes, imbalance_ratio, profile)
    empty = [i for i, n in enumerate(counts) if n == 0]
    if empty:
        shown = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
        raise DataError(
            f"imbalance_ratio {imbalance_ratio} with n_max {n_max} leaves {len(empty)} "
            f"class(es) with no training images (classes {shown}); expected "
            f"imbalance_ratio <= n_max, so the rarest class keeps at least one image"
        )
    return select_long_tailed(labels, counts, seed)


class LongTailSubsets:
    """Class counts and long-tailed subsets for a labelled dataset.

    A mixin: the dataset sets ``labels`` (int64 array), ``num_classes`` and defines
    ``subset(indices)``, which returns a dataset of its own type.
    """

    labels: np.ndarray
    num_classes: int

    def subset(self, indices: Sequence[int] | np.ndarray) -> Self:
        raise NotImplementedError

    @property
    def class_counts(self) -> np.ndarray:
        """Samples per class, int64 array of length ``num_classes``."""
        return class_counts(self.labels, self.num_classes)

    def long_tailed(
        self,
        imbalance_ratio: float,
        profile: Profile = "exp",
        seed: int = 0,
        n_max: int | None = None,
    ) -> Self:
        """A long-tailed subset by :func:`long_tailed_indices` (the CIFAR-LT profile code).

        ``n_max`` defaults to the smallest class size (``N / C`` for a balanced set).
        """
        return self.subset(
            long_tailed_indices(
                self.labels, self.num_classes, imbalance_ratio, profile, seed, n_max
            )
        )
