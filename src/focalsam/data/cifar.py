"""CIFAR-10 / CIFAR-100 from the standard python layout, and their long-tailed versions.

Layout read (the official ``*-python.tar.gz`` archives, extracted):

- ``ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
- ``ROOT/cifar-100-python/{train, test, meta}``

Each file is a pickled dict with ``data`` (uint8, ``(n, 3072)``, channel planes) and
``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100). The pickles are read with a restricted
unpickler that only builds numpy arrays and plain containers (any other global is refused, so
a malicious file runs no code). Every problem is a one-line ``DataError`` naming the file and
how to get a good copy: ``DataNotFoundError`` for missing data, ``DownloadError`` for a failed
download.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import shutil
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from focalsam.data.arrays import ArrayDataset
from focalsam.data.errors import DataError, DataNotFoundError, DownloadError
from focalsam.data.profiles import Profile

__all__ = [
    "CIFAR_SPECS",
    "CifarName",
    "cifar_class_names",
    "cifar_dataset",
    "cifar_lt",
    "download_cifar",
    "find_cifar_dir",
    "load_cifar",
]

CifarName = Literal["cifar10", "cifar100"]
PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class CifarSpec:
    """Where a CIFAR variant lives on disk and online."""

    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    meta_file: str
    names_key: str
    num_classes: int
    url: str
    md5: str

    @property
    def archive(self) -> str:
        return self.url.rsplit("/", 1)[-1]


CIFAR_SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key="labels",
        meta_file="batches.meta",
        names_key="label_names",
        num_classes=10,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
    ),
    "cifar100": CifarSpec(
        title="CIFAR-100",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key="fine_labels",
        meta_file="meta",
        names_key="fine_label_names",
        num_classes=100,
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
    ),
}


def _spec(name: str) -> CifarSpec:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in CIFAR_SPECS:
        raise DataError(f"unknown CIFAR name {name!r}; expected one of {sorted(CIFAR_SPECS)}")
    return CIFAR_SPECS[key]


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only reconstructs numpy arrays (plus builtin containers)."""

    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR file")


def _layout(spec: CifarSpec, root: Path) -> str:
    files = (*spec.train_files, *spec.test_files, spec.meta_file)
    shown = ", ".join(files) if len(files) <= 3 else f"{files[0]} ... {', '.join(files[-3:])}"
    return f"{root / spec.folder}/{{{shown}}}"


def _how_to_get(spec: CifarSpec, root: Path) -> str:
    name = next(k for k, v in CIFAR_SPECS.items() if v is spec)
    return (
        f"Get it with download=True (or focalsam.data.download_cifar({str(root)!r}, {name!r})), "
        f"or by hand: download {spec.url} (md5 {spec.md5}) and extract it into {root}, "
        f"which gives {_layout(spec, root)}."
    )


def find_cifar_dir(root: PathLike, name: str = "cifar10") -> Path:
    """The extracted folder (e.g. ``ROOT/cifar-10-batches-py``); ``root`` may be that folder.

    Raises :class:`~focalsam.data.errors.DataNotFoundError` (a ``FileNotFoundError``) naming
    the path looked at and how to get the data.
    """
    spec = _spec(name)
    root = Path(root).expanduser()
    candidates = [root / spec.folder] + ([root] if root.name == spec.folder else [])
    for cand in candidates:
        if cand.is_dir():
            return cand
    raise DataNotFoundError(
        f"{spec.title} not found: looked for {root / spec.folder}. {_how_to_get(spec, root)}"
    )


def _read_pickle(path: Path, spec: CifarSpec) -> dict[str, Any]:
    remedy = _how_to_get(spec, path.parent.parent)
    if not path.is_file():
        raise DataNotFoundError(
            f"{spec.title} file missing: {path}. The folder {path.parent} is incomplete; {remedy}"
        )
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except OSError as e:
        raise DataError(f"cannot read {spec.title} file {path}: {e.strerror or e}") from e
    except (EOFError, pickle.UnpicklingError) as e:
        what = "could not unpickle it"
        if isinstance(e, EOFError) or "truncated" in str(e):
            what = "the file is truncated (cut short), could not unpickle it"
        raise DataError(
            f"malformed {spec.title} file {path}: {what} ({e or type(e).__name__}). {remedy}"
        ) from e
    except Exception as e:  # any other failure of the pickle machinery on a damaged file
        raise DataError(
            f"malformed {spec.title} file {path}: could not unpickle it "
            f"({type(e).__name__}: {e}). {remedy}"
        ) from e
    if not isinstance(obj, dict):
        raise DataError(
            f"malformed {spec.title} file {path}: expected a dict, got {type(obj).__name__}"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _as_array(value: Any, path: Path, spec: CifarSpec, key: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as e:
        raise DataError(
            f"malformed {spec.title} file {path}: {key!r} is not an array ({e})"
        ) from None


def _read_batch(path: Path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    d = _read_pickle(path, spec)
    for key in ("data", spec.label_key):
        if key not in d:
            raise DataError(
                f"malformed {spec.title} file {path}: no {key!r} entry (found {sorted(d)})"
            )
    data = _as_array(d["data"], path, spec, "data")
    labels = _as_array(d[spec.label_key], path, spec, spec.label_key)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"malformed {spec.title} file {path}: 'data' should be uint8 of shape (n, 3072), "
            f"got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],) or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(
            f"malformed {spec.title} file {path}: {spec.label_key!r} should hold "
            f"{data.shape[0]} integer labels, got {labels.dtype} {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(
            f"malformed {spec.title} file {path}: labels should lie in [0, {spec.num_classes}), "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int64)


def load_cifar(
    root: PathLike, name: str = "cifar10", train: bool = True, download: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 32, 32, 3)`` uint8 (HWC) and labels ``(N,)`` int64, in file order.

    ``download=True`` fetches and extracts the official archive when the folder is missing.
    """
    spec = _spec(name)
    if download:
        try:
            find_cifar_dir(root, name)
        except FileNotFoundError:
            download_cifar(root, name)
    folder = find_cifar_dir(root, name)
    parts = [
        _read_batch(folder / f, spec) for f in (spec.train_files if train else spec.test_files)
    ]
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    labels = np.concatenate([p[1] for p in parts])
    return images, labels


def cifar_class_names(root: PathLike, name: str = "cifar10") -> list[str]:
    """Class names from the ``meta`` file, in label order."""
    spec = _spec(name)
    path = find_cifar_dir(root, name) / spec.meta_file
    d = _read_pickle(path, spec)
    raw = d.get(spec.names_key)
    if not isinstance(raw, list | tuple):
        raise DataError(
            f"malformed {spec.title} file {path}: expected a list {spec.names_key!r} entry, "
            f"got {type(raw).__name__ if spec.names_key in d else 'none'}"
        )
    names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in raw]
    if len(names) != spec.num_classes:
        raise DataError(
            f"malformed {spec.title} file {path}: {len(names)} class names, "
            f"expected {spec.num_classes}"
        )
    return names


def cifar_dataset(
    root: PathLike, name: str = "cifar10", train: bool = True, download: bool = False
) -> ArrayDataset:
    """The full (balanced) train or test set as an :class:`ArrayDataset`."""
    images, labels = load_cifar(root, name, train, download)
    spec = _spec(name)
    folder = find_cifar_dir(root, name)
    names = cifar_class_names(root, name) if (folder / spec.meta_file).is_file() else None
    return ArrayDataset(images, labels, spec.num_classes, names)


def cifar_lt(
    root: PathLike,
    name: str = "cifar10",
    imbalance_ratio: float = 100,
    profile: Profile = "exp",
    seed: int = 0,
    download: bool = False,
) -> ArrayDataset:
    """Long-tailed CIFAR training set as built by Cao et al. (LDAM-DRW).

    ``n_max = N / C`` (5000 or 500); counts from :func:`long_tailed_counts`; images picked by
    :func:`select_long_tailed` with ``seed`` (0 reproduces the published subsets), concatenated
    class by class. CIFAR-10 at ratio 100 has 12,406 images, CIFAR-100 at ratio 100 has 10,847.
    The matching test set is the balanced one: ``cifar_dataset(root, name, train=False)``.
    """
    full = cifar_dataset(root, name, train=True, download=download)
    return full.long_tailed(imbalance_ratio, profile, seed, n_max=len(full) // full.num_classes)


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _safe_extract(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
                return
            base = dest.resolve()
            for member in tar.getmembers():
                target = (dest / member.name).resolve()
                inside = target == base or base in target.parents
                if not inside or member.issym() or member.islnk():
                    raise DataError(f"refusing to extract {member.name!r} from {archive}")
            tar.extractall(dest)  # noqa: S202  (members checked above)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise DataError(
            f"cannot extract {archive}: {e or type(e).__name__}. Expected a .tar.gz archive; "
            "delete it and download it again"
        ) from e
    except OSError as e:
        raise DataError(f"cannot extract {archive} into {dest}: {e}") from e


def download_cifar(
    root: PathLike,
    name: str = "cifar10",
    url: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download the archive into ``root``, check its md5, extract it; return the data folder.

    ``url`` and ``md5`` default to the official ones (``CIFAR_SPECS[name]``). An archive already
    in ``root`` with the right md5 is not downloaded again. A failed download (no network,
    HTTP error, timeout) raises :class:`~focalsam.data.errors.DownloadError` (an ``OSError``)
    saying how to get the data by hand; a wrong checksum raises ``DataError`` and removes the
    downloaded file.
    """
    spec = _spec(name)
    url = url or spec.url
    md5 = (md5 or spec.md5).lower()
    root = Path(root).expanduser()
    by_hand = (
        f"Download {url} by hand (md5 {md5}) on a machine with network access and extract it "
        f"into {root}, which gives {_layout(spec, root)}."
    )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data folder {root}: {e.strerror or e}") from e
    archive = root / url.rsplit("/", 1)[-1]
    if not (archive.is_file() and _md5(archive) == md5):
        part = archive.with_name(archive.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
                shutil.copyfileobj(resp, out, 1 << 20)
        except (OSError, http.client.HTTPException, ValueError) as e:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"could not download {spec.title} from {url}: {_reason(e)}. {by_hand}"
            ) from e
        got = _md5(part)
        if got != md5:
            part.unlink(missing_ok=True)
            raise DataError(
                f"checksum mismatch for {url}: md5 {got}, expected {md5}; the file was removed "
                f"(an interrupted or altered download). {by_hand}"
            )
        part.replace(archive)
    _safe_extract(archive, root)
    return find_cifar_dir(root, name)


def _reason(e: BaseException) -> str:
    """The useful part of a urllib error: ``URLError.reason`` is the socket error."""
    reason = getattr(e, "reason", None)
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
