"""An offline long-tailed demo set: scikit-learn's handwritten digits (real 8x8 scans).

``sklearn.datasets.load_digits`` ships 1,797 grayscale 8x8 images of 10 digits (174 to 183
per class) inside scikit-learn, so the demo needs no download. :func:`digits_lt` holds out a
balanced test set (``test_per_class`` per class) and makes the rest long-tailed with the
CIFAR-LT profile code, ``n_max`` = the smallest remaining class (124 with the defaults).

With the defaults (ratio 10, exponential, 50 test images per class) the train counts are
124, 96, 74, 57, 44, 34, 26, 20, 16, 12 (503 images) and the test set has 500 images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from focalsam.data.profiles import Profile, long_tailed_indices
from focalsam.errors import DataError

__all__ = ["DigitsLT", "digits_lt"]


@dataclass
class DigitsLT:
    """Train/test tensors: ``x`` float32 ``(N, 1, 8, 8)`` in [0, 1], ``y`` int64 ``(N,)``."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    class_counts: Tensor
    num_classes: int = 10

    def to(self, device: torch.device | str) -> DigitsLT:
        """The same split with every tensor on ``device``."""
        return DigitsLT(
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.class_counts.to(device),
            self.num_classes,
        )


def digits_lt(
    imbalance_ratio: float = 10,
    profile: Profile = "exp",
    test_per_class: int = 50,
    seed: int = 0,
) -> DigitsLT:
    """Long-tailed train split and balanced test split of scikit-learn's digits.

    Per class (with one ``RandomState(seed)``), the first ``test_per_class`` of a shuffle form
    the test set; the remaining images are subsampled by :func:`select_long_tailed` with
    counts ``long_tailed_counts(n_max, 10, imbalance_ratio, profile)`` (via :func:`long_tailed_indices`). Deterministic in ``seed``.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0  # (1797, 8, 8), 0..16 -> 0..1
    labels = np.asarray(bunch.target, dtype=np.int64)
    per_class = np.bincount(labels, minlength=10)
    if not 0 < test_per_class < per_class.min():
        raise DataError(
            f"test_per_class must be in [1, {per_class.min() - 1}] so every class keeps "
            f"training images, got {test_per_class}"
        )
    rng = np.random.RandomState(seed)
    test_idx, pool_idx = [], []
    for c in range(10):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        test_idx.append(idx[:test_per_class])
        pool_idx.append(idx[test_per_class:])
    test = np.concatenate(test_idx)
    pool = np.concatenate(pool_idx)
    # n_max: the smallest remaining class, so every class supplies its share
    train = pool[long_tailed_indices(labels[pool], 10, imbalance_ratio, profile, seed)]

    def tensors(idx: np.ndarray) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(images[idx]).unsqueeze(1), torch.from_numpy(labels[idx])

    x_train, y_train = tensors(train)
    x_test, y_test = tensors(test)
    counts = torch.bincount(y_train, minlength=10)
    return DigitsLT(x_train, y_train, x_test, y_test, counts)
