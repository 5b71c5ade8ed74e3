"""Data: long-tailed profiles, dataset readers, a fast on-device loader, samplers.

- :mod:`~focalsam.data.profiles`: ``long_tailed_counts``, ``select_long_tailed`` (Cao et al.).
- :mod:`~focalsam.data.cifar`: CIFAR-10/100 from the python layout, ``cifar_lt``, download.
- :mod:`~focalsam.data.lists`: ImageNet-LT / iNaturalist-2018 lists, image folders (Pillow).
- :mod:`~focalsam.data.loader`: ``DeviceLoader``, batched crop/flip/normalize on the device.
- :mod:`~focalsam.data.resample`: resize / RandomResizedCrop of image batches as matrices.
- :mod:`~focalsam.data.samplers`: class-balanced sampling.
- :mod:`~focalsam.data.digits`: ``digits_lt``, an offline demo set (scikit-learn digits).
- :mod:`~focalsam.data.transforms`: torchvision augmentations and the published recipes
  (``standard``, ``clip``, ``imagenet_r50``, ``inat_r50``; torchvision from the ``vision`` extra).

Bad data (a missing or damaged file, a bad list line, a failed download, a bad setting) raises
:class:`focalsam.errors.DataError` or one of its kinds in :mod:`~focalsam.data.errors`, with
one line naming the input and what was expected.
"""

from focalsam.data.arrays import ArrayDataset
from focalsam.data.cifar import (
    CIFAR_SPECS,
    cifar_class_names,
    cifar_dataset,
    cifar_lt,
    download_cifar,
    find_cifar_dir,
    load_cifar,
)
from focalsam.data.digits import DigitsLT, digits_lt
from focalsam.data.errors import DataError, DataNotFoundError, DownloadError, ImageDecodeError
from focalsam.data.lists import (
    ImageListDataset,
    image_folder_lt,
    imagenet_lt,
    inaturalist2018,
    parse_image_list,
    verify_images,
)
from focalsam.data.loader import CIFAR_MEAN, CIFAR_STD, DeviceLoader
from focalsam.data.profiles import (
    class_counts,
    long_tailed_counts,
    long_tailed_indices,
    select_long_tailed,
    validate_imbalance_ratio,
)
from focalsam.data.resample import random_resized_crop_boxes
from focalsam.data.samplers import ClassBalancedSampler, class_balanced_indices, epoch_generator
from focalsam.data.transforms import CLIP_MEAN, CLIP_STD, INAT_MEAN, INAT_STD, RECIPES

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_SPECS",
    "CIFAR_STD",
    "CLIP_MEAN",
    "CLIP_STD",
    "INAT_MEAN",
    "INAT_STD",
    "RECIPES",
    "ArrayDataset",
    "ClassBalancedSampler",
    "DataError",
    "DataNotFoundError",
    "DeviceLoader",
    "DigitsLT",
    "DownloadError",
    "ImageDecodeError",
    "ImageListDataset",
    "cifar_class_names",
    "cifar_dataset",
    "cifar_lt",
    "class_balanced_indices",
    "class_counts",
    "digits_lt",
    "download_cifar",
    "epoch_generator",
    "find_cifar_dir",
    "image_folder_lt",
    "imagenet_lt",
    "inaturalist2018",
    "load_cifar",
    "long_tailed_counts",
    "long_tailed_indices",
    "parse_image_list",
    "random_resized_crop_boxes",
    "select_long_tailed",
    "validate_imbalance_ratio",
    "verify_images",
]
