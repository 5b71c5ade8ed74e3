"""The training and test data of a run on your own data (``data.name=folder|table|hf``).

The split comes from the run directory when it holds one (``eval``, ``predict``,
``--resume``), else from :func:`focalsam.data.own.read_own_data`; the run directory gets a
copy (``TrainData.run_files``). The test split is always decoded by the test transform
(``Resize`` + ``CenterCrop``, the model's mean/std), the one ``focalsam predict`` uses. The
training split is decoded once into a uint8 tensor at the training resolution and
augmented on the device (``data.cache=ram``, or ``auto`` on a GPU when it fits in
``data.cache_limit_gb``), or decoded and augmented in DataLoader workers (``off``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from focalsam.data import DeviceLoader, ImageListDataset, verify_images
from focalsam.data.own import OwnData, read_own_data, read_run_split, split_files
from focalsam.data.own_input import OwnInput, own_input
from focalsam.data.transforms import imagenet_test_transform, imagenet_train_transform

__all__ = ["cache_bytes", "decode_images", "own_datasets", "use_cache"]

GIB = 1 << 30


def own_datasets(
    own: OwnData, transform: Callable[[Any], Any] | None, split: str
) -> Dataset[tuple[Any, int]]:
    """The ``train`` or ``test`` split as a dataset of ``(transform(image), label)``."""
    samples = own.train if split == "train" else own.test
    if own.source is not None:
        from focalsam.data.own_hf import HFImageDataset

        return HFImageDataset(own.source, samples, len(own.class_names), transform)
    return ImageListDataset(
        ".",
        transform=transform,
        samples=samples,
        class_names=own.class_names,
        require_all_classes=False,
    )


def cache_bytes(n_images: int, size: int) -> int:
    """Bytes of ``n_images`` RGB uint8 images of ``size`` x ``size``."""
    return n_images * size * size * 3


def use_cache(mode: str, n_images: int, size: int, limit_gb: float, device_type: str) -> bool:
    """``ram``: yes; ``off``: no; ``auto``: on a GPU, when :func:`cache_bytes` fits in
    ``limit_gb`` (on the CPU the device loader's resampling is no faster than workers:
    ``benchmarks/own_data_loading.py``)."""
    if mode == "auto":
        return device_type == "cuda" and cache_bytes(n_images, size) <= limit_gb * GIB
    return mode == "ram"


def decode_images(dataset: Dataset[tuple[Any, int]], size: int, workers: int = 4) -> np.ndarray:
    """Every image of ``dataset`` (PIL images) as ``Resize(size)`` + ``CenterCrop(size)``
    uint8 RGB, ``(N, size, size, 3)``; decoded by ``workers`` threads."""
    from torchvision.transforms import CenterCrop, Resize

    resize, crop = Resize(size), CenterCrop(size)
    out = np.empty((len(dataset), size, size, 3), dtype=np.uint8)  # type: ignore[arg-type]

    def one(i: int) -> None:
        image = dataset[i][0]
        out[i] = np.asarray(crop(resize(image)), dtype=np.uint8)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(one, range(len(out))))
    return out


def build_own_data(cfg: Any, device: torch.device, rank: int, world: int) -> dict[str, Any]:
    """The pieces of a :class:`~focalsam.train.data_setup.TrainData` for own data."""
    from focalsam.train.data_setup import (
        SplitSource,
        _dataset_source,
        _EpochDataLoader,
        test_file_loader,
        train_file_loader,
    )

    d = cfg.data
    own = read_run_split(cfg.run.dir)
    if own is None:
        own = read_own_data(d)
    elif d.name.strip().lower() == "hf":
        from focalsam.data.own_hf import open_hf_images

        own.source = open_hf_images(d)
    spec: OwnInput = own_input(cfg)
    train_tf = imagenet_train_transform(spec.size, False, spec.mean, spec.std)
    test_tf = imagenet_test_transform(spec.test_resize, spec.size, spec.mean, spec.std)
    train_set = own_datasets(own, train_tf, "train")
    test_set = own_datasets(own, test_tf, "test")
    if d.verify_images and own.source is None:  # every image opens, before any training
        for ds in (train_set, test_set):
            assert isinstance(ds, ImageListDataset)
            verify_images(ds)
    labels = np.asarray([s[1] for s in own.train], dtype=np.int64)
    cached = use_cache(d.cache, len(own.train), spec.size, d.cache_limit_gb, device.type)
    make_balanced: Callable[[], Any] | None = None
    if cached:
        images = decode_images(own_datasets(own, None, "train"), spec.size, max(1, d.num_workers))
        kw: dict[str, Any] = {
            "device": device,
            "mean": spec.mean,
            "std": spec.std,
            "size": spec.size,
            "crop": "resized",
            "channels_last": cfg.run.channels_last,
        }
        train: Any = DeviceLoader(
            images,
            labels,
            cfg.train.batch_size,
            seed=cfg.run.seed,
            rank=rank,
            world_size=world,
            **kw,
        )

        def make_balanced() -> Any:
            return DeviceLoader(
                images,
                labels,
                cfg.train.batch_size,
                seed=cfg.run.seed,
                sampling="class_balanced",
                **kw,
            )
    else:
        loader = train_file_loader(train_set, cfg, device, rank, world)
        train = _EpochDataLoader(loader, device, cfg.run.seed)
    test_loader = test_file_loader(test_set, cfg, device, rank, world, batch=64)

    def split(name: str) -> SplitSource:
        plain = own_datasets(own, test_tf, "train") if name == "train" else test_set
        return _dataset_source(plain, device)

    names = list(own.class_names)
    return {
        "train": train,
        "test": _EpochDataLoader(test_loader, device),
        "class_counts": np.bincount(labels, minlength=len(names)).tolist(),
        "num_classes": len(names),
        "in_channels": 3,
        "image_size": spec.size,
        "make_balanced": make_balanced,
        "split": split,
        "class_names": lambda: names,
        "run_files": split_files(own),
        "preprocess": test_tf,
        "input_spec": spec.as_dict(),
        "own": own,
    }
