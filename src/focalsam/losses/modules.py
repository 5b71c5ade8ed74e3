"""Long-tail losses as ``nn.Module``s with their class-count terms precomputed as buffers.

``loss(logits, targets)`` returns per-sample values with ``reduction="none"`` and the mean
over the batch (``sum / B``) by default; see :mod:`focalsam.losses.functional` for the math
and the reductions. Per-class weights come from ``weight`` (fixed) or ``drw`` (a
:class:`~focalsam.losses.DeferredReweighting` schedule; call :meth:`LongTailLoss.set_epoch`
at the start of each epoch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from focalsam.class_counts import validate_class_counts
from focalsam.losses._checks import CountsLike, check_reduction
from focalsam.losses.functional import (
    apply_loss,
    balanced_softmax_offsets,
    ce_per_sample,
    focal_per_sample,
    ldam_margins,
    ldam_per_sample,
    logit_adjustments,
    offset_ce_per_sample,
    vs_parameters,
    vs_per_sample,
)
from focalsam.losses.weights import DeferredReweighting

__all__ = [
    "BalancedSoftmaxLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "LongTailLoss",
    "VSLoss",
]


class LongTailLoss(nn.Module):
    """Base: validation, per-class weights, DRW schedule and reduction.

    Subclasses implement ``per_sample(logits, targets)`` (unweighted, unchecked). Set
    ``validate=False`` to skip the label-range check (one device sync per call).
    """

    needs_class_counts: ClassVar[bool] = False
    weight: Tensor | None

    def __init__(
        self,
        class_counts: CountsLike | None = None,
        *,
        weight: Tensor | Sequence[float] | np.ndarray | None = None,
        drw: DeferredReweighting | None = None,
        reduction: str = "mean",
        validate: bool = True,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if class_counts is None and self.needs_class_counts:
            raise ValueError(f"{name} needs class_counts (training images per class)")
        counts = validate_class_counts(class_counts) if class_counts is not None else None
        self.num_classes: int | None = int(counts.numel()) if counts is not None else None
        self.register_buffer(
            "class_counts", counts.to(torch.float32) if counts is not None else None
        )
        self.reduction = check_reduction(reduction)
        self.validate = validate
        if weight is not None and drw is not None:
            raise ValueError(f"{name}: give either weight or drw, not both")
        w = None
        if weight is not None:
            w = torch.as_tensor(
                weight if isinstance(weight, Tensor) else np.asarray(weight), dtype=torch.float32
            )
            if w.ndim != 1:
                raise ValueError(f"weight must be 1-D (one per class), got {tuple(w.shape)}")
            if self.num_classes is None:
                self.num_classes = int(w.numel())
        if drw is not None:
            if self.num_classes is None:
                self.num_classes = drw.num_classes
            if drw.num_classes != self.num_classes:
                raise ValueError(
                    f"drw has {drw.num_classes} classes but class_counts has {self.num_classes}"
                )
            w = drw.weights(0)
        if w is not None and w.numel() != self.num_classes:
            raise ValueError(
                f"weight has {w.numel()} entries but there are {self.num_classes} classes"
            )
        self.drw = drw
        self.register_buffer("weight", w)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the DRW weights of ``epoch`` (0-based); a no-op without ``drw``."""
        self.epoch = int(epoch)
        if self.drw is not None:
            new = self.drw.weights(epoch)
            if self.weight is not None and self.weight.shape == new.shape:
                # in place: a captured CUDA-graph step keeps reading this storage
                with torch.no_grad():
                    self.weight.copy_(new)
            else:
                device = self.weight.device if self.weight is not None else None
                self.weight = new.to(device)

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The unweighted per-sample loss (a kernel of :mod:`~focalsam.losses.functional`)."""
        raise NotImplementedError

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return apply_loss(
            self.per_sample,
            logits,
            targets,
            weight=self.weight,
            reduction=self.reduction,
            num_classes=self.num_classes,
            check_range=self.validate,
        )

    def extra_repr(self) -> str:
        parts = [f"num_classes={self.num_classes}", f"reduction={self.reduction!r}"]
        if self.drw is not None:
            parts.append(f"drw={self.drw!r}")
        return ", ".join(parts)


class CrossEntropyLoss(LongTailLoss):
    """``-log softmax(z)_y``; ``class_counts`` is optional (only to check the class count)."""

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        return ce_per_sample(logits, targets)


class LogitAdjustedLoss(LongTailLoss):
    """Logit adjustment (Menon et al. 2021): ``CE(z + tau * log(pi), y)``."""

    needs_class_counts = True
    offsets: Tensor

    def __init__(self, class_counts: CountsLike, tau: float = 1.0, **kw: object) -> None:
        super().__init__(class_counts, **kw)  # type: ignore[arg-type]
        self.tau = tau
        self.register_buffer("offsets", logit_adjustments(class_counts, tau).float())

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        return offset_ce_per_sample(logits, targets, self.offsets)


class BalancedSoftmaxLoss(LongTailLoss):
    """Balanced softmax (Ren et al. 2020): ``CE(z + log(n), y)``."""

    needs_class_counts = True
    log_counts: Tensor

    def __init__(self, class_counts: CountsLike, **kw: object) -> None:
        super().__init__(class_counts, **kw)  # type: ignore[arg-type]
        self.register_buffer("log_counts", balanced_softmax_offsets(class_counts).float())

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        return offset_ce_per_sample(logits, targets, self.log_counts)


class LDAMLoss(LongTailLoss):
    """LDAM (Cao et al. 2019): ``CE(s * (z - m_y e_y), y)``, ``m_j`` proportional to
    ``n_j^{-1/4}`` with the largest equal to ``max_margin``.

    Use with a cosine head (``resnet32(C, normed_linear=True)``). LDAM-DRW is
    ``LDAMLoss(counts, drw=DeferredReweighting(counts, 160))``.
    """

    needs_class_counts = True
    margins: Tensor

    def __init__(
        self, class_counts: CountsLike, max_margin: float = 0.5, scale: float = 30.0, **kw: object
    ) -> None:
        super().__init__(class_counts, **kw)  # type: ignore[arg-type]
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.max_margin = max_margin
        self.scale = scale
        self.register_buffer("margins", ldam_margins(class_counts, max_margin).float())

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        return ldam_per_sample(logits, targets, self.margins, self.scale)


class VSLoss(LongTailLoss):
    """Vector-scaling loss (Kini et al. 2021): ``CE(Delta * z + iota, y)`` with
    ``Delta_j = (n_j / n_max)^gamma``, ``iota_j = tau * log(pi_j)``."""

    needs_class_counts = True
    delta: Tensor
    iota: Tensor

    def __init__(
        self, class_counts: CountsLike, gamma: float = 0.3, tau: float = 1.0, **kw: object
    ) -> None:
        super().__init__(class_counts, **kw)  # type: ignore[arg-type]
        self.gamma = gamma
        self.tau = tau
        delta, iota = vs_parameters(class_counts, gamma, tau)
        self.register_buffer("delta", delta.float())
        self.register_buffer("iota", iota.float())

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        return vs_per_sample(logits, targets, self.delta, self.iota)


class FocalLoss(LongTailLoss):
    """Focal loss (Lin et al. 2017): ``-(1 - p_t)^gamma log p_t``; ``gamma = 0`` is CE."""

    def __init__(
        self, class_counts: CountsLike | None = None, gamma: float = 1.0, **kw: object
    ) -> None:
        super().__init__(class_counts, **kw)  # type: ignore[arg-type]
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        return focal_per_sample(logits, targets, self.gamma)
