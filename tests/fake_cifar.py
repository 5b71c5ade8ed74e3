"""Fake CIFAR folders and archives in the official layout, for the data tests."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np


def dump_pickle(path: Path, obj: dict) -> None:
    # protocol 2 with bytes keys: what Python 2 wrote, read back as bytes keys
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _fake_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def make_fake_cifar10(root: Path, per_batch: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Write ``root/cifar-10-batches-py`` in the official structure; return train data/labels."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    datas, labels = [], []
    for b in range(1, 6):
        data = _fake_images(per_batch, b)
        lab = [(i + b) % 10 for i in range(per_batch)]
        dump_pickle(d / f"data_batch_{b}", {b"batch_label": b"x", b"labels": lab, b"data": data})
        datas.append(data)
        labels += lab
    test = _fake_images(10, 99)
    dump_pickle(d / "test_batch", {b"labels": list(range(10)), b"data": test})
    names = [f"class{i}".encode() for i in range(10)]
    dump_pickle(d / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return np.concatenate(datas), np.array(labels)


def make_fake_cifar100(root: Path, n: int = 200) -> None:
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    fine = [i % 100 for i in range(n)]
    dump_pickle(
        d / "train", {b"data": _fake_images(n, 1), b"fine_labels": fine, b"coarse_labels": [0] * n}
    )
    dump_pickle(d / "test", {b"data": _fake_images(100, 2), b"fine_labels": list(range(100))})
    dump_pickle(d / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})


def make_cifar_archive(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "src"
    make_fake_cifar10(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()
