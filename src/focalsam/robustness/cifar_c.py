"""The released CIFAR-10-C folder layout: ``ROOT/labels.npy`` and ``ROOT/<corruption>.npy``.

Each corruption file stacks the ``n`` test images once per severity 1..5: a uint8 array of
shape ``(5 n, H, W, C)`` whose rows ``(s - 1) n .. s n - 1`` are severity ``s``;
``labels.npy`` holds the ``n`` test labels five times over. Every file is checked from its
header before any image is read, so a damaged last file fails before the first evaluation.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from focalsam.data.errors import DataError

__all__ = ["SEVERITIES", "CifarCFolder", "open_cifar_c"]

#: the severities one CIFAR-10-C file stacks
SEVERITIES = 5
_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class CifarCFolder:
    """A checked CIFAR-10-C folder: each present corruption's memory-mapped images of
    shape ``(5 n, H, W, C)`` and the corruptions asked for but absent, with the reason."""

    images: dict[str, np.ndarray]
    skipped: dict[str, str]

    def severity(self, corruption: str, severity: int) -> np.ndarray:
        """The ``n`` images of ``corruption`` at ``severity`` (1..5), read into memory."""
        stacked = self.images[corruption]
        n = stacked.shape[0] // SEVERITIES
        return np.ascontiguousarray(stacked[(severity - 1) * n : severity * n])


def open_cifar_c(
    root: Path, wanted: list[str], test_labels: np.ndarray, image_shape: tuple[int, ...]
) -> CifarCFolder:
    """Check ``root/labels.npy`` against this run's ``test_labels`` and every present
    ``root/<corruption>.npy`` against ``(5 n, *image_shape)`` uint8, from the headers;
    a :class:`DataError` naming the first file that is not what is expected."""
    n = len(test_labels)
    _check_labels(root / "labels.npy", np.asarray(test_labels))
    expected = (SEVERITIES * n, *image_shape)
    images: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    for name in wanted:
        path = root / f"{name}.npy"
        if not path.is_file():
            skipped[name] = f"{path} not found"
            continue
        what = (
            f"a .npy array of uint8 images of shape {expected} (this run's {n} test images "
            f"of {image_shape}, once per severity 1..{SEVERITIES})"
        )
        array = _open_npy(path, what)
        if array.dtype != np.uint8 or array.shape != expected:
            raise DataError(f"{path} holds {array.dtype} of shape {array.shape}; expected {what}")
        images[name] = array
    if not images:
        raise DataError(f"{root} holds none of the corruptions asked for ({', '.join(wanted)})")
    return CifarCFolder(images, skipped)


def _check_labels(path: Path, test_labels: np.ndarray) -> None:
    n = len(test_labels)
    what = (
        f"a .npy array of {SEVERITIES * n} integer labels (this run's {n} test labels, once "
        f"per severity 1..{SEVERITIES})"
    )
    array = _open_npy(path, what)
    if not np.issubdtype(array.dtype, np.integer) or array.shape != (SEVERITIES * n,):
        raise DataError(f"{path} holds {array.dtype} of shape {array.shape}; expected {what}")
    blocks = np.asarray(array).reshape(SEVERITIES, n)
    if not (blocks == test_labels[None, :]).all():
        raise DataError(
            f"{path} does not match this run's test labels ({n} images, once per severity "
            f"1..{SEVERITIES}): is it the -C copy of this dataset?"
        )


def _open_npy(path: Path, what: str) -> Any:
    """The array in ``path``, memory-mapped once its header is read and its size checked:
    not a pickle, no object dtype, not cut short; one :class:`DataError` line otherwise."""
    try:
        with path.open("rb") as f:
            head = f.read(len(_MAGIC))
            if head != _MAGIC:
                raise DataError(f"{path} is {_kind(head)}; expected {what}")
            f.seek(0)
            shape, dtype = _header(f, path, what)
            data_bytes = os.fstat(f.fileno()).st_size - f.tell()
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror or exc}); expected {what}") from None
    if dtype.hasobject:
        raise DataError(
            f"{path} holds Python objects (a pickled object array), which are never loaded; "
            f"expected {what}"
        )
    needed = math.prod(shape) * dtype.itemsize
    if data_bytes < needed:
        raise DataError(
            f"{path} is truncated: its header promises {dtype} of shape {shape} "
            f"({needed} bytes) but the file holds {data_bytes}; expected {what}"
        )
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} cannot be read as .npy ({exc}); expected {what}") from None


def _header(f: BinaryIO, path: Path, what: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """Shape and dtype from a .npy header (format 1.0 or 2.0, the ones numpy writes for
    plain arrays), leaving ``f`` at the first byte of data."""
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    try:
        version = np.lib.format.read_magic(f)
        read = readers.get(version)
        if read is not None:
            shape, _fortran_order, dtype = read(f)
    except ValueError as exc:
        raise DataError(f"{path} has a damaged .npy header ({exc}); expected {what}") from None
    if read is None:
        raise DataError(
            f"{path} is a .npy file of format version {version[0]}.{version[1]}, not 1.0 "
            f"or 2.0; expected {what}"
        )
    return tuple(shape), dtype


def _kind(head: bytes) -> str:
    """What a file that is not a .npy file looks like, from its first bytes."""
    if not head:
        return "empty, not a .npy file"
    if head[:1] == b"\x80":
        return "a Python pickle, not a .npy file (pickles are never loaded)"
    if head[:2] == b"PK":
        return "a zip archive (.npz?), not a .npy file"
    return "not a .npy file (it does not start with the .npy magic bytes)"
