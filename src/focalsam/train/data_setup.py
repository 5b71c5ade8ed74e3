"""Build the training and test data of a run from its config.

Resolution and augmentation come from ``data.image_size`` and ``data.transform``
(:func:`data_recipe`): CIFAR at 32 px with the padding crop (``standard``), or resampled on
the device (``clip``: ``RandomResizedCrop`` of the image upsampled to 224 px, CLIP
normalization); ImageNet-LT / iNaturalist through torchvision with the recipe's train and
test transforms (:func:`focalsam.data.transforms.recipe_transforms`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from focalsam.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    CLIP_MEAN,
    CLIP_STD,
    DataNotFoundError,
    DeviceLoader,
    cifar_dataset,
    cifar_lt,
    digits_lt,
    epoch_generator,
    imagenet_lt,
    inaturalist2018,
    verify_images,
)
from focalsam.data.own import OWN_DATASETS
from focalsam.errors import InputError
from focalsam.metrics import LongTailAccuracy, default_shot_preset
from focalsam.names import normalize_name
from focalsam.train.config import ConfigError, TrainConfig
from focalsam.train.validation import DATASETS, NATIVE_SIZE, data_recipe

DIGITS_MEAN, DIGITS_STD = (0.3,), (0.4,)
#: the datasets' own resolutions, and the models that need another
#: values of the largest test batch of the in-memory sets (1000 CIFAR images: 3M values)
TEST_BATCH_VALUES = 1 << 25


@dataclass
class TrainData:
    """Loaders and facts a run needs; ``train``/``test`` yield ``(x, y)`` on the device."""

    train: Any
    test: Iterable[tuple[Tensor, Tensor]]
    class_counts: list[int]
    num_classes: int
    in_channels: int
    image_size: int
    shot_preset: str
    # class-balanced batches over the same training set (CC-SAM's stage 2)
    make_balanced: Callable[[], Any] | None = field(default=None, repr=False)
    # "train" | "test" -> the split without augmentation, for analysis
    split: Callable[[str], SplitSource] | None = field(default=None, repr=False)
    # the class names in label order, computed on demand (CLIP text heads); may raise a
    # DataError (e.g. iNaturalist without categories.json)
    class_names: Callable[[], list[str]] | None = field(default=None, repr=False)
    # files the run directory gets a copy of (own data: the split it trained on)
    run_files: dict[str, str] = field(default_factory=dict, repr=False)
    # own data: the test transform of one PIL image and its settings (predict, export)
    preprocess: Callable[[Any], Tensor] | None = field(default=None, repr=False)
    input_spec: dict[str, Any] | None = None

    def names(self) -> list[str] | None:
        """The class names in label order for reports, or ``None`` where the data set has
        none to give (e.g. iNaturalist without its categories.json)."""
        if self.class_names is None:
            return None
        try:
            return list(self.class_names())
        except InputError:
            return None

    def new_metric(self) -> LongTailAccuracy:
        """An empty accumulator of per-class and many/medium/few accuracy for this data."""
        return LongTailAccuracy(self.num_classes, self.class_counts, preset=self.shot_preset)


class SplitSource:
    """A whole split, unaugmented and in order: its ``labels`` and the batches of any
    subset of it (on the device), for measures that pick their own samples.

    In-memory splits also give their uint8 ``images`` as ``(N, H, W, C)`` and
    :meth:`with_images` the same split over other images (e.g. corrupted copies).
    """

    def __init__(
        self,
        labels: Any,
        make_batches: Callable[[np.ndarray, int], list[Any]],
        images: np.ndarray | None = None,
        with_images: Callable[[np.ndarray], SplitSource] | None = None,
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self._make = make_batches
        self.images = images
        self._with_images = with_images

    def with_images(self, images: np.ndarray) -> SplitSource:
        if self._with_images is None:
            raise ConfigError("this split is read from image files, not held in memory")
        return self._with_images(images)

    def batches(self, indices: np.ndarray, batch_size: int = 256) -> list[tuple[Tensor, Tensor]]:
        return self._make(np.asarray(indices, dtype=np.int64), batch_size)


def _array_source(images: Any, labels: Any, **kw: Any) -> SplitSource:
    def make(idx: np.ndarray, batch_size: int) -> list[Any]:
        index = torch.as_tensor(idx)
        x, y = torch.as_tensor(images)[index], torch.as_tensor(np.asarray(labels))[index]
        loader = DeviceLoader(x, y, batch_size, sampling="sequential", augment=False, **kw)
        return list(loader)

    nchw = kw.get("layout") == "NCHW"
    array = np.asarray(torch.as_tensor(images))
    nhwc = array.transpose(0, 2, 3, 1) if nchw else array

    def other(new: np.ndarray) -> SplitSource:
        return _array_source(new.transpose(0, 3, 1, 2) if nchw else new, labels, **kw)

    return SplitSource(labels, make, nhwc, other)


def _dataset_source(dataset: Any, device: torch.device) -> SplitSource:
    def make(idx: np.ndarray, batch_size: int) -> list[Any]:
        loader = DataLoader(Subset(dataset, idx.tolist()), batch_size, shuffle=False)
        return [(x.to(device), y.to(device)) for x, y in loader]

    return SplitSource(dataset.labels, make)


class _EpochDataLoader:
    """A DataLoader (+ DistributedSampler) that moves batches to the device."""

    def __init__(self, loader: DataLoader[Any], device: torch.device, seed: int = 0) -> None:
        self.loader = loader
        self.device = device
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        sampler = self.loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        elif self.loader.generator is not None:  # the shuffle of epoch e depends on (seed, e)
            self.loader.generator.set_state(epoch_generator(self.seed, epoch).get_state())

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        nb = self.device.type == "cuda"
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb)


def eval_batch_size(channels: int, size: int, largest: int = 1000) -> int:
    """Test batch of the in-memory sets: ``largest`` images, fewer when one batch would hold
    more than :data:`TEST_BATCH_VALUES` values (128 MB of float32; 222 images at 224 px)."""
    return max(1, min(largest, TEST_BATCH_VALUES // (channels * size * size)))


def _in_memory(
    cfg: TrainConfig,
    device: torch.device,
    rank: int,
    world: int,
    train_xy: tuple[Any, Any],
    test_xy: tuple[Any, Any],
    test_batch: int = 1000,
    **style: Any,
) -> tuple[DeviceLoader, DeviceLoader, Callable[[], DeviceLoader], Callable[[str], SplitSource]]:
    """On-device loaders over uint8 images: the training set sharded over ranks, this
    rank's share of the test set, a factory of class-balanced training batches and the
    unaugmented splits.
    ``style``: layout, normalization, size and augmentation options of :class:`DeviceLoader`."""
    kw: dict[str, Any] = {"device": device, "channels_last": cfg.run.channels_last, **style}
    train = DeviceLoader(
        *train_xy, cfg.train.batch_size, seed=cfg.run.seed, rank=rank, world_size=world, **kw
    )
    test = DeviceLoader(
        test_xy[0][rank::world],
        test_xy[1][rank::world],
        test_batch,
        sampling="sequential",
        augment=False,
        **kw,
    )

    def balanced() -> DeviceLoader:
        return DeviceLoader(
            *train_xy, cfg.train.batch_size, seed=cfg.run.seed, sampling="class_balanced", **kw
        )

    def split(name: str) -> SplitSource:
        return _array_source(*(train_xy if name == "train" else test_xy), **kw)

    return train, test, balanced, split


def build_data(cfg: TrainConfig, device: torch.device, rank: int = 0, world: int = 1) -> TrainData:
    """Training loader (sharded over ``world`` ranks) and this rank's share of the test set,
    at the resolution and with the augmentation of :func:`data_recipe`."""
    name = normalize_name(cfg.data.name)
    if name in OWN_DATASETS:
        from focalsam.train.own_data import build_own_data

        parts = build_own_data(cfg, device, rank, world)
        parts.pop("own")
        return TrainData(**parts, shot_preset=_preset(cfg))
    if name not in NATIVE_SIZE:
        raise ConfigError(f"unknown dataset {cfg.data.name!r}; valid: {', '.join(DATASETS)}")
    transform, size = data_recipe(cfg)
    if name == "digits":
        d = digits_lt(cfg.data.imbalance_ratio, cfg.data.profile)  # type: ignore[arg-type]

        def to_u8(x: Tensor) -> Tensor:
            return (x * 255).round().to(torch.uint8)

        train, test, balanced, split = _in_memory(
            cfg,
            device,
            rank,
            world,
            (to_u8(d.x_train), d.y_train),
            (to_u8(d.x_test), d.y_test),
            layout="NCHW",
            mean=DIGITS_MEAN,
            std=DIGITS_STD,
            padding=1,
            flip=False,
        )
        counts = d.class_counts.tolist()
        return TrainData(
            train,
            test,
            counts,
            10,
            1,
            8,
            _preset(cfg),
            balanced,
            split,
            class_names=lambda: [str(i) for i in range(10)],
        )
    if name in ("cifar10", "cifar100"):
        d_cfg = cfg.data
        profile: Any = d_cfg.profile
        lt = cifar_lt(d_cfg.root, name, d_cfg.imbalance_ratio, profile, 0, d_cfg.download)
        full_test = cifar_dataset(cfg.data.root, name, train=False)
        style: dict[str, Any] = {"mean": CIFAR_MEAN, "std": CIFAR_STD}
        if transform == "clip":  # RandomResizedCrop(size) of the upsampled image; test: resize
            style = {"mean": CLIP_MEAN, "std": CLIP_STD, "size": size, "crop": "resized"}
        train, test, balanced, split = _in_memory(
            cfg,
            device,
            rank,
            world,
            (lt.images, lt.labels),
            (full_test.images, full_test.labels),
            eval_batch_size(3, size),
            **style,
        )
        counts = np.bincount(lt.labels, minlength=lt.num_classes).tolist()
        return TrainData(
            train,
            test,
            counts,
            lt.num_classes,
            3,
            size,
            _preset(cfg),
            balanced,
            split,
            class_names=lambda: _cifar_names(name),
        )
    return _image_lists(cfg, device, rank, world, name, transform, size)


def train_file_loader(
    train_set: Any, cfg: TrainConfig, device: torch.device, rank: int, world: int
) -> DataLoader[Any]:
    """The training set's image files, decoded in ``data.num_workers`` workers, shuffled by
    ``run.seed`` (each process its shard under DDP), full batches only."""
    sampler: Any = None
    gen = torch.Generator().manual_seed(cfg.run.seed)
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg.run.seed)
    return DataLoader(
        train_set,
        cfg.train.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=gen if sampler is None else None,
        drop_last=True,
        num_workers=cfg.data.num_workers,
        persistent_workers=cfg.data.num_workers > 0,
        pin_memory=device.type == "cuda",
    )


def test_file_loader(
    test_set: Any, cfg: TrainConfig, device: torch.device, rank: int, world: int, batch: int
) -> DataLoader[Any]:
    """This process's shard of the test set's image files, in order."""
    shard = Subset(test_set, list(range(rank, len(test_set), world)))
    workers = cfg.data.num_workers
    return DataLoader(
        shard, batch, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda"
    )


def _image_lists(
    cfg: TrainConfig,
    device: torch.device,
    rank: int,
    world: int,
    name: str,
    transform: str,
    size: int,
) -> TrainData:
    """ImageNet-LT / iNaturalist: DataLoader workers decode and augment with the recipe."""
    from focalsam.data.transforms import recipe_transforms

    reader = imagenet_lt if name == "imagenet_lt" else inaturalist2018
    train_tf, test_tf = recipe_transforms(transform, name, size)
    train_set = reader(cfg.data.root, "train", cfg.data.train_list, transform=train_tf)
    test_set = reader(
        cfg.data.root,
        "test" if name == "imagenet_lt" else "val",
        cfg.data.test_list,
        transform=test_tf,
    )
    if cfg.data.verify_images:  # every image opens, before any training is spent
        verify_images(train_set)
        verify_images(test_set)
    train_loader = train_file_loader(train_set, cfg, device, rank, world)
    test_loader = test_file_loader(test_set, cfg, device, rank, world, batch=256)
    counts = train_set.class_counts.tolist()

    def list_split(split_name: str) -> SplitSource:
        plain = reader(cfg.data.root, "train", cfg.data.train_list, transform=test_tf)
        return _dataset_source(plain if split_name == "train" else test_set, device)

    def class_names() -> list[str]:
        if name == "imagenet_lt":
            from focalsam.data.classnames import imagenet_class_names

            return imagenet_class_names()
        return _inat_names(cfg, train_set.num_classes)

    return TrainData(
        _EpochDataLoader(train_loader, device, cfg.run.seed),
        _EpochDataLoader(test_loader, device),
        counts,
        train_set.num_classes,
        3,
        size,
        _preset(cfg),
        split=list_split,
        class_names=class_names,
    )


def _cifar_names(name: str) -> list[str]:
    from focalsam.data.classnames import cifar_class_names

    return cifar_class_names(name)


def _inat_names(cfg: TrainConfig, num_classes: int) -> list[str]:
    """iNaturalist names from ``data.categories`` or ``ROOT/categories.json``."""
    path = Path(cfg.data.categories or Path(cfg.data.root) / "categories.json")
    if not path.is_file():
        raise DataNotFoundError(
            f"iNaturalist class names (for a CLIP text head) need categories.json: {path} is "
            "not a file; set data.categories=PATH"
        )
    from focalsam.data.classnames import inat_class_names

    return inat_class_names(path, num_classes)


def _preset(cfg: TrainConfig) -> str:
    if cfg.data.shot_preset:
        return cfg.data.shot_preset
    name = normalize_name(cfg.data.name)
    if name == "imagenet_lt":
        return "imagenet-lt"
    if name == "inat2018":
        return "inaturalist"
    return default_shot_preset(name, cfg.data.imbalance_ratio)
