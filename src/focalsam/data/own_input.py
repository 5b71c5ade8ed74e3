"""The input of a model trained on your own data: resolution, mean, std and test resize.

``data.image_size``, ``data.mean`` and ``data.std`` win when set; otherwise a ``timm:`` /
``torchvision:`` backbone gives its pretrained config, a CLIP model CLIP's statistics at
224 px, ResNet-50 ImageNet's at 224 px and the small models (ResNet-32, small CNN, MLP)
ImageNet's at 32 px. Training augments with ``RandomResizedCrop(size)`` and a flip; the
test transform is ``Resize(round(size / crop_pct))`` + ``CenterCrop(size)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from focalsam.data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

__all__ = ["OwnInput", "own_input"]

_SMALL_MODELS_SIZE = 32


@dataclass(frozen=True)
class OwnInput:
    """``size`` px input normalized by ``mean`` / ``std``; test resize ``size / crop_pct``."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 0.875

    @property
    def test_resize(self) -> int:
        return int(round(self.size / self.crop_pct))

    def as_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.size,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.test_resize,
            "crop_pct": self.crop_pct,
        }


def own_input(cfg: Any) -> OwnInput:
    """The resolved input of ``cfg`` (a :class:`~focalsam.train.config.TrainConfig`)."""
    from focalsam.models.backbones import backbone_input, is_backbone_name
    from focalsam.names import normalize_name

    name = cfg.model.name
    if is_backbone_name(name):
        b = backbone_input(name)
        size, mean, std, crop = b.size, b.mean, b.std, b.crop_pct
    elif normalize_name(name).startswith("clip"):
        size, mean, std, crop = 224, CLIP_MEAN, CLIP_STD, 1.0
    elif normalize_name(name) == "resnet50":
        size, mean, std, crop = 224, IMAGENET_MEAN, IMAGENET_STD, 0.875
    else:
        size, mean, std, crop = _SMALL_MODELS_SIZE, IMAGENET_MEAN, IMAGENET_STD, 0.875
    d = cfg.data
    return OwnInput(
        int(d.image_size or size),
        tuple(float(v) for v in (d.mean if d.mean is not None else mean)),
        tuple(float(v) for v in (d.std if d.std is not None else std)),
        float(crop),
    )
