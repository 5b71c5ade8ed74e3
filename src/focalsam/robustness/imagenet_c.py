"""The released ImageNet-C folder layout: ``ROOT/corruption/severity/wnid/image.JPEG``.

Labels come from the run's own list file (ImageNet-LT: ``train/n01440764/n01440764_10026.JPEG
0``), matched to ImageNet-C's class folders by WordNet id. ImageNet-C images are already
224x224 centre crops of the ImageNet validation set (50 per class and cell).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from focalsam.data.errors import DataError, DataNotFoundError, ImageDecodeError
from focalsam.data.lists import IMAGE_EXTENSIONS, parse_image_list
from focalsam.errors import InputError
from focalsam.robustness.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS

__all__ = [
    "ImageNetCDataset",
    "ImageNetCSamples",
    "imagenet_c_corruptions",
    "imagenet_c_samples",
    "wnid_labels_from_list",
]

PathLike = str | os.PathLike[str]
_WNID = re.compile(r"n\d{8}")
_LAYOUT = "expected ROOT/corruption/severity/wnid/image.JPEG"


def _shown(items: Sequence[str], k: int = 5) -> str:
    return ", ".join(items[:k]) + (", ..." if len(items) > k else "")


def wnid_labels_from_list(source: PathLike | Any) -> dict[str, int]:
    """``wnid -> label`` of a ``path label`` list file or a dataset with ``paths``/``labels``.

    The wnid of an entry is the last folder of its path that looks like ``n`` + 8 digits.
    An entry without one, a wnid with two labels or a label with two wnids raises
    ``DataError`` naming the entry. The map is ordered by label.
    """
    if isinstance(source, str | os.PathLike):
        entries = [(p, label, f"{source}:{line}") for p, label, line in parse_image_list(source)]
    else:
        paths, labels = getattr(source, "paths", None), getattr(source, "labels", None)
        if paths is None or labels is None:
            raise InputError(
                f"expected a list file or a dataset with .paths and .labels, got "
                f"{type(source).__name__}"
            )
        entries = [
            (str(p), int(y), f"entry {i} ({p})") for i, (p, y) in enumerate(zip(paths, labels))
        ]
    by_wnid: dict[str, int] = {}
    by_label: dict[int, str] = {}
    for path, label, where in entries:
        wnids = [part for part in re.split(r"[/\\]", path)[:-1] if _WNID.fullmatch(part)]
        if not wnids:
            raise DataError(
                f"{where}: no wnid folder (n + 8 digits) in {path!r}; expected paths such as "
                "'train/n01440764/n01440764_10026.JPEG'"
            )
        wnid = wnids[-1]
        if by_wnid.setdefault(wnid, label) != label:
            raise DataError(f"{where}: wnid {wnid} has label {label} here, {by_wnid[wnid]} before")
        if by_label.setdefault(label, wnid) != wnid:
            raise DataError(f"{where}: label {label} is {wnid} here, {by_label[label]} before")
    if not by_wnid:
        raise DataError(f"{source}: no entries, so no wnids")
    return dict(sorted(by_wnid.items(), key=lambda item: (item[1], item[0])))


@dataclass(frozen=True)
class ImageNetCSamples:
    """The images of one (corruption, severity) cell for the run's classes."""

    folder: Path
    samples: list[tuple[Path, int]]
    #: wnid folders present in ImageNet-C but not among the run's classes (not evaluated)
    ignored_wnids: tuple[str, ...] = field(default=())

    def note(self) -> str:
        """One line for the report, e.g. ``50000 images of 1000 classes in ROOT/fog/3``."""
        classes = len({label for _, label in self.samples})
        text = f"{len(self.samples)} images of {classes} classes in {self.folder}"
        if self.ignored_wnids:
            text += f"; {len(self.ignored_wnids)} other class folders ignored"
            text += f" ({_shown(self.ignored_wnids, 3)})"
        return text


def _subdirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def imagenet_c_samples(
    root: PathLike, corruption: str, severity: int, wnid_to_label: dict[str, int]
) -> ImageNetCSamples:
    """Every image of ``root/corruption/severity/<wnid>`` for the wnids of ``wnid_to_label``.

    Sorted by (wnid, file name). A missing root, corruption folder, severity folder or class
    folder, or an empty class folder, raises ``DataError`` (``DataNotFoundError`` for missing
    ones) naming it; class folders of other wnids are ignored and listed in the result.
    """
    if not wnid_to_label:
        raise InputError("wnid_to_label is empty: no classes to read")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise InputError(f"ImageNet-C severities are 1..5, got {severity!r}")
    if not corruption or Path(corruption).name != corruption or corruption in (".", ".."):
        raise InputError(f"corruption must be a folder name, got {corruption!r}")
    base = Path(root)
    cdir, sdir = base / corruption, base / corruption / str(severity)
    try:
        if not base.is_dir():
            raise DataNotFoundError(f"ImageNet-C folder not found: {base}; {_LAYOUT}")
        if not cdir.is_dir():
            present = imagenet_c_corruptions(base)
            raise DataNotFoundError(
                f"ImageNet-C corruption folder not found: {cdir} (present: "
                f"{_shown(present, 20) or 'none'}); {_LAYOUT}"
            )
        if not sdir.is_dir():
            raise DataNotFoundError(
                f"ImageNet-C severity folder not found: {sdir} (present: "
                f"{', '.join(_subdirs(cdir)) or 'none'}); {_LAYOUT}"
            )
        present_wnids = set(_subdirs(sdir))
        missing = sorted(set(wnid_to_label) - present_wnids)
        if missing:
            raise DataNotFoundError(
                f"{len(missing)} of the run's {len(wnid_to_label)} classes have no folder in "
                f"{sdir}: {_shown(missing)}"
            )
        exts = tuple(e.lower() for e in IMAGE_EXTENSIONS)
        samples: list[tuple[Path, int]] = []
        for wnid in sorted(wnid_to_label):
            folder = sdir / wnid
            files = sorted(f for f in folder.iterdir() if f.suffix.lower() in exts and f.is_file())
            if not files:
                raise DataError(f"ImageNet-C class folder {folder} holds no images")
            samples += [(f, int(wnid_to_label[wnid])) for f in files]
    except OSError as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot read ImageNet-C folder {sdir}: {e}") from e
    ignored = tuple(sorted(present_wnids - set(wnid_to_label)))
    return ImageNetCSamples(sdir, samples, ignored)


def imagenet_c_corruptions(root: PathLike) -> list[str]:
    """The corruption folders under ``root``: the standard 15 in order, then extras (the four
    validation ones in imagecorruptions' order, then any others sorted)."""
    base = Path(root)
    if not base.is_dir():
        raise DataNotFoundError(f"ImageNet-C folder not found: {base}; {_LAYOUT}")
    try:
        present = set(_subdirs(base))
    except OSError as e:
        raise DataError(f"cannot read ImageNet-C folder {base}: {e}") from e
    known = CORRUPTIONS + EXTRA_CORRUPTIONS
    return [c for c in known if c in present] + sorted(present - set(known))


class ImageNetCDataset(Dataset[tuple[Any, int]]):
    """``(transform(PIL RGB image), label)`` for ``(path, label)`` samples.

    A missing file raises ``DataNotFoundError``, an undecodable one ``ImageDecodeError``
    (both ``DataError``), naming the path, also from DataLoader workers.
    """

    def __init__(
        self,
        samples: Sequence[tuple[PathLike, int]] | ImageNetCSamples,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        pairs = samples.samples if isinstance(samples, ImageNetCSamples) else samples
        self.paths = [Path(p) for p, _ in pairs]
        self.labels = np.asarray([int(y) for _, y in pairs], dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        path = self.paths[index]
        if not path.is_file():
            raise DataNotFoundError(f"ImageNet-C image not found: {path}")
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except Exception as e:  # whatever Pillow raises on a damaged or foreign file
            raise ImageDecodeError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e
        return (self.transform(rgb) if self.transform is not None else rgb), int(self.labels[index])
