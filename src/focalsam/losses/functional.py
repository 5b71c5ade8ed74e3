"""Long-tail losses as pure functions of ``(logits, targets)``.

All return per-sample values with ``reduction="none"`` (shape ``(B,)``, already multiplied by
the per-class ``weight`` of the target when one is given), and otherwise reduce them:

- ``"mean"``: ``sum_n l_n / B`` (what the sharpness-aware recipes average over);
- ``"sum"``: ``sum_n l_n``;
- ``"weighted_mean"``: ``sum_n w_{y_n} l_n / sum_n w_{y_n}`` (``F.cross_entropy(weight=...)``'s
  mean; the same as ``"mean"`` without weights).

``class_counts`` are training images per class (``n_j``, all > 0), ``pi_j = n_j / sum n``.
Half-precision logits are computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from focalsam.losses._checks import (
    CountsLike,
    as_class_counts,
    check_logits_targets,
    check_reduction,
    check_weight,
)

__all__ = [
    "balanced_softmax_loss",
    "cross_entropy",
    "focal_loss",
    "focal_per_sample",
    "ldam_loss",
    "ldam_margins",
    "ldam_per_sample",
    "logit_adjusted_loss",
    "logit_adjustments",
    "reduce_loss",
    "upcast",
    "vs_loss",
    "vs_parameters",
]


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


def _ce(z: Tensor, targets: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
    return reduce_loss(F.cross_entropy(z, targets, reduction="none"), targets, weight, reduction)


def cross_entropy(
    logits: Tensor, targets: Tensor, weight: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """``l_n = -log softmax(z_n)_{y_n}``, times ``weight[y_n]`` if given."""
    check_logits_targets(logits, targets)
    check_weight(weight, logits.shape[1])
    return _ce(upcast(logits), targets, weight, reduction)


def logit_adjustments(class_counts: CountsLike, tau: float = 1.0) -> Tensor:
    """``tau * log(pi_j)`` (float64, CPU): the additive offsets of logit adjustment."""
    n = as_class_counts(class_counts)
    return tau * torch.log(n / n.sum())


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
    check_logits_targets(logits, targets, len(offsets))
    check_weight(weight, logits.shape[1])
    z = upcast(logits)
    return _ce(z + offsets.to(z), targets, weight, reduction)


def balanced_softmax_loss(
    logits: Tensor,
    targets: Tensor,
    class_counts: CountsLike,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Balanced softmax (Ren et al. 2020): ``CE(z + log(n), y)``."""
    n = as_class_counts(class_counts)
    check_logits_targets(logits, targets, len(n))
    check_weight(weight, logits.shape[1])
    z = upcast(logits)
    return _ce(z + torch.log(n).to(z), targets, weight, reduction)


def ldam_margins(class_counts: CountsLike, max_margin: float = 0.5) -> Tensor:
    """``m_j = max_margin * n_j^{-1/4} / max_k n_k^{-1/4}`` (float64, CPU): rarest gets max."""
    if max_margin < 0:
        raise ValueError(f"max_margin must be >= 0, got {max_margin}")
    n = as_class_counts(class_counts)
    m = n.pow(-0.25)
    return m * (max_margin / m.max())


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
    check_logits_targets(logits, targets, len(m))
    check_weight(weight, logits.shape[1])
    return reduce_loss(
        ldam_per_sample(upcast(logits), targets, m, scale), targets, weight, reduction
    )


def ldam_per_sample(logits: Tensor, targets: Tensor, margins: Tensor, scale: float) -> Tensor:
    """Unchecked per-sample LDAM: ``CE(s * (z - m_y e_y), y)`` for given margins ``m``."""
    margin = margins.to(logits)[targets]
    z = logits.scatter_add(1, targets[:, None], -margin[:, None])
    return F.cross_entropy(scale * z, targets, reduction="none")


def vs_parameters(
    class_counts: CountsLike, gamma: float = 0.3, tau: float = 1.0
) -> tuple[Tensor, Tensor]:
    """VS loss's ``(Delta_j, iota_j) = ((n_j / n_max)^gamma, tau * log(pi_j))`` (float64)."""
    n = as_class_counts(class_counts)
    return (n / n.max()).pow(gamma), tau * torch.log(n / n.sum())


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
    check_logits_targets(logits, targets, len(delta))
    check_weight(weight, logits.shape[1])
    z = upcast(logits)
    return _ce(z * delta.to(z) + iota.to(z), targets, weight, reduction)


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
    check_logits_targets(logits, targets)
    check_weight(weight, logits.shape[1])
    return reduce_loss(focal_per_sample(upcast(logits), targets, gamma), targets, weight, reduction)


def focal_per_sample(logits: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """Unchecked per-sample focal loss ``-(1 - p_t)^gamma log p_t``."""
    log_pt = torch.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    if gamma == 0:
        return -log_pt
    # 1 - p_t = -expm1(log p_t), kept away from 0 so that gamma < 1 has a finite gradient
    one_minus = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
    return -one_minus.pow(gamma) * log_pt
