"""Evaluation under common corruptions (Hendrycks & Dietterich, ICLR 2019), per shot group.

:mod:`~focalsam.robustness.corruptions` generates ImageNet-C style corruptions of in-memory
images (the optional ``imagecorruptions`` package) with a disk cache,
:mod:`~focalsam.robustness.cifar_c` checks and reads the released CIFAR-10-C folders,
:mod:`~focalsam.robustness.imagenet_c` reads the released ImageNet-C folders, and
:mod:`~focalsam.robustness.scores` holds the CE / mCE arithmetic and the error summaries.
"""

from focalsam.robustness.corruptions import (
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    CorruptionCache,
    available_corruptions,
    corrupt_images,
    corrupted,
    images_digest,
)
from focalsam.robustness.imagenet_c import (
    ImageNetCDataset,
    ImageNetCSamples,
    imagenet_c_corruptions,
    imagenet_c_samples,
    wnid_labels_from_list,
)
from focalsam.robustness.scores import (
    ALEXNET_ERRORS,
    corruption_error,
    mean_corruption_error,
    summarize,
)

__all__ = [
    "ALEXNET_ERRORS",
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "CorruptionCache",
    "ImageNetCDataset",
    "ImageNetCSamples",
    "available_corruptions",
    "corrupt_images",
    "corrupted",
    "corruption_error",
    "images_digest",
    "imagenet_c_corruptions",
    "imagenet_c_samples",
    "mean_corruption_error",
    "summarize",
    "wnid_labels_from_list",
]
