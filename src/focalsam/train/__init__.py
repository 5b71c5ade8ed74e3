"""Training: configs, presets, the runtime, the epoch function, checkpoints and DDP."""

from focalsam.errors import TrainingDiverged, TrainingInterrupted
from focalsam.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from focalsam.train.config import ConfigError, TrainConfig, make_config
from focalsam.train.presets import PRESETS, get_preset, list_presets
from focalsam.train.trainer import Trainer

__all__ = [
    "PRESETS",
    "CheckpointError",
    "ConfigError",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "get_preset",
    "list_presets",
    "load_checkpoint",
    "make_config",
    "save_checkpoint",
]
