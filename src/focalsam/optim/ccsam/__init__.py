"""CC-SAM (Zhou et al., CVPR 2023), class-conditional sharpness-aware minimization, in
two stages: :class:`CCSAM` perturbs once per class present in a batch with a
class-dependent radius (:mod:`focalsam.optim.ccsam.stage1`, where the math and the
published recipe are; its network mode steps through the group-wise engine as
:class:`GroupwiseCCSAM`, :mod:`focalsam.optim.ccsam.network`); :class:`CCSAMStage2` retrains the classifier on perturbed features
(:mod:`focalsam.optim.ccsam.stage2`)."""

from focalsam.optim.ccsam.network import ClassConditionedRadius, GroupwiseCCSAM
from focalsam.optim.ccsam.radius import ccsam_radius
from focalsam.optim.ccsam.stage1 import CCSAM
from focalsam.optim.ccsam.stage2 import (
    CCSAMStage2,
    ccsam_feature_weights,
    ccsam_mix_weight,
    perturbed_feature_losses,
)
from focalsam.optim.validators import validate_ccsam_counts

__all__ = [
    "CCSAM",
    "CCSAMStage2",
    "ClassConditionedRadius",
    "GroupwiseCCSAM",
    "ccsam_feature_weights",
    "ccsam_mix_weight",
    "ccsam_radius",
    "perturbed_feature_losses",
    "validate_ccsam_counts",
]
