"""focalsam: Focal-SAM and other sharpness-aware optimizers for long-tailed classification.

The main names, imported on first use (``import focalsam`` itself loads no torch):

>>> import focalsam
>>> "focal_sam" in focalsam.list_optimizers()
True
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # optimizers
    "WeightedSAM": "focalsam.optim",
    "SAM": "focalsam.optim",
    "PlainOptimizer": "focalsam.optim",
    "FocalSAM": "focalsam.optim",
    "ImbSAM": "focalsam.optim",
    "CCSAM": "focalsam.optim",
    "MethodSpec": "focalsam.optim",
    "create_optimizer": "focalsam.optim",
    "list_optimizers": "focalsam.optim",
    "register_method": "focalsam.optim",
    # losses
    "LongTailLoss": "focalsam.losses",
    "CrossEntropyLoss": "focalsam.losses",
    "FocalLoss": "focalsam.losses",
    "LDAMLoss": "focalsam.losses",
    "BalancedSoftmaxLoss": "focalsam.losses",
    "LogitAdjustedLoss": "focalsam.losses",
    "VSLoss": "focalsam.losses",
    "create_loss": "focalsam.losses",
    "list_losses": "focalsam.losses",
    # metrics
    "LongTailAccuracy": "focalsam.metrics",
    "per_class_accuracy": "focalsam.metrics",
    "shot_accuracy": "focalsam.metrics",
    "long_tail_summary": "focalsam.metrics",
    # training
    "Trainer": "focalsam.train",
    "TrainConfig": "focalsam.train",
    "make_config": "focalsam.train",
    # errors
    "FocalsamError": "focalsam.errors",
    "InputError": "focalsam.errors",
    "RunError": "focalsam.errors",
}

__all__ = [
    "__version__",
    "WeightedSAM",
    "SAM",
    "PlainOptimizer",
    "FocalSAM",
    "ImbSAM",
    "CCSAM",
    "MethodSpec",
    "create_optimizer",
    "list_optimizers",
    "register_method",
    "LongTailLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LDAMLoss",
    "BalancedSoftmaxLoss",
    "LogitAdjustedLoss",
    "VSLoss",
    "create_loss",
    "list_losses",
    "LongTailAccuracy",
    "per_class_accuracy",
    "shot_accuracy",
    "long_tail_summary",
    "Trainer",
    "TrainConfig",
    "make_config",
    "FocalsamError",
    "InputError",
    "RunError",
]

if TYPE_CHECKING:
    from focalsam.errors import FocalsamError, InputError, RunError
    from focalsam.losses import (
        BalancedSoftmaxLoss,
        CrossEntropyLoss,
        FocalLoss,
        LDAMLoss,
        LogitAdjustedLoss,
        LongTailLoss,
        VSLoss,
        create_loss,
        list_losses,
    )
    from focalsam.metrics import (
        LongTailAccuracy,
        long_tail_summary,
        per_class_accuracy,
        shot_accuracy,
    )
    from focalsam.optim import (
        CCSAM,
        SAM,
        FocalSAM,
        ImbSAM,
        MethodSpec,
        PlainOptimizer,
        WeightedSAM,
        create_optimizer,
        list_optimizers,
        register_method,
    )
    from focalsam.train import TrainConfig, Trainer, make_config


def __getattr__(name: str) -> object:
    """Import a public name's module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'focalsam' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
