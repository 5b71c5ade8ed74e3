"""The published recipes as named presets (``focalsam presets`` lists them)."""

from __future__ import annotations

from typing import Any

_CIFAR_COMMON: dict[str, Any] = {
    "model": "resnet32",
    "imbalance_ratio": 100.0,
    "epochs": 200,
    "batch_size": 64,
    "base_optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "lr_schedule": "cosine",
    "loss": "logit_adjustment",
    "optimizer": "focal_sam",
    "eval_every": 10,
}

PRESETS: dict[str, dict[str, Any]] = {
    "cifar10-lt-r100": {
        **_CIFAR_COMMON,
        "dataset": "cifar10",
        "weight_decay": 2e-4,
        "rho": 0.2,
        "gamma": 3.0,
        "lam": 0.5,
        # ImbSAM's tail: the few-shot classes of this dataset's shot preset (< 200 images)
        "eta": 200.0,
        # CC-SAM's public config for CIFAR-10-LT at ratio 100 (first version)
        "ccsam_flat_ratio": 1.0,
        "ccsam_rho": 1e-2,
        "ccsam_up_limit": 0.8,
    },
    "cifar100-lt-r100": {
        **_CIFAR_COMMON,
        "dataset": "cifar100",
        "weight_decay": 1e-3,
        "rho": 0.3,
        "gamma": 3.2,
        "lam": 0.8,
        "eta": 20.0,
        # CC-SAM's public config for CIFAR-100-LT at ratio 100 (first version; it also
        # trains with mixup, which we do not)
        "ccsam_flat_ratio": 0.2,
        "ccsam_rho": 1e-7,
        "ccsam_up_limit": 0.3,
    },
    "demo": {
        "dataset": "digits",
        "imbalance_ratio": 20.0,
        "model": "small_cnn",
        "epochs": 30,
        "batch_size": 64,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "lr_schedule": "cosine",
        "loss": "logit_adjustment",
        "optimizer": "focal_sam",
        "rho": 0.1,
        "gamma": 2.0,
        "lam": 0.8,
        "eta": 20.0,
        "eval_every": 10,
        "device": "cpu",
        "ccsam_stage2_epochs": 5,
    },
}

DESCRIPTIONS = {
    "cifar10-lt-r100": "CIFAR-10-LT (ratio 100), ResNet-32, 200 epochs, logit adjustment, "
    "Focal-SAM rho 0.2, gamma 3.0, lambda 0.5",
    "cifar100-lt-r100": "CIFAR-100-LT (ratio 100), ResNet-32, 200 epochs, logit adjustment, "
    "Focal-SAM rho 0.3, gamma 3.2, lambda 0.8",
    "demo": "offline: long-tailed scikit-learn digits (ratio 20), a small CNN, logit adjustment, 30 epochs on the CPU",
}


def get_preset(name: str) -> dict[str, Any]:
    """The config overrides of a preset, with its name recorded."""
    from focalsam.train.config import ConfigError

    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(sorted(PRESETS))}")
    return {**PRESETS[name], "preset": name}


def list_presets() -> list[str]:
    return sorted(PRESETS)
