"""Models: ResNet-32 for CIFAR, small demo models, and ResNet-50 through torchvision."""

from __future__ import annotations

from torch import nn

from focalsam.errors import InputError
from focalsam.models.resnet_cifar import NormedLinear, ResNetCIFAR, resnet32
from focalsam.models.small import MLP, SmallCNN
from focalsam.names import normalize_name

MODELS = ("resnet32", "resnet50", "small_cnn", "mlp")


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    normed_linear: bool = False,
) -> nn.Module:
    """Build a model by name; every model has ``features(x)`` and a head ``fc``."""
    key = normalize_name(name)
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
    "MLP",
    "MODELS",
    "NormedLinear",
    "ResNetCIFAR",
    "SmallCNN",
    "create_model",
    "resnet32",
]
