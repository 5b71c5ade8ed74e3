"""Image datasets read from disk: ImageNet-LT / iNaturalist-2018 text lists, image folders.

A list file has one ``relative/path label`` per line (the label is the last whitespace-separated
field, so paths may contain spaces); paths are relative to an image root. Decoding uses Pillow
(the ``vision`` extra); images are converted to RGB.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from torch.utils.data import Dataset

from focalsam.data.errors import DataError, DataNotFoundError, ImageDecodeError
from focalsam.data.profiles import LongTailSubsets, Profile, class_counts

if TYPE_CHECKING:
    from typing_extensions import Self  # Python 3.10 has no typing.Self

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageListDataset",
    "image_folder_lt",
    "imagenet_lt",
    "inaturalist2018",
    "parse_image_list",
    "verify_images",
]

PathLike = str | os.PathLike[str]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
_LINE_FORMAT = "expected 'relative/path label' with an integer label"
_LABEL = re.compile(r"[+-]?[0-9]+")


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise DataNotFoundError(f"image list not found: {path}; {_LINE_FORMAT} per line")
    if not path.is_file():
        raise DataError(f"image list {path} is not a file; {_LINE_FORMAT} per line")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read image list {path}: {e.strerror or e}") from e
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is not part of the first path
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}:{lineno}: not UTF-8 text (byte {e.start}); {_LINE_FORMAT} per line"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def parse_image_list(
    list_file: PathLike, num_classes: int | None = None
) -> list[tuple[str, int, int]]:
    """Entries ``(relative_path, label, line_number)`` of a ``path label`` list file.

    Blank lines are skipped. A missing file raises ``DataNotFoundError`` (a
    ``FileNotFoundError``); a line that does not parse, a negative label, a label
    ``>= num_classes`` (when given), an unreadable or empty list raise ``DataError`` naming the
    file and the line number.
    """
    path = Path(list_file)
    entries: list[tuple[str, int, int]] = []
    for lineno, raw in enumerate(_read_lines(path), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not _LABEL.fullmatch(parts[1]):
            shown = repr(line) if len(line) <= 80 else repr(line[:77] + "...")
            raise DataError(f"{path}:{lineno}: cannot parse {shown}: {_LINE_FORMAT}")
        label = int(parts[1])
        if label < 0 or (num_classes is not None and label >= num_classes):
            expected = f"0 <= label < {num_classes}" if num_classes is not None else "label >= 0"
            raise DataError(f"{path}:{lineno}: label {label} is out of range: expected {expected}")
        entries.append((parts[0], label, lineno))
    if not entries:
        raise DataError(f"{path}: the image list is empty; {_LINE_FORMAT} per line")
    return entries


def _where(origin: str | None) -> str:
    return f" (listed at {origin})" if origin else ""


def _load_rgb(path: Path, origin: str | None) -> Any:
    from PIL import Image

    if not path.is_file():
        raise DataNotFoundError(f"image not found: {path}{_where(origin)}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as e:  # whatever Pillow raises on a damaged or foreign file
        raise ImageDecodeError(
            f"cannot decode image {path}{_where(origin)}: {type(e).__name__}: {e}"
        ) from e


def _missing_classes(labels: np.ndarray, num_classes: int, source: str) -> None:
    missing = np.flatnonzero(np.bincount(labels, minlength=num_classes)[:num_classes] == 0)
    if missing.size:
        shown = ", ".join(map(str, missing[:10].tolist())) + (", ..." if missing.size > 10 else "")
        raise DataError(
            f"{source}: {missing.size} of classes 0..{num_classes - 1} have no images (classes "
            f"{shown}); expected every class to have training images "
            "(pass require_all_classes=False to accept it)"
        )


class ImageListDataset(LongTailSubsets, Dataset[tuple[Any, int]]):
    """``(image, label)`` pairs from ``root / relative_path``, listed in a file or given directly.

    ``dataset[i]`` is ``(transform(PIL RGB image), label)``, or the PIL image when ``transform``
    is None. A missing image raises ``DataNotFoundError`` (a ``FileNotFoundError``), an
    undecodable one ``ImageDecodeError`` (an ``OSError``), both naming the path and list line,
    also from DataLoader workers. ``check_files=True`` checks that every file exists up front;
    :meth:`verify_images` also decodes them.

    ``require_all_classes``: ``None`` (default) requires an image of every class from 0 to
    the largest label (no gaps), ``True`` of every class ``0 .. num_classes - 1``, ``False``
    accepts classes without images; a missing class raises ``DataError`` naming them.
    """

    def __init__(
        self,
        root: PathLike,
        list_file: PathLike | None = None,
        transform: Callable[[Any], Any] | None = None,
        num_classes: int | None = None,
        *,
        samples: Sequence[tuple[str, int]] | None = None,
        class_names: Sequence[str] | None = None,
        check_files: bool = False,
        require_all_classes: bool | None = None,
    ) -> None:
        if (list_file is None) == (samples is None):
            raise DataError("give exactly one of list_file and samples")
        self.root = Path(root)
        self.list_file = Path(list_file) if list_file is not None else None
        if self.list_file is not None:
            entries = parse_image_list(self.list_file, num_classes)
            self.paths = [e[0] for e in entries]
            labels = [e[1] for e in entries]
            self._origins: list[str] | None = [f"{self.list_file}:{e[2]}" for e in entries]
        else:
            assert samples is not None
            try:
                self.paths = [str(s[0]) for s in samples]
                labels = [int(s[1]) for s in samples]
            except (TypeError, ValueError, IndexError) as e:
                raise DataError(f"samples must be (relative_path, int label) pairs: {e}") from None
            self._origins = None
        if class_names is not None and num_classes is None:
            num_classes = len(class_names)
        self.labels = np.asarray(labels, dtype=np.int64)
        counts = class_counts(self.labels, num_classes)
        self.num_classes = len(counts)
        if class_names is not None and len(class_names) != self.num_classes:
            raise DataError(f"got {len(class_names)} class names for {self.num_classes} classes")
        if require_all_classes is not False:
            upto = self.num_classes if require_all_classes else int(self.labels.max(initial=-1)) + 1
            _missing_classes(self.labels, upto, str(self.list_file or "samples"))
        self.class_names = list(class_names) if class_names is not None else None
        self.transform = transform
        if check_files:
            self.verify_images(decode=False)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        origin = self._origins[index] if self._origins else None
        img = _load_rgb(self.root / self.paths[index], origin)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])

    def verify_images(
        self, *, decode: bool = True, full: bool = False, max_report: int = 5
    ) -> None:
        """:func:`verify_images` on this dataset."""
        verify_images(self, decode=decode, full=full, max_report=max_report)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Self:
        """The entries at ``indices``, same root, classes and transform."""
        idx = np.asarray(indices, dtype=np.int64)
        out = type(self)(
            self.root,
            transform=self.transform,
            num_classes=self.num_classes,
            samples=[(self.paths[i], int(self.labels[i])) for i in idx],
            class_names=self.class_names,
            require_all_classes=False,
        )
        if self._origins is not None:
            out._origins = [self._origins[i] for i in idx]
        return out


_MISSING = "missing"


def _check_image(path: Path, decode: bool, full: bool) -> str | None:
    """``None`` when fine, ``_MISSING``, or why the file does not decode."""
    if not path.is_file():
        return _MISSING
    if not decode:
        return None
    from PIL import Image

    try:
        with Image.open(path) as img:
            if full:
                img.load()
            else:
                img.verify()
    except Exception as e:  # whatever Pillow raises on a damaged or foreign file
        return f"{type(e).__name__}: {e}"
    return None


def verify_images(
    dataset: ImageListDataset,
    *,
    decode: bool = True,
    full: bool = False,
    max_report: int = 5,
    workers: int | None = None,
) -> None:
    """Check every image of ``dataset`` before training; one error lists the bad ones.

    Checks that each file exists and, with ``decode``, that Pillow identifies it and parses
    it with ``Image.verify()``: the header, and for PNG the chunk checksums, without decoding
    pixels (fast, but a JPEG cut short passes). ``full=True`` decodes every image completely
    (``Image.load()``, slower, catches truncated files). Files are checked by ``workers``
    threads (default ``min(16, CPUs)``).

    Raises ``DataNotFoundError`` when files are only missing, else ``ImageDecodeError``; the
    message gives the counts and the first ``max_report`` paths with their list lines, and
    the exception's ``missing`` and ``undecodable`` attributes list them all.
    """
    root, paths, origins = dataset.root, dataset.paths, dataset._origins
    workers = workers or min(16, os.cpu_count() or 1)
    chunks = [range(lo, min(lo + 256, len(paths))) for lo in range(0, len(paths), 256)]

    def check(chunk: range) -> list[tuple[int, str]]:
        results = ((i, _check_image(root / paths[i], decode, full)) for i in chunk)
        return [(i, r) for i, r in results if r is not None]

    with ThreadPoolExecutor(max(1, workers)) as pool:
        bad = [item for part in pool.map(check, chunks) for item in part]
    if not bad:
        return
    named = [(f"{root / paths[i]}{_where(origins[i] if origins else None)}", r) for i, r in bad]
    missing = [name for name, r in named if r == _MISSING]
    undecodable = [f"{name}: {r}" for name, r in named if r != _MISSING]
    source = f"listed in {dataset.list_file}" if dataset.list_file else "of the dataset"
    parts = []
    for label, items in (("missing", missing), ("undecodable", undecodable)):
        if items:
            more = ", ..." if len(items) > max_report else ""
            parts.append(f"{len(items)} {label} ({'; '.join(items[:max_report])}{more})")
    cls = DataNotFoundError if not undecodable else ImageDecodeError
    err = cls(
        f"{len(bad)} of {len(paths)} images {source} under {root} are missing or undecodable: "
        + ", ".join(parts)
    )
    err.missing, err.undecodable = missing, undecodable
    raise err


def _list_dataset(
    root: PathLike,
    split: str,
    list_file: PathLike | None,
    pattern: str,
    num_classes: int,
    transform: Callable[[Any], Any] | Literal["default"] | None,
    splits: Sequence[str],
    require_all_classes: bool | None,
) -> ImageListDataset:
    if split not in splits:
        raise DataError(f"split must be one of {list(splits)}, got {split!r}")
    if list_file is None:
        list_file = Path(root) / pattern.format(split=split)
    if transform == "default":
        from focalsam.data.transforms import imagenet_test_transform, imagenet_train_transform

        transform = imagenet_train_transform() if split == "train" else imagenet_test_transform()
    if split != "train" and require_all_classes is None:
        require_all_classes = False
    return ImageListDataset(
        root, list_file, transform, num_classes, require_all_classes=require_all_classes
    )


def imagenet_lt(
    root: PathLike,
    split: str = "train",
    list_file: PathLike | None = None,
    transform: Callable[[Any], Any] | Literal["default"] | None = "default",
    *,
    require_all_classes: bool | None = None,
) -> ImageListDataset:
    """ImageNet-LT (Liu et al. 2019): 1000 classes, 115.8k train images (1280 ... 5 per class).

    Reads ``list_file`` (default ``root/ImageNet_LT_{split}.txt``, split in train/val/test)
    over ``root``. ``transform="default"`` uses the standard train or test augmentation.
    ``require_all_classes``: the train split by default needs images of every class from 0
    to its largest label, ``True`` of all 1000, ``False`` accepts classes without images
    (other splits: ``False`` by default).
    """
    return _list_dataset(
        root,
        split,
        list_file,
        "ImageNet_LT_{split}.txt",
        1000,
        transform,
        ("train", "val", "test"),
        require_all_classes,
    )


def inaturalist2018(
    root: PathLike,
    split: str = "train",
    list_file: PathLike | None = None,
    transform: Callable[[Any], Any] | Literal["default"] | None = "default",
    *,
    require_all_classes: bool | None = None,
) -> ImageListDataset:
    """iNaturalist 2018: 8142 classes, 437.5k train images (1000 ... 2 per class).

    Reads ``list_file`` (default ``root/iNaturalist18_{split}.txt``, split in train/val);
    ``require_all_classes`` as in :func:`imagenet_lt`.
    """
    return _list_dataset(
        root,
        split,
        list_file,
        "iNaturalist18_{split}.txt",
        8142,
        transform,
        ("train", "val"),
        require_all_classes,
    )


def image_folder_lt(
    root: PathLike,
    imbalance_ratio: float = 1.0,
    profile: Profile = "exp",
    seed: int = 0,
    n_max: int | None = None,
    transform: Callable[[Any], Any] | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> ImageListDataset:
    """An ``root/class_name/image`` folder made long-tailed with the CIFAR-LT profile code.

    Classes are the sub-folders in sorted order; images are the files with an image extension,
    sorted. ``imbalance_ratio=1`` keeps ``n_max`` (default: the smallest class size) per class.
    """
    base = Path(root)
    if not base.is_dir():
        raise DataNotFoundError(f"image folder not found: {base}; expected root/class_name/image")
    exts = tuple(e.lower() for e in extensions)
    samples: list[tuple[str, int]] = []
    try:
        classes = sorted(d.name for d in base.iterdir() if d.is_dir())
        if not classes:
            raise DataError(f"no class sub-folders in {base}: expected root/class_name/image files")
        for label, name in enumerate(classes):
            folder = base / name
            files = sorted(
                f.name for f in folder.iterdir() if f.is_file() and f.suffix.lower() in exts
            )
            if not files:
                raise DataError(f"class folder {folder} holds no images (extensions {exts})")
            samples += [(f"{name}/{f}", label) for f in files]
    except OSError as e:
        raise DataError(f"cannot read image folder {base}: {e}") from e
    full = ImageListDataset(base, transform=transform, samples=samples, class_names=classes)
    return full.long_tailed(imbalance_ratio, profile, seed, n_max)
