"""Sharpness-aware optimizers for long-tailed classification.

All of them (but CC-SAM) are one engine, :class:`WeightedSAM`, for the rule
``g = grad mean(a * l)(theta) + grad mean(b * l)(theta + eps)`` with per-class
clean weights ``a`` and sharp weights ``b``. They wrap any torch optimizer and
never import the trainer, so they fit any training loop.
"""

from focalsam.optim._guard import SkipReport
from focalsam.optim.cc_sam import CCSAM, ccsam_radius, validate_ccsam_counts
from focalsam.optim.cc_sam_stage2 import (
    CCSAMStage2,
    ccsam_feature_weights,
    ccsam_mix_weight,
    perturbed_feature_losses,
)
from focalsam.optim.class_weights import (
    class_priors,
    focal_weights,
    imbsam_weights,
    tail_mask,
    validate_class_counts,
)
from focalsam.optim.engine import WeightedSAM
from focalsam.optim.errors import (
    AccumulationError,
    ClassCountsError,
    InvalidHyperparameterError,
    LabelError,
    LossShapeError,
    NonFiniteLossError,
    OptimizerInputError,
    StateDictError,
    StepOrderError,
)
from focalsam.optim.focal_sam import FocalSAM
from focalsam.optim.groupwise import GroupwiseSAM
from focalsam.optim.imbsam import ImbSAM
from focalsam.optim.registry import (
    BASE_OPTIMIZERS,
    CCSAMOptions,
    FocalSAMOptions,
    ImbSAMOptions,
    MethodSpec,
    StageSpec,
    canonical_name,
    create_optimizer,
    get_method,
    list_optimizers,
    optimizer_aliases,
    register_method,
    register_optimizer,
    resolve_base_optimizer,
)
from focalsam.optim.sam import SAM, PlainOptimizer
from focalsam.optim.sse_sam import SSESAM, SSESAMOptions

__all__ = [
    "AccumulationError",
    "BASE_OPTIMIZERS",
    "CCSAM",
    "CCSAMOptions",
    "FocalSAMOptions",
    "ImbSAMOptions",
    "MethodSpec",
    "StageSpec",
    "canonical_name",
    "get_method",
    "optimizer_aliases",
    "register_method",
    "CCSAMStage2",
    "SAM",
    "SSESAM",
    "SSESAMOptions",
    "GroupwiseSAM",
    "SkipReport",
    "ClassCountsError",
    "FocalSAM",
    "ImbSAM",
    "InvalidHyperparameterError",
    "LabelError",
    "LossShapeError",
    "NonFiniteLossError",
    "OptimizerInputError",
    "PlainOptimizer",
    "StateDictError",
    "StepOrderError",
    "WeightedSAM",
    "ccsam_feature_weights",
    "ccsam_mix_weight",
    "ccsam_radius",
    "class_priors",
    "create_optimizer",
    "focal_weights",
    "imbsam_weights",
    "list_optimizers",
    "perturbed_feature_losses",
    "register_optimizer",
    "resolve_base_optimizer",
    "tail_mask",
    "validate_ccsam_counts",
    "validate_class_counts",
]
