"""Per-class and many/medium/few accuracy as pure functions on counts.

Conventions: *overall* accuracy is ``correct / total`` over samples; a class's accuracy is
``correct_c / total_c`` (NaN for a class with no evaluation samples); a group's accuracy
(many/medium/few) is the **mean of its classes' accuracies** over the classes that have
samples (NaN for an empty group). On a balanced test set the two agree.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from focalsam.metrics.shots import ShotGroups

__all__ = [
    "class_correct_total",
    "confusion_matrix",
    "long_tail_summary",
    "per_class_accuracy",
    "shot_accuracy",
    "to_predictions",
]


def to_predictions(outputs: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Predicted labels ``(B,)`` from logits ``(B, C)`` (argmax) or labels ``(B,)``; checked.

    Raises ``ValueError`` when the logits' class count is not ``num_classes``, or when a
    prediction or target falls outside ``[0, num_classes)``.
    """
    if not isinstance(targets, Tensor) or targets.ndim != 1 or targets.is_floating_point():
        shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(f"targets must be a 1-D integer tensor (B,), got {shape}")
    if outputs.ndim == 2:
        if outputs.shape[1] != num_classes:
            raise ValueError(
                f"the model outputs {outputs.shape[1]} classes (shape {tuple(outputs.shape)}) "
                f"but the metric is for {num_classes} classes"
            )
        preds = outputs.argmax(dim=1)
    elif outputs.ndim == 1 and not outputs.is_floating_point():
        preds = outputs
    else:
        raise ValueError(
            f"outputs must be logits (B, {num_classes}) or integer labels (B,), got "
            f"{outputs.dtype} {tuple(outputs.shape)}"
        )
    if preds.shape[0] != targets.shape[0]:
        raise ValueError(
            f"outputs have batch size {preds.shape[0]} but targets have {targets.shape[0]}"
        )
    for name, t in (("target", targets), ("prediction", preds)):
        bad = (t < 0) | (t >= num_classes)
        if t.numel() and bool(bad.any()):
            raise ValueError(
                f"{name} {t[bad][0].item()} is out of range: expected 0 <= {name} < {num_classes}"
            )
    return preds


def confusion_matrix(outputs: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """``M[i, j]`` = number of samples of true class ``i`` predicted as ``j`` (int64, C x C)."""
    preds = to_predictions(outputs, targets, num_classes)
    flat = targets.to(torch.int64) * num_classes + preds.to(torch.int64)
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def class_correct_total(
    outputs: Tensor, targets: Tensor, num_classes: int
) -> tuple[Tensor, Tensor]:
    """Per-class ``(correct, total)`` counts (int64, length C)."""
    preds = to_predictions(outputs, targets, num_classes)
    t = targets.to(torch.int64)
    total = torch.bincount(t, minlength=num_classes)
    correct = torch.bincount(t[preds == targets], minlength=num_classes)
    return correct, total


def per_class_accuracy(correct: Tensor, total: Tensor) -> Tensor:
    """``correct_c / total_c`` (float64), NaN where ``total_c == 0``."""
    c = correct.to(torch.float64)
    t = total.to(torch.float64)
    return torch.where(t > 0, c / t.clamp_min(1), torch.full_like(t, math.nan))


def shot_accuracy(per_class: Tensor, groups: ShotGroups) -> dict[str, float]:
    """Mean per-class accuracy in each group (classes without samples ignored; NaN if none)."""
    out = {}
    acc = per_class.detach().to("cpu", torch.float64)
    for name, mask in groups.as_dict().items():
        if mask.shape != acc.shape:
            raise ValueError(
                f"shot groups cover {mask.numel()} classes but there are {acc.numel()} accuracies"
            )
        vals = acc[mask.cpu()]
        vals = vals[~torch.isnan(vals)]
        out[name] = float(vals.mean()) if vals.numel() else math.nan
    return out


def long_tail_summary(
    correct: Tensor, total: Tensor, groups: ShotGroups | None = None
) -> dict[str, object]:
    """``overall``, ``per_class``, and (with groups) ``many``/``medium``/``few`` plus the preset.

    Accuracies are fractions in [0, 1]; ``per_class`` is a list of floats (NaN for a class
    with no samples); ``num_samples`` is the number of samples counted.
    """
    n = int(total.sum())
    acc = per_class_accuracy(correct, total)
    summary: dict[str, object] = {
        "overall": float(correct.sum()) / n if n else math.nan,
        "num_samples": n,
        "per_class": acc.tolist(),
    }
    if groups is not None:
        summary.update(shot_accuracy(acc, groups))
        summary["preset"] = groups.preset
        summary["thresholds"] = groups.thresholds.describe()
        summary["group_sizes"] = {k: int(v.sum()) for k, v in groups.as_dict().items()}
    return summary
