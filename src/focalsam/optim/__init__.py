"""Sharpness-aware optimizers for long-tailed classification.

All of them (but CC-SAM) are one engine, :class:`WeightedSAM`, for the rule
``g = grad mean(a * l)(theta) + grad mean(b * l)(theta + eps)`` with per-class
clean weights ``a`` and sharp weights ``b``. They wrap any torch optimizer and
never import the trainer, so they fit any training loop.

Where things are: the engine (:mod:`~focalsam.optim.engine`, whose strict step reads top
to bottom), the concerns around a step (:mod:`~focalsam.optim.policies`), one module per
method (:mod:`~focalsam.optim.sam`, :mod:`~focalsam.optim.imbsam`,
:mod:`~focalsam.optim.focal_sam`, the :mod:`~focalsam.optim.ccsam` package), the per-class
weights (:mod:`~focalsam.optim.class_weights`), the checks of what the optimizers are given
(:mod:`~focalsam.optim.validators`) and the methods by name
(:mod:`~focalsam.optim.registry`).
"""

from focalsam.optim.ccsam import (
    CCSAM,
    CCSAMStage2,
    ccsam_feature_weights,
    ccsam_mix_weight,
    ccsam_radius,
    perturbed_feature_losses,
)
from focalsam.optim.class_weights import class_priors, focal_weights, imbsam_weights, tail_mask
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
from focalsam.optim.policies.syncfree import SkipReport
from focalsam.optim.registry import (
    BASE_OPTIMIZERS,
    CCSAMOptions,
    ClassWeights,
    FocalSAMOptions,
    ImbSAMOptions,
    MethodSpec,
    StageSpec,
    canonical_name,
    create_optimizer,
    get_method,
    list_optimizers,
    method_of,
    optimizer_aliases,
    register_method,
    register_optimizer,
    resolve_base_optimizer,
    unregister_method,
)
from focalsam.optim.sam import SAM, PlainOptimizer
from focalsam.optim.sse_sam import SSESAM, SSESAMOptions
from focalsam.optim.validators import validate_ccsam_counts, validate_class_counts

__all__ = [
    # the optimizers
    "WeightedSAM",
    "SAM",
    "PlainOptimizer",
    "ImbSAM",
    "FocalSAM",
    "CCSAM",
    "CCSAMStage2",
    # building them by name
    "BASE_OPTIMIZERS",
    "CCSAMOptions",
    "ClassWeights",
    "FocalSAMOptions",
    "ImbSAMOptions",
    "MethodSpec",
    "StageSpec",
    "canonical_name",
    "create_optimizer",
    "get_method",
    "list_optimizers",
    "method_of",
    "optimizer_aliases",
    "register_method",
    "register_optimizer",
    "SSESAM",
    "SSESAMOptions",
    "GroupwiseSAM",
    "resolve_base_optimizer",
    "unregister_method",
    # the per-class weights and CC-SAM's radii
    "ccsam_feature_weights",
    "ccsam_mix_weight",
    "ccsam_radius",
    "class_priors",
    "focal_weights",
    "imbsam_weights",
    "perturbed_feature_losses",
    "tail_mask",
    "validate_ccsam_counts",
    "validate_class_counts",
    # what a sync-free step reports, and the errors
    "SkipReport",
    "AccumulationError",
    "ClassCountsError",
    "InvalidHyperparameterError",
    "LabelError",
    "LossShapeError",
    "NonFiniteLossError",
    "OptimizerInputError",
    "StateDictError",
    "StepOrderError",
]
