"""Models: ResNet-32 for CIFAR (and, with extras, ResNet-50 and CLIP ViT)."""

from focalsam.models.resnet_cifar import NormedLinear, ResNetCIFAR, resnet32

__all__ = ["NormedLinear", "ResNetCIFAR", "resnet32"]
