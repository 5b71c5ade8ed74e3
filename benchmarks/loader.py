"""Loading + augmenting one epoch of CIFAR-10-LT: DeviceLoader vs DataLoader + torchvision.

    python benchmarks/loader.py [--root DIR] [--device cpu|cuda] [--repeats 3] [--limit N] [--json]

Baseline: ``torch.utils.data.DataLoader`` (``--workers`` processes, 2 by default) over the
uint8 arrays with the per-sample PIL pipeline ``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``. Fast path:
:class:`focalsam.data.DeviceLoader` (the same augmentation, batched on the device). Both
iterate one shuffled epoch at batch size 128; every epoch starts fresh worker processes, as
a DataLoader without ``persistent_workers`` does. The loaders run alternately ``--repeats``
times and the best epoch of each is reported, with their ratio from this same run.

Data: ``--root`` holding ``cifar-10-batches-py``; without it, the offline JPEG copy in
``../shared/data/cifar10`` is unpacked to a temporary folder first (not timed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from focalsam.data import ArrayDataset, DeviceLoader, cifar_lt
from focalsam.data.transforms import cifar_train_transform

SHARED_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_dataloader(ds: ArrayDataset, batch_size: int, workers: int, epoch: int) -> float:
    torch.manual_seed(epoch)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers)
    start = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += x.shape[0]
    elapsed = time.perf_counter() - start
    assert n == len(ds)
    return elapsed


def time_device_loader(loader: DeviceLoader, epoch: int) -> float:
    loader.set_epoch(epoch)
    _sync(loader.device)
    start = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += x.shape[0]
    _sync(loader.device)
    elapsed = time.perf_counter() - start
    assert n == loader.num_samples
    return elapsed


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", type=Path, default=None, help="folder with cifar-10-batches-py")
    p.add_argument("--ratio", type=float, default=100.0, help="imbalance ratio (default 100)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--device", default="cpu", help="device of the fast loader")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--limit", type=int, default=None, help="only the first N images (smoke runs)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)

    tmp = None
    root = args.root or (
        Path(os.environ["FOCALSAM_CIFAR_ROOT"]) if "FOCALSAM_CIFAR_ROOT" in os.environ else None
    )
    if root is None:
        if not (SHARED_CIFAR10 / "make_cifar10.py").is_file():
            p.error(f"no --root given and no offline copy at {SHARED_CIFAR10}")
        tmp = tempfile.TemporaryDirectory(prefix="focalsam-cifar10-")
        root = Path(tmp.name)
        subprocess.run(
            [sys.executable, str(SHARED_CIFAR10 / "make_cifar10.py"), str(root)],
            check=True,
            capture_output=True,
        )
    try:
        train = cifar_lt(root, "cifar10", imbalance_ratio=args.ratio)
    finally:
        if tmp is not None:
            tmp.cleanup()

    if args.limit is not None:
        limit = slice(0, args.limit)
        train = ArrayDataset(train.images[limit], train.labels[limit], train.num_classes)
    device = torch.device(args.device)
    baseline_ds = ArrayDataset(train.images, train.labels, transform=cifar_train_transform())
    t0 = time.perf_counter()
    fast = DeviceLoader(train.images, train.labels, args.batch_size, device=device, seed=0)
    _sync(device)
    setup_s = time.perf_counter() - t0
    time_device_loader(fast, epoch=-1)  # warm-up (allocator, kernels)

    base_times, fast_times = [], []
    for r in range(args.repeats):
        base_times.append(time_dataloader(baseline_ds, args.batch_size, args.workers, r))
        fast_times.append(time_device_loader(fast, r))
    n = len(train)
    base_ips = n / min(base_times)
    fast_ips = n / min(fast_times)
    result: dict[str, object] = {
        "dataset": f"CIFAR-10-LT (ratio {args.ratio:g})",
        "images_per_epoch": n,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "baseline": f"DataLoader + torchvision ({args.workers} workers)",
        "baseline_images_per_s": round(base_ips),
        "baseline_epoch_s": [round(t, 4) for t in base_times],
        "device_loader": f"DeviceLoader on {device}",
        "device_loader_images_per_s": round(fast_ips),
        "device_loader_epoch_s": [round(t, 4) for t in fast_times],
        "device_loader_setup_s": round(setup_s, 4),
        "speedup": round(fast_ips / base_ips, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['dataset']}: {n} images, batch {args.batch_size}, best of {args.repeats}")
        print(f"  {result['baseline']:<40} {base_ips:>12,.0f} images/s")
        print(f"  {result['device_loader']:<40} {fast_ips:>12,.0f} images/s")
        print(f"  speedup (same run)                       {fast_ips / base_ips:>12.1f}x")
        print(f"  DeviceLoader setup (upload, padding)     {setup_s:>12.3f} s")
    return result


if __name__ == "__main__":
    main()
