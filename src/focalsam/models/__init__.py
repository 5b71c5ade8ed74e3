"""Models: ResNet-32 for CIFAR, small demo models, ResNet-50 through torchvision, and CLIP ViT
image towers with parameter-efficient tuning through open_clip (``clip_vit_b16``, ``clip_tiny``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from focalsam.errors import InputError
from focalsam.models.clip import CLIP_ARCHS, ClipImageClassifier, ClipOptions, build_clip_classifier
from focalsam.models.resnet_cifar import NormedLinear, ResNetCIFAR, resnet32
from focalsam.models.small import MLP, SmallCNN
from focalsam.names import normalize_name

MODELS = ("resnet32", "resnet50", "small_cnn", "mlp", "clip_vit_b16", "clip_tiny")


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    normed_linear: bool = False,
    *,
    clip: ClipOptions | None = None,
    class_names: Sequence[str] | None = None,
) -> nn.Module:
    """Build a model by name; every model has ``features(x)`` and a head ``fc``.

    ``clip`` and ``class_names`` are for the CLIP models (their head is always the cosine
    classifier, so ``normed_linear`` does not apply; ``clip_vit_b16`` is 224 px whatever
    ``image_size``, ``clip_tiny`` takes ``image_size``)."""
    key = normalize_name(name)
    if key in CLIP_ARCHS:
        if in_channels != 3:
            raise InputError(
                f"{key} takes RGB images (in_channels=3), got in_channels={in_channels}"
            )
        size = image_size if key == "clip_tiny" else None
        return build_clip_classifier(
            key, num_classes, options=clip, class_names=class_names, image_size=size
        )
    if key == "resnet32":
        return ResNetCIFAR(5, num_classes, normed_linear=normed_linear, in_channels=in_channels)
    if key == "small_cnn":
        return SmallCNN(num_classes, in_channels)
    if key == "mlp":
        return MLP(in_channels * image_size * image_size, num_classes)
    if key == "resnet50":
        try:
            from torchvision.models import resnet50
        except ImportError as exc:
            raise ImportError("resnet50 needs torchvision: pip install 'focalsam[vision]'") from exc
        model = resnet50(weights=None, num_classes=num_classes)
        if normed_linear:
            model.fc = NormedLinear(model.fc.in_features, num_classes)  # type: ignore[assignment]
        return model
    raise InputError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")


__all__ = [
    "ClipImageClassifier",
    "ClipOptions",
    "MLP",
    "MODELS",
    "NormedLinear",
    "ResNetCIFAR",
    "SmallCNN",
    "build_clip_classifier",
    "create_model",
    "resnet32",
]
