"""Boundary checks shared by the losses (clear errors naming what was given and expected)."""

from __future__ import annotations

import torch
from torch import Tensor

from focalsam.class_counts import CountsLike

__all__ = [
    "REDUCTIONS",
    "CountsLike",
    "check_logits_targets",
    "check_reduction",
    "check_weight",
]

REDUCTIONS = ("none", "mean", "sum", "weighted_mean")


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
    if targets.dtype != torch.int64:
        mask = " (uint8 and bool tensors index as masks)" if targets.dtype in _MASKS else ""
        raise ValueError(
            "targets must be a 1-D tensor of integer class indices (int64), got dtype "
            f"{targets.dtype}{mask}"
        )
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


_MASKS = (torch.uint8, torch.bool)


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
