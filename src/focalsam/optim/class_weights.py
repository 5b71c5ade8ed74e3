"""Per-class weights of the two-weight rule, public so users can inspect them.

For class counts ``n_i`` with ``pi_i = n_i / sum(n)``:

* Focal-SAM: sharp weight ``c_i = lam * (1 - pi_i) ** gamma``, clean weight ``1 - c_i``.
* ImbSAM: tail = ``{i : n_i < eta}``; clean weight ``1[not tail]``,
  sharp weight ``kappa * 1[tail]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from focalsam.class_counts import validate_class_counts as _validate
from focalsam.optim.errors import ClassCountsError, InvalidHyperparameterError

ClassCounts = Sequence[int] | Tensor | np.ndarray
#: Weights of the two-weight rule: one number for every class, or one per class.
Weights = float | Sequence[float] | Tensor | np.ndarray


def validate_class_counts(
    class_counts: ClassCounts, num_classes: int | None = None, *, min_count: int = 1, why: str = ""
) -> Tensor:
    """``class_counts`` as a 1-D float64 CPU tensor, checked by
    :func:`focalsam.class_counts.validate_class_counts`: whole numbers ``>= min_count``
    (``why``: the reason, for the message), one per class (``num_classes`` of them when
    given). Raises the optimizers' :class:`ClassCountsError`.
    """
    return _validate(
        class_counts, num_classes, min_count=min_count, why=why, error=ClassCountsError
    )


def as_weights(weights: Weights, name: str) -> float | Tensor:
    """A constant (float) or a 1-D float64 CPU tensor of per-class weights, checked finite."""
    if isinstance(weights, int | float):
        w = float(weights)
        if not math.isfinite(w):
            raise InvalidHyperparameterError(f"{name} must be finite, got {w}")
        return w
    t = torch.as_tensor(
        weights.detach().cpu() if isinstance(weights, Tensor) else weights, dtype=torch.float64
    )
    if t.ndim != 1 or t.numel() == 0:
        raise InvalidHyperparameterError(
            f"{name} must be a number or a non-empty 1-D per-class sequence, "
            f"got shape {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all():
        raise InvalidHyperparameterError(f"{name} must be finite, got {t.tolist()}")
    return t


def is_zero(w: float | Tensor) -> bool:
    """Whether every weight is 0 (its backward pass can be skipped)."""
    return bool(w == 0) if isinstance(w, float) else not bool(w.ne(0).any())


def class_priors(class_counts: ClassCounts) -> Tensor:
    """``pi_i = n_i / sum_j n_j`` as float64."""
    counts = validate_class_counts(class_counts)
    return counts / counts.sum()


def focal_weights(
    class_counts: ClassCounts,
    gamma: float,
    lam: float,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Focal-SAM's sharpness weight per class: ``lam * (1 - pi_i) ** gamma``.

    >>> focal_weights([3, 1], gamma=1.0, lam=1.0)
    tensor([0.2500, 0.7500])
    """
    if gamma < 0:
        raise InvalidHyperparameterError(f"gamma must be >= 0, got {gamma}")
    if lam < 0:
        raise InvalidHyperparameterError(f"lam must be >= 0, got {lam}")
    pi = class_priors(class_counts)
    return (lam * (1.0 - pi) ** gamma).to(dtype)


def tail_mask(class_counts: ClassCounts, eta: float) -> Tensor:
    """ImbSAM's tail classes: ``n_i < eta`` (boolean, one entry per class).

    >>> tail_mask([500, 100, 5], eta=100)
    tensor([False, False,  True])
    """
    if eta < 0:
        raise InvalidHyperparameterError(f"eta must be >= 0, got {eta}")
    return validate_class_counts(class_counts) < eta


def imbsam_weights(
    class_counts: ClassCounts,
    eta: float,
    kappa: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """ImbSAM's (clean, sharp) class weights: ``(1[not tail], kappa * 1[tail])``."""
    if kappa < 0:
        raise InvalidHyperparameterError(f"kappa must be >= 0, got {kappa}")
    tail = tail_mask(class_counts, eta)
    return (~tail).to(dtype), (kappa * tail.to(torch.float64)).to(dtype)
