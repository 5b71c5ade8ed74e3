"""Standard torchvision augmentations (needs the ``vision`` extra: torchvision and Pillow).

ImageNet-LT / iNaturalist train: ``RandomResizedCrop(224)``, horizontal flip, optional
``ColorJitter(0.4, 0.4, 0.4, 0)``, ``ToTensor``, ``Normalize``; test: ``Resize(256)``,
``CenterCrop(224)``, ``ToTensor``, ``Normalize``. CIFAR train: ``RandomCrop(32, padding=4)``,
flip, ``ToTensor``, ``Normalize`` (what :class:`~focalsam.data.DeviceLoader` does on a device).

Recipes (:data:`RECIPES`, :func:`recipe`, :func:`recipe_transforms`), all at ``size`` (224):

- ``standard``: ImageNet mean/std, no color jitter, test ``Resize(256)`` (today's default);
- ``clip`` (CLIP ViT-B/16): CLIP mean/std, test ``Resize(224)`` (iNaturalist: 256);
- ``imagenet_r50`` (ResNet-50 on ImageNet-LT): ImageNet mean/std, ``ColorJitter(0.4, 0.4,
  0.4, 0)``, test ``Resize(256)``;
- ``inat_r50`` (ResNet-50 on iNaturalist 2018): iNaturalist mean/std, test ``Resize(256)``.

Train is always ``RandomResizedCrop(size)`` (scale (0.08, 1), ratio (3/4, 4/3)) and a horizontal
flip; test is ``Resize(test_resize)`` + ``CenterCrop(size)``, ``test_resize`` scaled by
``size / 224`` at other sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from focalsam.data.loader import CIFAR_MEAN, CIFAR_STD
from focalsam.errors import DataError

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INAT_MEAN",
    "INAT_STD",
    "RECIPES",
    "Recipe",
    "cifar_resized_train_transform",
    "cifar_test_transform",
    "cifar_train_transform",
    "imagenet_test_transform",
    "imagenet_train_transform",
    "recipe",
    "recipe_transforms",
    "require_vision",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: OpenAI CLIP's image normalization
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: iNaturalist 2018 statistics used by the ResNet-50 long-tail recipes
INAT_MEAN = (0.466, 0.471, 0.380)
INAT_STD = (0.195, 0.194, 0.192)

RECIPES = ("standard", "clip", "imagenet_r50", "inat_r50")


@dataclass(frozen=True)
class Recipe:
    """One published augmentation: train ``RandomResizedCrop(size)``, flip, optional
    ``ColorJitter(0.4, 0.4, 0.4, 0)``; test ``Resize(test_resize(size))`` + ``CenterCrop``;
    both normalized by ``mean`` / ``std``."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color_jitter: bool = False
    #: the test resize at 224 px
    resize_at_224: int = 256

    def test_resize(self, size: int = 224) -> int:
        """``Resize`` of the test transform at ``size``: ``round(resize_at_224 * size / 224)``."""
        return int(round(self.resize_at_224 * size / 224))


def recipe(name: str, dataset: str = "imagenet_lt") -> Recipe:
    """The recipe ``name`` (one of :data:`RECIPES`) for ``dataset``; only CLIP's test resize
    depends on the dataset (224, or 256 on ``inat2018``)."""
    if name == "standard":
        return Recipe(name, IMAGENET_MEAN, IMAGENET_STD)
    if name == "clip":
        return Recipe(
            name, CLIP_MEAN, CLIP_STD, resize_at_224=256 if dataset == "inat2018" else 224
        )
    if name == "imagenet_r50":
        return Recipe(name, IMAGENET_MEAN, IMAGENET_STD, color_jitter=True)
    if name == "inat_r50":
        return Recipe(name, INAT_MEAN, INAT_STD)
    raise DataError(f"unknown transform recipe {name!r}; valid: {', '.join(RECIPES)}")


def recipe_transforms(
    name: str, dataset: str = "imagenet_lt", size: int = 224
) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """``(train, test)`` torchvision transforms of :func:`recipe` ``(name, dataset)`` at ``size``."""
    r = recipe(name, dataset)
    if size < 1:
        raise DataError(f"size must be >= 1, got {size}")
    train = imagenet_train_transform(size, r.color_jitter, r.mean, r.std)
    return train, imagenet_test_transform(r.test_resize(size), size, r.mean, r.std)


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


def cifar_resized_train_transform(
    size: int = 224, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> Callable[[Any], Any]:
    """Resize(size), RandomResizedCrop(size), flip, normalize: the per-sample PIL path of
    ``DeviceLoader(..., size=size, crop="resized")`` (which does not round to uint8 between
    the two resizes)."""
    t = require_vision()
    return t.Compose(  # type: ignore[no-any-return]
        [
            t.Resize(size),
            t.RandomResizedCrop(size),
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
