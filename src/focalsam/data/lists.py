"""Image datasets read from disk: ImageNet-LT / iNaturalist-2018 text lists, image folders.

A list file has one ``relative/path label`` per line (the label is the last whitespace-separated
field, so paths may contain spaces); paths are relative to an image root. Decoding uses Pillow
(the ``vision`` extra); images are converted to RGB.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from torch.utils.data import Dataset

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
]

PathLike = str | os.PathLike[str]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def parse_image_list(
    list_file: PathLike, num_classes: int | None = None
) -> list[tuple[str, int, int]]:
    """Entries ``(relative_path, label, line_number)`` of a ``path label`` list file.

    Blank lines are skipped. A line that does not parse, a negative label, or (when
    ``num_classes`` is given) a label ``>= num_classes`` raises ``ValueError`` naming the file
    and the line number.
    """
    path = Path(list_file)
    if not path.is_file():
        raise FileNotFoundError(f"image list not found: {path}")
    entries: list[tuple[str, int, int]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            try:
                if len(parts) != 2:
                    raise ValueError
                label = int(parts[1])
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: cannot parse {line!r}: expected 'relative/path label' "
                    "with an integer label"
                ) from None
            if label < 0 or (num_classes is not None and label >= num_classes):
                expected = (
                    f"0 <= label < {num_classes}" if num_classes is not None else "label >= 0"
                )
                raise ValueError(
                    f"{path}:{lineno}: label {label} is out of range: expected {expected}"
                )
            entries.append((parts[0], label, lineno))
    if not entries:
        raise ValueError(f"{path}: the image list is empty")
    return entries


def _load_rgb(path: Path, origin: str | None) -> Any:
    from PIL import Image, UnidentifiedImageError

    where = f" (listed at {origin})" if origin else ""
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}{where}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise OSError(f"cannot decode image {path}{where}: {e}") from e


class ImageListDataset(LongTailSubsets, Dataset[tuple[Any, int]]):
    """``(image, label)`` pairs from ``root / relative_path``, listed in a file or given directly.

    ``dataset[i]`` is ``(transform(PIL RGB image), label)``, or the PIL image when ``transform``
    is None. A missing image raises ``FileNotFoundError`` naming its path (and the list line);
    ``check_files=True`` checks every file up front instead.
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
    ) -> None:
        if (list_file is None) == (samples is None):
            raise ValueError("give exactly one of list_file and samples")
        self.root = Path(root)
        self.list_file = Path(list_file) if list_file is not None else None
        if self.list_file is not None:
            entries = parse_image_list(self.list_file, num_classes)
            self.paths = [e[0] for e in entries]
            labels = [e[1] for e in entries]
            self._origins: list[str] | None = [f"{self.list_file}:{e[2]}" for e in entries]
        else:
            assert samples is not None
            self.paths = [str(s[0]) for s in samples]
            labels = [int(s[1]) for s in samples]
            self._origins = None
        if class_names is not None and num_classes is None:
            num_classes = len(class_names)
        self.labels = np.asarray(labels, dtype=np.int64)
        counts = class_counts(self.labels, num_classes)
        self.num_classes = len(counts)
        self.class_names = list(class_names) if class_names is not None else None
        self.transform = transform
        if check_files:
            for i, rel in enumerate(self.paths):
                p = self.root / rel
                if not p.is_file():
                    where = f" (listed at {self._origins[i]})" if self._origins else ""
                    raise FileNotFoundError(f"image not found: {p}{where}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        origin = self._origins[index] if self._origins else None
        img = _load_rgb(self.root / self.paths[index], origin)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])

    def subset(self, indices: Sequence[int] | np.ndarray) -> Self:
        """The entries at ``indices``, same root, classes and transform."""
        idx = np.asarray(indices, dtype=np.int64)
        out = type(self)(
            self.root,
            transform=self.transform,
            num_classes=self.num_classes,
            samples=[(self.paths[i], int(self.labels[i])) for i in idx],
            class_names=self.class_names,
        )
        if self._origins is not None:
            out._origins = [self._origins[i] for i in idx]
        return out


def _list_dataset(
    root: PathLike,
    split: str,
    list_file: PathLike | None,
    pattern: str,
    num_classes: int,
    transform: Callable[[Any], Any] | Literal["default"] | None,
    splits: Sequence[str],
) -> ImageListDataset:
    if list_file is None:
        if split not in splits:
            raise ValueError(f"split must be one of {list(splits)}, got {split!r}")
        list_file = Path(root) / pattern.format(split=split)
    if transform == "default":
        from focalsam.data.transforms import imagenet_test_transform, imagenet_train_transform

        transform = imagenet_train_transform() if split == "train" else imagenet_test_transform()
    return ImageListDataset(root, list_file, transform, num_classes)


def imagenet_lt(
    root: PathLike,
    split: str = "train",
    list_file: PathLike | None = None,
    transform: Callable[[Any], Any] | Literal["default"] | None = "default",
) -> ImageListDataset:
    """ImageNet-LT (Liu et al. 2019): 1000 classes, 115.8k train images (1280 ... 5 per class).

    Reads ``list_file`` (default ``root/ImageNet_LT_{split}.txt``, split in train/val/test)
    over ``root``. ``transform="default"`` uses the standard train or test augmentation.
    """
    return _list_dataset(
        root, split, list_file, "ImageNet_LT_{split}.txt", 1000, transform, ("train", "val", "test")
    )


def inaturalist2018(
    root: PathLike,
    split: str = "train",
    list_file: PathLike | None = None,
    transform: Callable[[Any], Any] | Literal["default"] | None = "default",
) -> ImageListDataset:
    """iNaturalist 2018: 8142 classes, 437.5k train images (1000 ... 2 per class).

    Reads ``list_file`` (default ``root/iNaturalist18_{split}.txt``, split in train/val).
    """
    return _list_dataset(
        root, split, list_file, "iNaturalist18_{split}.txt", 8142, transform, ("train", "val")
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
        raise FileNotFoundError(f"image folder not found: {base}")
    classes = sorted(d.name for d in base.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"no class sub-folders in {base}: expected root/class_name/image files")
    exts = tuple(e.lower() for e in extensions)
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        files = sorted(
            f.name for f in (base / name).iterdir() if f.is_file() and f.suffix.lower() in exts
        )
        if not files:
            raise ValueError(f"class folder {base / name} holds no images (extensions {exts})")
        samples += [(f"{name}/{f}", label) for f in files]
    full = ImageListDataset(base, transform=transform, samples=samples, class_names=classes)
    return full.long_tailed(imbalance_ratio, profile, seed, n_max)
