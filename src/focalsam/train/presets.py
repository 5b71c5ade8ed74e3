"""The published recipes as named presets (``focalsam presets`` lists them).

A preset is a partial config in the schema's sections; it sits between the
schema defaults and the YAML file and flags (see :mod:`focalsam.train.config`).
"""

from __future__ import annotations

import copy
from typing import Any

from focalsam.train.errors import ConfigError


def _cifar(dataset: str, weight_decay: float, focal: dict[str, float], eta: float,
           ccsam: dict[str, float]) -> dict[str, Any]:  # fmt: skip
    return {
        "data": {"name": dataset, "imbalance_ratio": 100.0},
        "model": {"name": "resnet32"},
        "loss": {"name": "logit_adjustment"},
        "optim": {
            "name": "focal_sam", "base": "sgd", "lr": 0.1, "momentum": 0.9,
            "weight_decay": weight_decay, "rho": focal["rho"],
            "focal_sam": {"gamma": focal["gamma"], "lam": focal["lam"]},
            # ImbSAM's tail: the few-shot classes of this dataset's shot preset
            "imbsam": {"eta": eta},
            # CC-SAM's public config at ratio 100 (first version)
            "ccsam": ccsam,
        },
        "train": {"epochs": 200, "batch_size": 64, "lr_schedule": "cosine", "eval_every": 10},
    }  # fmt: skip


PRESETS: dict[str, dict[str, Any]] = {
    "cifar10-lt-r100": _cifar(
        "cifar10",
        2e-4,
        {"rho": 0.2, "gamma": 3.0, "lam": 0.5},
        200.0,
        {"flat_ratio": 1.0, "rho": 1e-2, "up_limit": 0.8},
    ),
    # CC-SAM's CIFAR-100 config also trains with mixup, which we do not
    "cifar100-lt-r100": _cifar(
        "cifar100",
        1e-3,
        {"rho": 0.3, "gamma": 3.2, "lam": 0.8},
        20.0,
        {"flat_ratio": 0.2, "rho": 1e-7, "up_limit": 0.3},
    ),
    "demo": {
        "data": {"name": "digits", "imbalance_ratio": 20.0},
        "model": {"name": "small_cnn"},
        "loss": {"name": "logit_adjustment"},
        "optim": {
            "name": "focal_sam",
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "rho": 0.1,
            "focal_sam": {"gamma": 2.0, "lam": 0.8},
            "imbsam": {"eta": 20.0},
            "ccsam": {"stage2_epochs": 5},
        },
        "train": {"epochs": 30, "batch_size": 64, "lr_schedule": "cosine", "eval_every": 10},
        "run": {"device": "cpu"},
    },  # fmt: skip
}

DESCRIPTIONS = {
    "cifar10-lt-r100": "CIFAR-10-LT (ratio 100), ResNet-32, 200 epochs, logit adjustment, "
    "Focal-SAM rho 0.2, gamma 3.0, lambda 0.5",
    "cifar100-lt-r100": "CIFAR-100-LT (ratio 100), ResNet-32, 200 epochs, logit adjustment, "
    "Focal-SAM rho 0.3, gamma 3.2, lambda 0.8",
    "demo": "offline: long-tailed scikit-learn digits (ratio 20), a small CNN, logit "
    "adjustment, 30 epochs on the CPU",
}


def get_preset(name: str) -> dict[str, Any]:
    """The sections a preset sets (a copy)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[name])


def list_presets() -> list[str]:
    return sorted(PRESETS)
