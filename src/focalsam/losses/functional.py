"""Long-tail losses as pure functions of ``(logits, targets)``; each formula lives here once.

The checked functions (``cross_entropy``, ``logit_adjusted_loss``, ...) validate their inputs
and return per-sample values with ``reduction="none"`` (shape ``(B,)``, already multiplied by
the per-class ``weight`` of the target when one is given), and otherwise reduce them:

- ``"mean"``: ``sum_n l_n / B`` (what the sharpness-aware recipes average over);
- ``"sum"``: ``sum_n l_n``;
- ``"weighted_mean"``: ``sum_n w_{y_n} l_n / sum_n w_{y_n}`` (``F.cross_entropy(weight=...)``'s
  mean; the same as ``"mean"`` without weights).

The ``*_per_sample`` kernels are the unchecked formulas on precomputed class terms; the
modules of :mod:`focalsam.losses.modules` call them with their buffers.

``class_counts`` are training images per class (``n_j``, whole numbers > 0),
``pi_j = n_j / sum n``. Half-precision logits are computed in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from focalsam.class_counts import validate_class_counts
from focalsam.losses._checks import (
    CountsLike,
    check_logits_targets,
    check_reduction,
    check_weight,
)

__all__ = [
    "apply_loss",
    "balanced_softmax_loss",
    "balanced_softmax_offsets",
    "ce_per_sample",
    "cross_entropy",
    "focal_loss",
    "focal_per_sample",
    "ldam_loss",
    "ldam_margins",
    "ldam_per_sample",
    "logit_adjusted_loss",
    "logit_adjustments",
    "offset_ce_per_sample",
    "reduce_loss",
    "upcast",
    "vs_loss",
    "vs_parameters",
    "vs_per_sample",
]

PerSample = Callable[..., Tensor]


def upcast(logits: Tensor) -> Tensor:
    """float16/bfloat16 logits as float32; other dtypes unchanged."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def reduce_loss(
    per_sample: Tensor, targets: Tensor, weight: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """Multiply by ``weight[targets]`` (if given) and reduce as described in the module doc."""
    check_reduction(reduction)
    w = weight.to(per_sample)[targets] if weight is not None else None
    loss = per_sample * w if w is not None else per_sample
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean" or w is None:
        return loss.mean()
    return loss.sum() / w.sum()


def apply_loss(
    per_sample: PerSample,
    logits: Tensor,
    targets: Tensor,
    *args: Any,
    weight: Tensor | None = None,
    reduction: str = "mean",
    num_classes: int | None = None,
    check_range: bool = True,
) -> Tensor:
    """Check ``logits``/``targets`` (and ``num_classes``, ``weight``), then
    ``reduce_loss(per_sample(upcast(logits), targets, *args), ...)``."""
    check_logits_targets(logits, targets, num_classes, check_range=check_range)
    check_weight(weight, logits.shape[1])
    return reduce_loss(per_sample(upcast(logits), targets, *args), targets, weight, reduction)


# ------------------------------------------------------------------ kernels
def ce_per_sample(logits: Tensor, targets: Tensor) -> Tensor:
    """``l_n = -log softmax(z_n)_{y_n}``."""
    return F.cross_entropy(logits, targets, reduction="none")


def offset_ce_per_sample(logits: Tensor, targets: Tensor, offsets: Tensor) -> Tensor:
    """``CE(z + o, y)``: logit adjustment (``o = tau log pi``), balanced softmax (``o = log n``)."""
    return F.cross_entropy(logits + offsets.to(logits), targets, reduction="none")


def vs_per_sample(logits: Tensor, targets: Tensor, delta: Tensor, iota: Tensor) -> Tensor:
    """``CE(Delta * z + iota, y)``."""
    z = logits * delta.to(logits) + iota.to(logits)
    return F.cross_entropy(z, targets, reduction="none")


def ldam_per_sample(logits: Tensor, targets: Tensor, margins: Tensor, scale: float) -> Tensor:
    """``CE(s * (z - m_y e_y), y)`` for given margins ``m``."""
    margin = margins.to(logits)[targets]
    z = logits.scatter_add(1, targets[:, None], -margin[:, None])
    return F.cross_entropy(scale * z, targets, reduction="none")


def focal_per_sample(logits: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """``-(1 - p_t)^gamma log p_t`` with ``p_t = softmax(z)_y``."""
    log_pt = torch.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    if gamma == 0:
        return -log_pt
    # 1 - p_t = -expm1(log p_t), kept away from 0 so that gamma < 1 has a finite gradient
    one_minus = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
    return -one_minus.pow(gamma) * log_pt


# ------------------------------------------------------------ class terms
def logit_adjustments(class_counts: CountsLike, tau: float = 1.0) -> Tensor:
    """``tau * log(pi_j)`` (float64, CPU): the additive offsets of logit adjustment."""
    n = validate_class_counts(class_counts)
    return tau * torch.log(n / n.sum())


def balanced_softmax_offsets(class_counts: CountsLike) -> Tensor:
    """``log(n_j)`` (float64, CPU): the additive offsets of balanced softmax."""
    return torch.log(validate_class_counts(class_counts))


def ldam_margins(class_counts: CountsLike, max_margin: float = 0.5) -> Tensor:
    """``m_j = max_margin * n_j^{-1/4} / max_k n_k^{-1/4}`` (float64, CPU): rarest gets max."""
    if max_margin < 0:
        raise ValueError(f"max_margin must be >= 0, got {max_margin}")
    n = validate_class_counts(class_counts)
    m = n.pow(-0.25)
    return m * (max_margin / m.max())


def vs_parameters(
    class_counts: CountsLike, gamma: float = 0.3, tau: float = 1.0
) -> tuple[Tensor, Tensor]:
    """VS loss's ``(Delta_j, iota_j) = ((n_j / n_max)^gamma, tau * log(pi_j))`` (float64)."""
    n = validate_class_counts(class_counts)
    return (n / n.max()).pow(gamma), tau * torch.log(n / n.sum())


# ------------------------------------------------------------ checked losses
def cross_entropy(
    logits: Tensor, targets: Tensor, weight: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """``l_n = -log softmax(z_n)_{y_n}``, times ``weight[y_n]`` if given."""
    return apply_loss(ce_per_sample, logits, targets, weight=weight, reduction=reduction)


def logit_adjusted_loss(
    logits: Tensor,
    targets: Tensor,
    class_counts: CountsLike,
    tau: float = 1.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Logit-adjusted CE (Menon et al. 2021): ``CE(z + tau * log(pi), y)``."""
    offsets = logit_adjustments(class_counts, tau)
    return apply_loss(
        offset_ce_per_sample,
        logits,
        targets,
        offsets,
        weight=weight,
        reduction=reduction,
        num_classes=len(offsets),
    )


def balanced_softmax_loss(
    logits: Tensor,
    targets: Tensor,
    class_counts: CountsLike,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Balanced softmax (Ren et al. 2020): ``CE(z + log(n), y)``."""
    offsets = balanced_softmax_offsets(class_counts)
    return apply_loss(
        offset_ce_per_sample,
        logits,
        targets,
        offsets,
        weight=weight,
        reduction=reduction,
        num_classes=len(offsets),
    )


def ldam_loss(
    logits: Tensor,
    targets: Tensor,
    class_counts: CountsLike,
    max_margin: float = 0.5,
    scale: float = 30.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """LDAM (Cao et al. 2019): ``CE(s * (z - m_y e_y), y)``, margins from :func:`ldam_margins`.

    Meant for the cosine logits of a normalized linear head
    (:class:`focalsam.models.NormedLinear`, ``resnet32(..., normed_linear=True)``), with the
    scale ``s`` (default 30) applied to all logits after the margin.
    """
    m = ldam_margins(class_counts, max_margin)
    return apply_loss(
        ldam_per_sample,
        logits,
        targets,
        m,
        scale,
        weight=weight,
        reduction=reduction,
        num_classes=len(m),
    )


def vs_loss(
    logits: Tensor,
    targets: Tensor,
    class_counts: CountsLike,
    gamma: float = 0.3,
    tau: float = 1.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Vector-scaling loss (Kini et al. 2021): ``CE(Delta * z + iota, y)``.

    ``Delta_j = (n_j / n_max)^gamma`` (multiplicative, shrinks rare-class logits) and
    ``iota_j = tau * log(pi_j)`` (additive). ``gamma = 0`` is logit adjustment.
    """
    delta, iota = vs_parameters(class_counts, gamma, tau)
    return apply_loss(
        vs_per_sample,
        logits,
        targets,
        delta,
        iota,
        weight=weight,
        reduction=reduction,
        num_classes=len(delta),
    )


def focal_loss(
    logits: Tensor,
    targets: Tensor,
    gamma: float = 1.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Focal loss (Lin et al. 2017): ``-(1 - p_t)^gamma * log(p_t)``, ``p_t = softmax(z)_y``.

    ``gamma = 0`` is cross-entropy; ``weight`` plays the role of the per-class ``alpha``.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    return apply_loss(focal_per_sample, logits, targets, gamma, weight=weight, reduction=reduction)
