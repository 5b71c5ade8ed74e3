"""A stateful, DDP-aware accumulator of per-class and many/medium/few accuracy."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from focalsam.class_counts import CountsLike, validate_class_counts
from focalsam.metrics.functional import (
    class_correct_total,
    confusion_matrix,
    long_tail_summary,
)
from focalsam.metrics.shots import ShotGroups, ShotThresholds, shot_groups

__all__ = ["LongTailAccuracy"]


def _dist_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class LongTailAccuracy:
    """Accumulates per-class correct/total counts; reports overall, per-class and shot accuracy.

    ``update(outputs, targets)`` takes logits ``(B, C)`` or predicted labels ``(B,)``.
    ``compute()`` returns the dict of :func:`~focalsam.metrics.long_tail_summary` (fractions;
    group accuracy = mean of per-class accuracies; overall = correct / total). Under DDP
    the counts are summed across ranks (``all_reduce``) before the division, so every rank
    gets the accuracy of the whole evaluation set; ``sync=False`` keeps the local view.

    Args:
        num_classes: C.
        class_counts: training images per class, for the many/medium/few groups (optional).
        preset: a name in :data:`~focalsam.metrics.SHOT_PRESETS` or a ``ShotThresholds``.
        thresholds: ``(many_above, few_below)``, overriding ``preset``.
        confusion: also accumulate a C x C confusion matrix (memory C^2 int64).

    Example:
        >>> m = LongTailAccuracy(3, class_counts=[500, 50, 5])
        >>> m.update(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]))
        >>> r = m.compute(); r["overall"], r["many"], r["few"]
        (0.75, 1.0, 0.5)
    """

    def __init__(
        self,
        num_classes: int,
        class_counts: CountsLike | None = None,
        preset: str | ShotThresholds | None = "standard",
        thresholds: tuple[float, float] | None = None,
        confusion: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.groups: ShotGroups | None = None
        if class_counts is not None:
            counts = validate_class_counts(class_counts, self.num_classes, min_count=0)
            self.groups = shot_groups(counts, preset, thresholds)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.track_confusion = confusion
        self.reset()

    def reset(self) -> None:
        """Zero all counts."""
        c = self.num_classes
        self.correct = torch.zeros(c, dtype=torch.int64, device=self.device)
        self.total = torch.zeros(c, dtype=torch.int64, device=self.device)
        self.confusion = (
            torch.zeros(c, c, dtype=torch.int64, device=self.device)
            if self.track_confusion
            else None
        )

    @torch.no_grad()
    def update(self, outputs: Tensor, targets: Tensor) -> None:
        """Add a batch: logits ``(B, C)`` or labels ``(B,)``, and true labels ``(B,)``."""
        correct, total = class_correct_total(outputs, targets, self.num_classes)
        self.correct += correct.to(self.device)
        self.total += total.to(self.device)
        if self.confusion is not None:
            self.confusion += confusion_matrix(outputs, targets, self.num_classes).to(self.device)

    def _reduced(self, tensors: list[Tensor], sync: bool | None) -> list[Tensor]:
        if sync is None:
            sync = _dist_active()
        if not sync:
            return [t.clone() for t in tensors]
        if not _dist_active():
            raise RuntimeError("sync=True needs an initialized torch.distributed process group")
        comm = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl"
            else torch.device("cpu")
        )
        flat = torch.cat([t.reshape(-1) for t in tensors]).to(comm)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        out, pos = [], 0
        for t in tensors:
            out.append(flat[pos : pos + t.numel()].view_as(t).to(self.device))
            pos += t.numel()
        return out

    def counts(self, sync: bool | None = None) -> tuple[Tensor, Tensor]:
        """Per-class ``(correct, total)``, summed over ranks when ``sync`` (default: under DDP).

        The accumulator's own state is left as it is, so calling this twice is safe.
        """
        correct, total = self._reduced([self.correct, self.total], sync)
        return correct, total

    def compute(self, sync: bool | None = None) -> dict[str, object]:
        """Summary dict: overall, per_class, many/medium/few, preset (see class doc)."""
        correct, total = self.counts(sync)
        return long_tail_summary(correct.cpu(), total.cpu(), self.groups)

    def confusion_matrix(self, sync: bool | None = None) -> Tensor:
        """The accumulated ``C x C`` matrix (rows: true class, columns: prediction)."""
        if self.confusion is None:
            raise RuntimeError("confusion matrix not tracked: create with confusion=True")
        return self._reduced([self.confusion], sync)[0]

    def __repr__(self) -> str:
        preset = self.groups.preset if self.groups is not None else None
        return (
            f"LongTailAccuracy(num_classes={self.num_classes}, preset={preset!r}, "
            f"samples={int(self.total.sum())})"
        )
