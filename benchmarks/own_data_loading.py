"""Reading your own image folder: images/s of one training epoch, in one process.

Baseline: torchvision ``ImageFolder`` + ``DataLoader`` (``--workers`` workers, default 2)
with ``RandomResizedCrop(size)``, flip, ``ToTensor``, ``Normalize``. Against it:

- ``workers``: focalsam's worker-decoded path (``data.cache=off``): the same transforms in
  the same number of DataLoader workers, over focalsam's image list;
- ``cache``: ``data.cache=ram``: the first epoch decodes every image once into a uint8
  tensor (reported separately), later epochs crop, flip and normalize it on the device
  (:class:`~focalsam.data.DeviceLoader`).

The folder is generated (``--images`` JPEGs of random sizes around 1.2x the resolution,
10 classes, long-tailed) unless ``--folder`` names one. Prints images/s and the ratios
against the baseline, at each ``--sizes`` (default 64 and 224).

    python benchmarks/own_data_loading.py --images 5000 --sizes 64,224 --device cpu
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def make_folder(root: Path, images: int, size: int, seed: int = 0) -> None:
    """``images`` JPEGs over 10 classes (counts ~ exp profile, ratio 10), sides near
    ``1.2 * size``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    weights = 10.0 ** (-np.arange(10) / 9)
    counts = np.maximum(1, np.round(images * weights / weights.sum())).astype(int)
    for c, n in enumerate(counts):
        folder = root / "train" / f"class{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = (int(size * 1.2 * rng.uniform(0.9, 1.1)) for _ in range(2))
            base = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)
            img.save(folder / f"{i:05d}.jpg", quality=90)


def _epoch(loader: Any, device: torch.device) -> tuple[int, float]:
    start, n = time.perf_counter(), 0
    for x, _ in loader:
        x = x.to(device)
        n += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n, time.perf_counter() - start


def measure(
    folder: Path, size: int, workers: int, batch: int, device: torch.device
) -> dict[str, float]:
    from torch.utils.data import DataLoader
    from torchvision import datasets

    from focalsam.data import DeviceLoader
    from focalsam.data.own import read_own_data
    from focalsam.data.transforms import IMAGENET_MEAN, IMAGENET_STD, imagenet_train_transform
    from focalsam.train.own_data import decode_images, own_datasets

    tf = imagenet_train_transform(size, False, IMAGENET_MEAN, IMAGENET_STD)
    kw = {"batch_size": batch, "shuffle": True, "num_workers": workers, "drop_last": False}
    base = DataLoader(
        datasets.ImageFolder(str(folder / "train"), tf), persistent_workers=workers > 0, **kw
    )
    _epoch(base, device)  # the workers start; the page cache is warm for everyone
    n, t = _epoch(base, device)
    out = {"torchvision_ips": n / t}

    class D:  # the data section of a config
        name, root, test_fraction, split_seed = "folder", str(folder), 0.2, 0

    own = read_own_data(D)
    ours = DataLoader(own_datasets(own, tf, "train"), persistent_workers=workers > 0, **kw)  # type: ignore[arg-type]
    _epoch(ours, device)
    n, t = _epoch(ours, device)
    out["workers_ips"] = n / t

    start = time.perf_counter()
    images = decode_images(own_datasets(own, None, "train"), size, max(1, workers))
    labels = np.asarray([y for _, y in own.train])
    cached = DeviceLoader(
        images,
        labels,
        batch,
        device=device,
        size=size,
        crop="resized",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    decode_s = time.perf_counter() - start
    cached.set_epoch(0)
    n0, t0 = _epoch(cached, device)
    cached.set_epoch(1)
    n, t = _epoch(cached, device)
    out.update(
        cache_first_epoch_ips=n0 / (t0 + decode_s),
        cache_decode_s=decode_s,
        cache_ips=n / t,
    )
    out["ratio_workers"] = out["workers_ips"] / out["torchvision_ips"]
    out["ratio_cache"] = out["cache_ips"] / out["torchvision_ips"]
    out["ratio_cache_first_epoch"] = out["cache_first_epoch_ips"] / out["torchvision_ips"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--sizes", default="64,224")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--folder", type=Path, default=None, help="an existing folder (per size)")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, {args.images} images, {args.workers} workers, batch {args.batch_size}")
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            folder = args.folder or Path(tmp)
            if args.folder is None:
                make_folder(folder, args.images, size)
            r = measure(folder, size, args.workers, args.batch_size, device)
        print(
            f"{size:>4} px  torchvision {r['torchvision_ips']:8.0f} img/s | workers "
            f"{r['workers_ips']:8.0f} img/s (x{r['ratio_workers']:.2f}) | cache from epoch 2 "
            f"{r['cache_ips']:8.0f} img/s (x{r['ratio_cache']:.2f}); cache epoch 1 incl. "
            f"decode {r['cache_decode_s']:.1f} s: {r['cache_first_epoch_ips']:.0f} img/s "
            f"(x{r['ratio_cache_first_epoch']:.2f})"
        )


if __name__ == "__main__":
    main()
