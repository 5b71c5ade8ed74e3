"""Standard torchvision augmentations (needs the ``vision`` extra: torchvision and Pillow).

ImageNet-LT / iNaturalist train: ``RandomResizedCrop(224)``, horizontal flip, optional
``ColorJitter(0.4, 0.4, 0.4, 0)``, ``ToTensor``, ``Normalize``; test: ``Resize(256)``,
``CenterCrop(224)``, ``ToTensor``, ``Normalize``. CIFAR train: ``RandomCrop(32, padding=4)``,
flip, ``ToTensor``, ``Normalize`` (what :class:`~focalsam.data.DeviceLoader` does on a device).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from focalsam.data.loader import CIFAR_MEAN, CIFAR_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "cifar_test_transform",
    "cifar_train_transform",
    "imagenet_test_transform",
    "imagenet_train_transform",
    "require_vision",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def require_vision() -> Any:
    """Import and return ``torchvision.transforms``, or explain how to install it."""
    try:
        import PIL  # noqa: F401
        from torchvision import transforms
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "image decoding and augmentation need torchvision and Pillow: "
            "pip install 'focalsam[vision]'"
        ) from e
    return transforms


def imagenet_train_transform(
    size: int = 224,
    color_jitter: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable[[Any], Any]:
    """RandomResizedCrop(size), flip, optional ColorJitter(0.4, 0.4, 0.4), normalize."""
    t = require_vision()
    steps: list[Any] = [t.RandomResizedCrop(size), t.RandomHorizontalFlip()]
    if color_jitter:
        steps.append(t.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0))
    steps += [t.ToTensor(), t.Normalize(mean, std)]
    return t.Compose(steps)  # type: ignore[no-any-return]


def imagenet_test_transform(
    resize: int = 256,
    crop: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable[[Any], Any]:
    """Resize(resize), CenterCrop(crop), normalize."""
    t = require_vision()
    return t.Compose(  # type: ignore[no-any-return]
        [t.Resize(resize), t.CenterCrop(crop), t.ToTensor(), t.Normalize(mean, std)]
    )


def cifar_train_transform(
    mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD, padding: int = 4
) -> Callable[[Any], Any]:
    """RandomCrop(32, padding), flip, normalize: the per-sample PIL path."""
    t = require_vision()
    return t.Compose(  # type: ignore[no-any-return]
        [
            t.RandomCrop(32, padding=padding),
            t.RandomHorizontalFlip(),
            t.ToTensor(),
            t.Normalize(mean, std),
        ]
    )


def cifar_test_transform(
    mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD
) -> Callable[[Any], Any]:
    """ToTensor, normalize."""
    t = require_vision()
    return t.Compose([t.ToTensor(), t.Normalize(mean, std)])  # type: ignore[no-any-return]
