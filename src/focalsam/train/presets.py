"""The published recipes as named presets (``focalsam presets`` lists them).

A preset is a partial config in the schema's sections; it sits between the
schema defaults and the YAML file and flags (see :mod:`focalsam.train.config`).
"""

from __future__ import annotations

import copy
from typing import Any

from focalsam.train.errors import ConfigError

#: SSE-SAM on CIFAR-LT ratio 100: the public code's command for CIFAR-100 (eta 100, radii
#: 0.05 / 0.10, gamma 0.7). The code splits head and tail by one absolute count
#: (``n_c < eta``) for both datasets and has no CIFAR-10 radii of its own, so CIFAR-10
#: takes the same values: eta 100 makes its two rarest classes (83 and 50 images) the
#: tail; the code's default eta 20 would leave CIFAR-10-LT's tail empty (its rarest
#: class has 50).
SSE_SAM_CIFAR = {"eta": 100.0, "rho_head": 0.05, "rho_tail": 0.1, "gamma": 0.7}


def _cifar(
    dataset: str, weight_decay: float, focal: dict[str, float], eta: float, ccsam: dict[str, float]
) -> dict[str, Any]:
    return {
        "data": {"name": dataset, "imbalance_ratio": 100.0},
        "model": {"name": "resnet32"},
        "loss": {"name": "logit_adjustment"},
        "optim": {
            "name": "focal_sam",
            "base": "sgd",
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": weight_decay,
            "rho": focal["rho"],
            "focal_sam": {"gamma": focal["gamma"], "lam": focal["lam"]},
            # ImbSAM's tail: the few-shot classes of this dataset's shot preset
            "imbsam": {"eta": eta},
            # CC-SAM's public config at ratio 100 (first version)
            "ccsam": ccsam,
            # SSE-SAM's published CIFAR-100-LT r100 command (its table uses loss=ce)
            "sse_sam": SSE_SAM_CIFAR,
        },
        "train": {"epochs": 200, "batch_size": 64, "lr_schedule": "cosine", "eval_every": 10},
    }


def _clip(dataset: str, focal: dict[str, float], eta: float, **data: Any) -> dict[str, Any]:
    """CLIP ViT-B/16 + AdaptFormer, cosine head from text, logit adjustment (tau 1), SGD
    lr 0.01, 20 epochs, batch 128, bf16 autocast on a GPU that has it."""
    return {
        "data": {"name": dataset, **data},
        "model": {"name": "clip_vit_b16", "tuning": "adaptformer"},
        "loss": {"name": "logit_adjustment", "tau": 1.0},
        "optim": {
            "name": "focal_sam",
            "base": "sgd",
            "lr": 0.01,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "rho": focal["rho"],
            "focal_sam": {"gamma": focal["gamma"], "lam": focal["lam"]},
            "imbsam": {"eta": eta},
            # CC-SAM's classifier stage is a ResNet recipe; its stage 1 alone here
            "ccsam": {"stage2_epochs": 0},
        },
        "train": {"epochs": 20, "batch_size": 128, "lr_schedule": "cosine", "eval_every": 5},
        "run": {"precision": "auto"},
    }


def _r50(
    dataset: str,
    batch: int,
    lr: float,
    wd: float,
    focal: dict[str, float],
    rho_schedule: dict[str, Any],
) -> dict[str, Any]:
    """ResNet-50 from scratch, logit adjustment, SGD with a cosine schedule, 200 epochs."""
    return {
        "data": {"name": dataset},
        "model": {"name": "resnet50"},
        "loss": {"name": "logit_adjustment"},
        "optim": {
            "name": "focal_sam",
            "base": "sgd",
            "lr": lr,
            "momentum": 0.9,
            "weight_decay": wd,
            "rho": focal["rho"],
            "focal_sam": {"gamma": focal["gamma"], "lam": focal["lam"]},
            "imbsam": {"eta": 20.0},
            # stage 2 needs class-balanced batches, which image lists do not offer yet
            "ccsam": {"stage2_epochs": 0},
        },
        "train": {
            "epochs": 200,
            "batch_size": batch,
            "lr_schedule": "cosine",
            "eval_every": 10,
            **rho_schedule,
        },
        "run": {"precision": "auto"},
    }


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
            # digits at ratio 20 has 124..6 images per class: eta 40 makes the six rarest
            # the tail, about the share of CIFAR-100-LT's tail at eta 100 (65 of 100)
            "sse_sam": {"eta": 40.0, "rho_head": 0.05, "rho_tail": 0.1, "gamma": 0.7},
        },
        "train": {"epochs": 30, "batch_size": 64, "lr_schedule": "cosine", "eval_every": 10},
        "run": {"device": "cpu"},
    },
    "cifar10-lt-r100-clip": _clip(
        "cifar10", {"rho": 0.05, "gamma": 1.5, "lam": 0.7}, 200.0, imbalance_ratio=100.0
    ),
    "cifar100-lt-r100-clip": _clip(
        "cifar100", {"rho": 0.05, "gamma": 5.5, "lam": 0.8}, 20.0, imbalance_ratio=100.0
    ),
    "imagenet-lt-clip": _clip("imagenet_lt", {"rho": 0.05, "gamma": 0.5, "lam": 0.8}, 20.0),
    "inat2018-clip": _clip("inat2018", {"rho": 0.02, "gamma": 0.2, "lam": 1.0}, 20.0),
    "imagenet-lt-r50": _r50(
        "imagenet_lt",
        256,
        0.1,
        5e-4,
        {"rho": 0.1, "gamma": 0.8, "lam": 0.8},
        # rho 0.1 until epoch 160, then 0.2
        {"rho_schedule": "step", "rho_milestones": [160], "rho_decay": 2.0},
    ),
    "inat2018-r50": _r50("inat2018", 512, 0.2, 2e-4, {"rho": 0.2, "gamma": 2.0, "lam": 1.1}, {}),
}

DESCRIPTIONS = {
    "cifar10-lt-r100": "CIFAR-10-LT (ratio 100), ResNet-32, 200 epochs, logit adjustment, "
    "Focal-SAM rho 0.2, gamma 3.0, lambda 0.5",
    "cifar100-lt-r100": "CIFAR-100-LT (ratio 100), ResNet-32, 200 epochs, logit adjustment, "
    "Focal-SAM rho 0.3, gamma 3.2, lambda 0.8",
    "cifar10-lt-r100-clip": "CIFAR-10-LT (ratio 100), CLIP ViT-B/16 + AdaptFormer, text-"
    "initialised cosine head, 20 epochs, batch 128, lr 0.01, Focal-SAM rho 0.05, gamma 1.5, "
    "lambda 0.7 (needs clip_weights=PATH)",
    "cifar100-lt-r100-clip": "CIFAR-100-LT (ratio 100), CLIP ViT-B/16 + AdaptFormer, 20 epochs, "
    "Focal-SAM rho 0.05, gamma 5.5, lambda 0.8 (needs clip_weights=PATH)",
    "imagenet-lt-clip": "ImageNet-LT, CLIP ViT-B/16 + AdaptFormer, 20 epochs, Focal-SAM rho "
    "0.05, gamma 0.5, lambda 0.8 (needs clip_weights=PATH and the lists)",
    "inat2018-clip": "iNaturalist 2018, CLIP ViT-B/16 + AdaptFormer, 20 epochs, Focal-SAM rho "
    "0.02, gamma 0.2, lambda 1.0 (needs clip_weights=PATH, the lists, categories.json)",
    "imagenet-lt-r50": "ImageNet-LT, ResNet-50 from scratch, batch 256, lr 0.1, 200 epochs, "
    "Focal-SAM rho 0.1 (0.2 from epoch 160), gamma 0.8, lambda 0.8",
    "inat2018-r50": "iNaturalist 2018, ResNet-50 from scratch, batch 512, lr 0.2, wd 2e-4, "
    "200 epochs, Focal-SAM rho 0.2, gamma 2.0, lambda 1.1",
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
