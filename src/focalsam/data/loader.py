"""A fast loader for image sets that fit in memory (CIFAR): everything stays on the device.

The uint8 images are zero-padded once and moved to the training device (packed as one
int32 word per pixel), and every batch is augmented there with a single gather: random crop (``padding`` pixels of zeros on each side,
as ``RandomCrop(32, padding=4)``), horizontal flip with probability 1/2, then
``x = (pixel / 255 - mean) / std``. No per-sample Python, no worker processes.

The permutation, crop offsets and flips of an epoch are drawn on the CPU from a generator
seeded by ``(seed, epoch)``, so the batches are the same on any device and for any
``world_size`` split (the ranks' shards together are the single-process epoch).

At another resolution (``size``, e.g. 224 px for CLIP) the loader resamples instead of
padding: ``crop="resized"`` is ``Resize(resize)`` then ``RandomResizedCrop(size)`` (boxes drawn
in the resized image, as torchvision) and flip; evaluation is ``Resize(resize)`` then
``CenterCrop(size)``. Each sample is one small matrix per axis applied to the source image
(:mod:`focalsam.data.resample`), batched on the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from focalsam.data.resample import (
    random_resized_crop_boxes,
    resample_crops,
    resampling_plan,
)
from focalsam.data.samplers import class_balanced_indices, epoch_generator
from focalsam.errors import DataError

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "DeviceLoader", "Sampling"]

#: Per-channel mean and std used by the LDAM-DRW / Focal-SAM CIFAR recipes (both datasets).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

Sampling = Literal["shuffle", "sequential", "class_balanced"]
Crop = Literal["pad", "resized"]


class DeviceLoader:
    """Batches ``(x, y)`` of an in-memory uint8 image set, augmented on ``device``.

    Several batches are augmented by one gather (up to :attr:`chunk_elements` output values,
    32 MB of float32) and handed out as views, which keeps the number of tensor operations
    per epoch small; the values do not depend on the chunking.

    Args:
        images: uint8 images, ``(N, H, W, C)`` (``layout="NHWC"``, numpy's CIFAR layout) or
            ``(N, C, H, W)`` (``layout="NCHW"``); numpy array or tensor.
        labels: int labels ``(N,)``.
        batch_size: samples per batch (per rank).
        device: where images live and batches are produced.
        sampling: ``"shuffle"`` (a random permutation per epoch), ``"sequential"`` (dataset
            order, for evaluation) or ``"class_balanced"`` (:func:`class_balanced_indices`).
        augment: random crop + flip; ``False`` gives the plain normalized images.
        padding: zero padding of the random crop, in pixels.
        flip: horizontal flip with probability 1/2 (when ``augment``).
        mean, std: per-channel normalization (0..1 scale); lengths must equal C.
        drop_last: drop the last incomplete batch.
        seed: base seed; an epoch's randomness depends only on ``(seed, epoch)``.
        num_samples: samples per epoch for ``"class_balanced"`` (default N).
        rank, world_size: for DDP, each rank takes ``order[rank::world_size]`` of the epoch's
            order, padded (by wrapping around) to a multiple of ``world_size``.
        dtype: floating dtype of the batches.
        channels_last: return batches in ``torch.channels_last`` memory format.
        size: output side; ``None`` keeps the source size (and, with ``crop="pad"`` and no
            ``resize``, the padding-crop path above, bit for bit).
        crop: ``"pad"`` (random crop of the zero-padded image, source size only) or
            ``"resized"`` (``RandomResizedCrop(size, scale, ratio)`` of the image resized so
            its shorter edge is ``resize``).
        resize: shorter edge of the resized image that boxes and the evaluation center crop
            refer to (default ``size``); evaluation is ``Resize(resize)`` + ``CenterCrop(size)``.
        scale, ratio: area fraction and aspect ``w / h`` ranges of ``crop="resized"``.

    Resampling is torchvision's bilinear resize with ``antialias=True``, composed exactly
    (in float32) instead of rounding the resized image to uint8 in between.

    Yields ``x`` of shape ``(B, C, H, W)`` (``(B, C, size, size)`` when resampling) and dtype
    ``dtype``, and int64 ``y`` of shape ``(B,)``.

    Example:
        >>> imgs = np.zeros((10, 8, 8, 3), dtype=np.uint8); ys = np.arange(10) % 2
        >>> loader = DeviceLoader(imgs, ys, batch_size=4, seed=0)
        >>> [tuple(x.shape) for x, _ in loader]
        [(4, 3, 8, 8), (4, 3, 8, 8), (2, 3, 8, 8)]
    """

    #: output values augmented per gather (several batches of CIFAR, at least one batch)
    chunk_elements: int = 1 << 23

    def __init__(
        self,
        images: np.ndarray | Tensor,
        labels: np.ndarray | Tensor | Sequence[int],
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        sampling: Sampling = "shuffle",
        augment: bool = True,
        padding: int = 4,
        flip: bool = True,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
        drop_last: bool = False,
        seed: int = 0,
        num_samples: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        layout: Literal["NHWC", "NCHW"] = "NHWC",
        size: int | None = None,
        crop: Crop = "pad",
        resize: int | None = None,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        x = torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise DataError(
                f"images must be uint8 of shape (N, H, W, C) or (N, C, H, W), got {x.dtype} "
                f"{tuple(x.shape)}"
            )
        if layout == "NHWC":
            x = x.permute(0, 3, 1, 2)
        elif layout != "NCHW":
            raise DataError(f"layout must be 'NHWC' or 'NCHW', got {layout!r}")
        y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DataError(
                f"labels must have shape ({x.shape[0]},) to match the images, got {tuple(y.shape)}"
            )
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise DataError(f"labels must be integers, got {y.dtype}")
        if y.numel() and int(y.min()) < 0:
            raise DataError(f"labels must be >= 0, got {int(y.min())}")
        if x.shape[0] == 0:
            raise DataError("images is empty")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if sampling not in ("shuffle", "sequential", "class_balanced"):
            raise DataError(
                f"sampling must be 'shuffle', 'sequential' or 'class_balanced', got {sampling!r}"
            )
        if padding < 0:
            raise DataError(f"padding must be >= 0, got {padding}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        channels = x.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise DataError(
                f"mean and std need one value per channel ({channels}), got {len(mean)} and "
                f"{len(std)}"
            )
        if any(s <= 0 for s in std):
            raise DataError(f"std must be positive, got {tuple(std)}")
        if not dtype.is_floating_point:
            raise DataError(f"dtype must be a floating dtype, got {dtype}")
        plan = resampling_plan(int(x.shape[2]), int(x.shape[3]), augment, size, crop, resize)
        self.crop: Crop = crop  # type: ignore[assignment]
        self.size, self.resized_shape, self.resampled = plan.size, plan.resized, plan.resampled
        self._center = plan.center
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        if self.resampled and (not 0 < scale[0] <= scale[1] or not 0 < ratio[0] <= ratio[1]):
            raise DataError(
                f"need 0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1], got scale={scale}, "
                f"ratio={ratio}"
            )

        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.batch_size = int(batch_size)
        self.sampling: Sampling = sampling
        self.augment = augment
        self.padding = int(padding) if augment and not self.resampled else 0
        self.flip = flip
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.dtype = dtype
        self.channels_last = channels_last
        self.epoch = 0
        self.height, self.width = int(x.shape[2]), int(x.shape[3])
        self.labels = y.to(torch.int64).to(self.device)
        self._labels_cpu = y.to(torch.int64).cpu()
        self.channels = channels
        self._pack(x)
        self._dataset_size = int(x.shape[0])
        self._epoch_size = self._dataset_size if num_samples is None else int(num_samples)
        if self._epoch_size < 1:
            raise DataError(f"num_samples must be >= 1, got {num_samples}")
        if num_samples is not None and sampling != "class_balanced":
            raise DataError("num_samples is only used with sampling='class_balanced'")
        mul = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32)
        add = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], dtype=torch.float32)
        self._scale = mul.view(1, -1, 1, 1).to(self.device)
        self._shift = add.view(1, -1, 1, 1).to(self.device)
        self._rows = torch.arange(self.height, device=self.device)
        self._cols = torch.arange(self.width, device=self.device)

    def _pack(self, x: Tensor) -> None:
        """Store the images zero-padded, one int32 word per 4 channels of a pixel.

        ``self._pixels`` has shape ``(N, H + 2p, W + 2p, G)`` with ``G = ceil(C / 4)`` int32
        words per pixel, so a crop is a gather of ``B * H * W * G`` words.
        """
        n, c, h, w = x.shape
        p = self.padding
        self._words = -(-c // 4)
        packed = torch.zeros(n, h + 2 * p, w + 2 * p, 4 * self._words, dtype=torch.uint8)
        packed[:, p : p + h, p : p + w, :c] = x.permute(0, 2, 3, 1).cpu()
        self._pixels = packed.view(torch.int32).to(self.device)
        self._padded_width = w + 2 * p

    # ------------------------------------------------------------------ sizes
    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch (before ``drop_last``)."""
        return math.ceil(self._epoch_size / self.world_size)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    @property
    def class_counts(self) -> Tensor:
        """Samples per class in the underlying set (int64, CPU)."""
        return torch.bincount(self._labels_cpu)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration uses."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------------ epoch plan
    def epoch_indices(self, epoch: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """This rank's ``(indices, row_offsets, col_offsets, flips)`` for an epoch (CPU tensors).

        The randomness is drawn for the whole (global) epoch and then sharded, so it does not
        depend on ``rank``, ``world_size`` or ``batch_size``.
        """
        if self.resampled:
            raise DataError("this loader resamples (size/crop/resize set): use epoch_crops()")
        gen = epoch_generator(self.seed, self.epoch if epoch is None else epoch)
        n = self._epoch_size
        order = self._order(gen)
        if self.augment:
            span = 2 * self.padding + 1
            oy = torch.randint(span, (n,), generator=gen)
            ox = torch.randint(span, (n,), generator=gen)
            flips = (
                torch.rand(n, generator=gen) < 0.5
                if self.flip
                else torch.zeros(n, dtype=torch.bool)
            )
        else:
            oy = ox = torch.zeros(n, dtype=torch.int64)
            flips = torch.zeros(n, dtype=torch.bool)
        order, oy, ox, flips = self._shard(order, oy, ox, flips)
        return order, oy, ox, flips

    def epoch_crops(self, epoch: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """This rank's ``(indices, boxes, flips)`` for an epoch of a resampling loader.

        ``boxes`` is ``(n, 4)`` int64 ``(top, left, h, w)`` in the coordinates of the image
        resized to :attr:`resized_shape`; each box is resampled to ``size x size``. Training:
        :func:`~focalsam.data.resample.random_resized_crop_boxes`; evaluation: the center crop.
        Drawn for the whole epoch from ``(seed, epoch)`` (order, boxes, flips) and then sharded.
        """
        if not self.resampled:
            raise DataError("this loader pads and crops at the source size: use epoch_indices()")
        gen = epoch_generator(self.seed, self.epoch if epoch is None else epoch)
        n = self._epoch_size
        order = self._order(gen)
        if self.augment:
            boxes = random_resized_crop_boxes(
                n, *self.resized_shape, generator=gen, scale=self.scale, ratio=self.ratio
            )
            flips = (
                torch.rand(n, generator=gen) < 0.5
                if self.flip
                else torch.zeros(n, dtype=torch.bool)
            )
        else:
            boxes = torch.tensor([self._center], dtype=torch.int64).expand(n, 4)
            flips = torch.zeros(n, dtype=torch.bool)
        order, boxes, flips = self._shard(order, boxes, flips)
        return order, boxes, flips

    def _order(self, gen: torch.Generator) -> Tensor:
        """The epoch's dataset indices (the first draws from ``gen``)."""
        n = self._epoch_size
        if self.sampling == "shuffle":
            return torch.randperm(n, generator=gen)
        if self.sampling == "sequential":
            return torch.arange(n)
        return class_balanced_indices(self._labels_cpu, n, gen)

    def _shard(self, *columns: Tensor) -> tuple[Tensor, ...]:
        """This rank's rows ``[rank::world_size]`` of the global epoch, wrapped to equal length."""
        if self.world_size == 1:
            return columns
        total = self.num_samples * self.world_size
        pos = torch.arange(total) % self._epoch_size  # wrap around to make the ranks equal
        pos = pos[self.rank :: self.world_size]
        return tuple(c[pos] for c in columns)

    # ------------------------------------------------------------------ batches
    def _batch(self, idx: Tensor, oy: Tensor, ox: Tensor, flips: Tensor) -> Tensor:
        """Crop at ``(oy, ox)`` of the padded images, mirror where ``flips``, normalize."""
        hp, wp = self._pixels.shape[1], self._pixels.shape[2]
        rows = (idx * hp)[:, None] + oy[:, None] + self._rows  # (B, H) row of the padded stack
        cols = ox[:, None] + torch.where(flips[:, None], self.width - 1 - self._cols, self._cols)
        pix = (rows * wp)[:, :, None] + cols[:, None, :]  # (B, H, W) pixel index
        g = self._words
        if g > 1:
            pix = pix[..., None] * g + torch.arange(g, device=self.device)
        words = torch.take(self._pixels, pix)
        b = idx.shape[0]
        raw = words.view(torch.uint8).view(b, self.height, self.width, 4 * g)[..., : self.channels]
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        out = torch.empty(
            (b, self.channels, self.height, self.width),
            dtype=torch.float32,
            device=self.device,
            memory_format=fmt,
        )
        out.copy_(raw.permute(0, 3, 1, 2))
        out.mul_(self._scale).add_(self._shift)
        return out if self.dtype == torch.float32 else out.to(self.dtype)

    def _resampled_batch(self, idx: Tensor, boxes: Tensor, flips: Tensor) -> Tensor:
        """Resize + crop ``boxes`` of the source images to ``size``, mirror, normalize."""
        b, g = idx.shape[0], self._words
        raw = self._pixels[idx].view(torch.uint8).view(b, self.height, self.width, 4 * g)
        out = resample_crops(
            raw[..., : self.channels],
            boxes,
            self.size,
            self.resized_shape,
            flips if self.augment else None,
            channels_last=self.channels_last,
        )  # (B, C, size, size) float32
        out.mul_(self._scale).add_(self._shift)
        return out if self.dtype == torch.float32 else out.to(self.dtype)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        plan = self.epoch_crops() if self.resampled else self.epoch_indices()
        non_blocking = self.device.type == "cuda"
        order, *parts = (t.to(self.device, non_blocking=non_blocking) for t in plan)
        make = self._resampled_batch if self.resampled else self._batch
        n = order.shape[0]
        bs = self.batch_size
        stop = (n // bs) * bs if self.drop_last else n
        # several batches per gather: fewer (parallel) ops per epoch, same values; at least
        # one batch, so a large ``size`` gives one batch per gather
        side = (self.size, self.size) if self.resampled else (self.height, self.width)
        per_sample = self.channels * side[0] * side[1]
        step = bs * max(1, self.chunk_elements // (per_sample * bs))
        for clo in range(0, stop, step):
            chi = min(clo + step, stop)
            idx = order[clo:chi]
            xs = make(idx, *(p[clo:chi] for p in parts))
            ys = self.labels[idx]
            for lo in range(0, chi - clo, bs):
                yield xs[lo : lo + bs], ys[lo : lo + bs]

    def __repr__(self) -> str:
        return (
            f"DeviceLoader(n={self._dataset_size}, batch_size={self.batch_size}, "
            f"sampling={self.sampling!r}, augment={self.augment}, device={self.device}, "
            f"rank={self.rank}/{self.world_size})"
        )
