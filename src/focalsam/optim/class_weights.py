"""Per-class weights of the two-weight rule, public so users can inspect them.

For class counts ``n_i`` with ``pi_i = n_i / sum(n)``:

* Focal-SAM: sharp weight ``c_i = lam * (1 - pi_i) ** gamma``, clean weight ``1 - c_i``.
* ImbSAM: tail = ``{i : n_i < eta}``; clean weight ``1[not tail]``,
  sharp weight ``kappa * 1[tail]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from focalsam.optim.errors import InvalidHyperparameterError
from focalsam.optim.validators import ClassCounts, validate_class_counts

__all__ = [
    "ClassCounts",
    "Weights",
    "class_priors",
    "focal_weights",
    "imbsam_weights",
    "tail_mask",
    "validate_class_counts",
]

#: Weights of the two-weight rule: one number for every class, or one per class.
Weights = float | Sequence[float] | Tensor | np.ndarray


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
