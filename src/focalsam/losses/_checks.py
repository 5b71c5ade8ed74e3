"""Boundary checks shared by the losses (clear errors naming what was given and expected)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

CountsLike = Sequence[int] | Sequence[float] | np.ndarray | Tensor
REDUCTIONS = ("none", "mean", "sum", "weighted_mean")


def as_class_counts(class_counts: CountsLike, num_classes: int | None = None) -> Tensor:
    """``class_counts`` as a float64 CPU tensor, checked: 1-D, finite, all > 0, length C."""
    if class_counts is None:
        raise ValueError("class_counts is required (training images per class)")
    counts = torch.as_tensor(
        class_counts if isinstance(class_counts, Tensor) else np.asarray(class_counts)
    )
    counts = counts.detach().to("cpu", torch.float64)
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(
            f"class_counts must be a non-empty 1-D sequence, got shape {tuple(counts.shape)}"
        )
    if not torch.isfinite(counts).all() or (counts <= 0).any():
        bad = [i for i, v in enumerate(counts.tolist()) if not (np.isfinite(v) and v > 0)]
        raise ValueError(
            f"class_counts must all be positive, got {counts[bad[0]].item():g} for class "
            f"{bad[0]} (classes with no samples: drop them or give a count >= 1)"
        )
    if num_classes is not None and counts.numel() != num_classes:
        raise ValueError(
            f"class_counts has {counts.numel()} entries but there are {num_classes} classes"
        )
    return counts


def check_logits_targets(
    logits: Tensor, targets: Tensor, num_classes: int | None = None, check_range: bool = True
) -> None:
    """Logits ``(B, C)`` floating, targets ``(B,)`` integer in ``[0, C)``; C matches if given."""
    if not isinstance(logits, Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a floating tensor of shape (B, C), got {shape}")
    if not isinstance(targets, Tensor) or targets.ndim != 1:
        shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(f"targets must be a 1-D tensor of class indices (B,), got {shape}")
    if targets.is_floating_point() or targets.dtype in (torch.bool, torch.complex64):
        raise ValueError(f"targets must hold integer class indices, got dtype {targets.dtype}")
    if targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"logits have batch size {logits.shape[0]} but targets have {targets.shape[0]}"
        )
    c = logits.shape[1]
    if num_classes is not None and c != num_classes:
        raise ValueError(
            f"the model outputs {c} classes (logits shape {tuple(logits.shape)}) but the loss "
            f"was built for {num_classes} classes (len(class_counts) = {num_classes})"
        )
    if check_range and targets.numel() and bool(((targets < 0) | (targets >= c)).any()):
        bad = targets[(targets < 0) | (targets >= c)][0].item()
        raise ValueError(f"target {bad} is out of range: expected 0 <= target < {c}")


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_weight(weight: Tensor | None, num_classes: int) -> None:
    if weight is None:
        return
    if weight.ndim != 1 or weight.shape[0] != num_classes:
        raise ValueError(
            f"weight must have shape ({num_classes},) (one per class), got {tuple(weight.shape)}"
        )
