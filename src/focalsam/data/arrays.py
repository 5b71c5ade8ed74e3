"""In-memory image datasets: uint8 images ``(N, H, W, C)`` and int64 labels in numpy arrays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from focalsam.data.profiles import LongTailSubsets, class_counts
from focalsam.errors import DataError

if TYPE_CHECKING:
    from typing_extensions import Self  # Python 3.10 has no typing.Self

__all__ = ["ArrayDataset"]


class ArrayDataset(LongTailSubsets, Dataset[tuple[Any, int]]):
    """Images held in memory as a uint8 array ``(N, H, W, C)`` with int64 labels ``(N,)``.

    ``dataset[i]`` returns ``(image, label)``: the raw ``(H, W, C)`` uint8 array when
    ``transform`` is None, else ``transform(PIL.Image)`` (needs Pillow). For fast training on
    a device use :class:`focalsam.data.DeviceLoader` on ``images`` and ``labels`` instead.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        images = np.asarray(images)
        labels_arr = np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise DataError(
                f"images must be a uint8 array of shape (N, H, W, C), got dtype {images.dtype} "
                f"and shape {images.shape}"
            )
        if labels_arr.shape != (images.shape[0],):
            raise DataError(
                f"labels must have shape ({images.shape[0]},) to match the images, "
                f"got {labels_arr.shape}"
            )
        if class_names is not None and num_classes is None:
            num_classes = len(class_names)
        counts = class_counts(labels_arr, num_classes)  # validates the label range
        self.images = images
        self.labels = labels_arr.astype(np.int64, copy=False)
        self.num_classes = len(counts)
        if class_names is not None and len(class_names) != self.num_classes:
            raise DataError(f"got {len(class_names)} class names for {self.num_classes} classes")
        self.class_names = list(class_names) if class_names is not None else None
        self.transform = transform

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.images[index]
        label = int(self.labels[index])
        if self.transform is None:
            return img, label
        from PIL import Image

        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        return self.transform(pil), label

    def subset(self, indices: Sequence[int] | np.ndarray) -> Self:
        """The samples at ``indices`` (a copy), same classes and transform."""
        idx = np.asarray(indices, dtype=np.int64)
        return type(self)(
            self.images[idx], self.labels[idx], self.num_classes, self.class_names, self.transform
        )

    def tensors(
        self, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` as torch tensors: uint8 ``(N, H, W, C)`` and int64 ``(N,)``."""
        return (
            torch.from_numpy(np.ascontiguousarray(self.images)).to(device),
            torch.from_numpy(self.labels).to(device),
        )

    def __repr__(self) -> str:
        h, w, c = self.images.shape[1:]
        return (
            f"ArrayDataset(n={len(self)}, classes={self.num_classes}, image={h}x{w}x{c}, "
            f"counts max/min={int(self.class_counts.max(initial=0))}/"
            f"{int(self.class_counts.min(initial=0))})"
        )
