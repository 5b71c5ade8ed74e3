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

from focalsam.optim.errors import ClassCountsError, InvalidHyperparameterError

ClassCounts = Sequence[int] | Tensor | np.ndarray


def validate_class_counts(class_counts: ClassCounts, num_classes: int | None = None) -> Tensor:
    """Return ``class_counts`` as a 1-D float64 CPU tensor, after checking it.

    Raises :class:`ClassCountsError` for an empty or non-1-D input, a length
    other than ``num_classes`` (when given), non-integer values, zeros or negatives.
    """
    try:
        counts = torch.as_tensor(
            class_counts.detach().cpu() if isinstance(class_counts, Tensor) else class_counts,
            dtype=torch.float64,
        )
    except (TypeError, ValueError) as exc:
        raise ClassCountsError(
            f"class_counts must be a sequence of per-class training counts, got {class_counts!r}"
        ) from exc
    if counts.ndim != 1 or counts.numel() == 0:
        raise ClassCountsError(
            f"class_counts must be a non-empty 1-D sequence, got shape {tuple(counts.shape)}"
        )
    if num_classes is not None and counts.numel() != num_classes:
        raise ClassCountsError(
            f"class_counts has {counts.numel()} entries but there are {num_classes} classes"
        )
    if not torch.isfinite(counts).all() or not torch.equal(counts, counts.round()):
        raise ClassCountsError(f"class_counts must hold whole numbers, got {counts.tolist()}")
    bad = (counts <= 0).nonzero().flatten().tolist()
    if bad:
        raise ClassCountsError(
            "class_counts must be positive (every class needs at least one training "
            f"sample); classes {bad} have counts {counts[bad].long().tolist()}"
        )
    return counts


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
