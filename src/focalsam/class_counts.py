"""One check for training-set class counts, shared by the optimizers, losses and metrics.

``n_i`` is the number of training samples of class ``i``; every consumer needs a non-empty
1-D sequence of finite whole numbers, one per class, each at least some minimum
(1 for priors ``pi_i = n_i / sum n`` and logarithms, 2 for CC-SAM's ``(n_i - 1) ** (1/4)``,
0 for grouping classes by size).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import torch
from torch import Tensor

from focalsam.errors import ClassCountsError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ClassCountsError", "CountsLike", "validate_class_counts"]

CountsLike = Union[Sequence[int], Sequence[float], Tensor, "np.ndarray"]

_SHOWN = 8  # bad classes named in a message


def validate_class_counts(
    counts: CountsLike | None,
    num_classes: int | None = None,
    *,
    min_count: int = 1,
    name: str = "class_counts",
    why: str = "",
    error: type[ClassCountsError] = ClassCountsError,
) -> Tensor:
    """``counts`` as a 1-D float64 CPU tensor ``n`` with ``n_i >= min_count`` whole, checked.

    ``num_classes``: the length expected, when known. ``why``: appended to the message
    of a count below ``min_count`` (the reason a method needs it). Raises ``error``, by
    default (and in focalsam everywhere) the one :class:`focalsam.errors.ClassCountsError`.

    >>> validate_class_counts([5, 2])
    tensor([5., 2.], dtype=torch.float64)
    >>> validate_class_counts([5, 0])
    Traceback (most recent call last):
    ...
    focalsam.errors.ClassCountsError: class_counts must be positive, got 0 for class 1 ...
    """
    if counts is None:
        raise error(f"{name} is required: the number of training samples of each class")
    try:
        raw = counts.detach().cpu() if isinstance(counts, Tensor) else counts
        n = torch.as_tensor(raw, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise error(
            f"{name} must be a 1-D sequence of per-class training counts, got {counts!r}"
        ) from exc
    if n.ndim != 1 or n.numel() == 0:
        raise error(
            f"{name} must be a non-empty 1-D sequence (one count per class), "
            f"got shape {tuple(n.shape)}"
        )
    if num_classes is not None and n.numel() != num_classes:
        raise error(
            f"{name} has {n.numel()} entries but there are {num_classes} classes "
            "(expected one count per class)"
        )
    _check(n, ~torch.isfinite(n), f"{name} must be finite", "", error)
    _check(n, n != n.round(), f"{name} must hold whole numbers (samples per class)", "", error)
    need = {0: "non-negative", 1: "positive"}.get(min_count, f">= {min_count}")
    if not why and min_count == 1:
        why = "every class needs at least one training sample: drop empty classes"
    _check(n, n < min_count, f"{name} must be {need}", why, error)
    return n


def _check(n: Tensor, bad: Tensor, message: str, why: str, error: type[ClassCountsError]) -> None:
    """Raise ``error`` naming the classes where ``bad`` holds and their values."""
    idx = bad.nonzero().flatten().tolist()
    if not idx:
        return
    values: list[Any] = [_fmt(v) for v in n[idx[:_SHOWN]].tolist()]
    if len(idx) == 1:
        got = f"got {values[0]} for class {idx[0]}"
    else:
        more = f" and {len(idx) - _SHOWN} more" if len(idx) > _SHOWN else ""
        got = f"got {', '.join(values)} for classes {idx[:_SHOWN]}{more}"
    raise error(f"{message}, {got}" + (f" ({why})" if why else ""))


def _fmt(v: float) -> str:
    return f"{v:g}"
