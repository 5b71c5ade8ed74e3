"""Long-tail losses returning per-sample values (``reduction="none"``) or their means.

Functions in :mod:`~focalsam.losses.functional`, modules in :mod:`~focalsam.losses.modules`,
per-class weights in :mod:`~focalsam.losses.weights`, and a registry
(:func:`create_loss`, :func:`list_losses`).
"""

from focalsam.losses.functional import (
    balanced_softmax_loss,
    cross_entropy,
    focal_loss,
    ldam_loss,
    ldam_margins,
    logit_adjusted_loss,
    logit_adjustments,
    reduce_loss,
    vs_loss,
    vs_parameters,
)
from focalsam.losses.modules import (
    BalancedSoftmaxLoss,
    CrossEntropyLoss,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    LongTailLoss,
    VSLoss,
)
from focalsam.losses.registry import create_loss, list_losses
from focalsam.losses.weights import DeferredReweighting, class_balanced_weights

__all__ = [
    "BalancedSoftmaxLoss",
    "CrossEntropyLoss",
    "DeferredReweighting",
    "FocalLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "LongTailLoss",
    "VSLoss",
    "balanced_softmax_loss",
    "class_balanced_weights",
    "create_loss",
    "cross_entropy",
    "focal_loss",
    "ldam_loss",
    "ldam_margins",
    "list_losses",
    "logit_adjusted_loss",
    "logit_adjustments",
    "reduce_loss",
    "vs_loss",
    "vs_parameters",
]
