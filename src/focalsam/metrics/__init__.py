"""Per-class and many/medium/few accuracy, confusion matrices, DDP-correct accumulation.

Pure functions in :mod:`~focalsam.metrics.functional`, shot groups and presets in
:mod:`~focalsam.metrics.shots`, the stateful :class:`LongTailAccuracy` in
:mod:`~focalsam.metrics.accuracy`.
"""

from focalsam.metrics.accuracy import LongTailAccuracy
from focalsam.metrics.functional import (
    class_correct_total,
    confusion_matrix,
    long_tail_summary,
    per_class_accuracy,
    shot_accuracy,
    to_predictions,
)
from focalsam.metrics.shots import (
    SHOT_PRESETS,
    ShotGroups,
    ShotThresholds,
    check_shot_preset,
    default_shot_preset,
    list_shot_presets,
    shot_groups,
    shot_thresholds,
)

__all__ = [
    "SHOT_PRESETS",
    "LongTailAccuracy",
    "ShotGroups",
    "ShotThresholds",
    "class_correct_total",
    "confusion_matrix",
    "check_shot_preset",
    "default_shot_preset",
    "list_shot_presets",
    "long_tail_summary",
    "per_class_accuracy",
    "shot_accuracy",
    "shot_groups",
    "shot_thresholds",
    "to_predictions",
]
