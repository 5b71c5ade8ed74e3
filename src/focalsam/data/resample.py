"""Batched resize and crop of small images as matrices: RandomResizedCrop / Resize on a device.

torchvision's ``Resize`` (bilinear, ``antialias=True``) is linear and separable: along one axis
output pixel ``o`` of ``out`` reads the input pixels ``j`` of ``n`` with the triangle weights

    w[o, j] = max(0, 1 - |j + 1/2 - c_o| / s) / (row sum),   c_o = (o + 1/2) * n / out,
    s = max(n / out, 1)

(at the borders the row is renormalized over the pixels that exist; when upsampling this is
plain bilinear interpolation with the source coordinate clamped). A crop of rows
``top .. top + h - 1`` of the resized image followed by a resize ``h -> size`` is another such
matrix, so ``Resize(R)`` then ``resized_crop(top, left, h, w, size)`` of an image ``X`` is

    Y = A_y X A_x^T,   A_y = W(h -> size) U_y[top : top + h],   U_y = W(H -> R_h)

(and ``A_x`` likewise): one small ``(size, H)`` matrix per sample and axis, applied to the
source image directly. No intermediate image at the resized resolution is made and nothing is
rounded to uint8 in between (torchvision on PIL or uint8 images rounds after each resize).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from focalsam.errors import DataError

__all__ = [
    "center_crop_box",
    "crop_resize_matrices",
    "random_resized_crop_boxes",
    "resample_crops",
    "resampling_plan",
    "resize_matrix",
    "resized_shape",
]


def resized_shape(height: int, width: int, resize: int) -> tuple[int, int]:
    """``(H', W')`` of ``Resize(resize)``: the shorter edge becomes ``resize``, the longer
    ``int(resize * long / short)`` (torchvision's rule)."""
    if height <= width:
        return resize, int(resize * width / height)
    return int(resize * height / width), resize


def center_crop_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """``(top, left, size, size)`` of ``CenterCrop(size)``: ``top = round((H - size) / 2)``."""
    if size > height or size > width:
        raise DataError(f"center crop {size} does not fit an image of {height}x{width}")
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0)), size, size


class ResamplingPlan(NamedTuple):
    """How a loader's batches are made from ``height x width`` sources: the output
    ``size``, the ``resized`` shape the crop boxes refer to, whether batches are
    resampled at all (False: the source-size padding-crop path) and, for evaluation, the
    ``center`` crop box."""

    size: int
    resized: tuple[int, int]
    resampled: bool
    center: tuple[int, int, int, int] | None


def resampling_plan(
    height: int, width: int, augment: bool, size: int | None, crop: str, resize: int | None
) -> ResamplingPlan:
    """The plan of ``crop`` (``"pad"`` or ``"resized"``) at ``size`` after ``resize``;
    raises :class:`DataError` for options that do not go together."""
    if crop not in ("pad", "resized"):
        raise DataError(f"crop must be 'pad' or 'resized', got {crop!r}")
    for key, value in (("size", size), ("resize", resize)):
        if value is not None and value < 1:
            raise DataError(f"{key} must be >= 1, got {value}")
    out = int(size) if size is not None else min(height, width)
    short = int(resize) if resize is not None else out
    resized = resized_shape(height, width, short)
    explicit = crop == "resized" or size is not None or resize is not None
    identity = crop == "pad" and (out, out) == (height, width) and short == out
    resampled = explicit and not identity
    if resampled and augment and crop == "pad":
        raise DataError(
            f"crop='pad' works at the source size {height}x{width}; for size={out}, "
            f"resize={short} use crop='resized'"
        )
    center = center_crop_box(*resized, out) if resampled and not augment else None
    return ResamplingPlan(out, resized, resampled, center)


def random_resized_crop_boxes(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    tries: int = 10,
) -> Tensor:
    """``n`` boxes ``(top, left, h, w)`` (int64, CPU) drawn as torchvision's RandomResizedCrop.

    Per box, up to ``tries`` candidates: area ``A U(scale)`` (``A = height * width``), aspect
    ``w / h = exp(U(log ratio))``, ``w = round(sqrt(area * aspect))``,
    ``h = round(sqrt(area / aspect))``; the first that fits is placed uniformly at random.
    When none fits: the central crop of the whole image, its aspect clamped to ``ratio``.
    Every box consumes the same random numbers, so box ``k`` does not depend on ``n``'s
    chunking (the draws are made for all ``n`` at once, in a fixed order).
    """
    if n < 0 or height < 1 or width < 1 or tries < 1:
        raise DataError(
            f"need n >= 0, height, width, tries >= 1; got {n}, {height}, {width}, {tries}"
        )
    if not 0 < scale[0] <= scale[1] or not 0 < ratio[0] <= ratio[1]:
        raise DataError(
            f"need 0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1], got {scale}, {ratio}"
        )
    f64 = torch.float64
    area = torch.rand(n, tries, generator=generator, dtype=f64)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(
        log_lo + (log_hi - log_lo) * torch.rand(n, tries, generator=generator, dtype=f64)
    )
    w = torch.round(torch.sqrt(area * aspect)).to(torch.int64)
    h = torch.round(torch.sqrt(area / aspect)).to(torch.int64)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # first fitting try (0 if none)
    found = fits.any(dim=1)
    h = h.gather(1, first).squeeze(1)
    w = w.gather(1, first).squeeze(1)
    u_top = torch.rand(n, generator=generator, dtype=f64)
    u_left = torch.rand(n, generator=generator, dtype=f64)
    top = torch.floor(u_top * (height - h + 1)).to(torch.int64)  # uniform in 0 .. height - h
    left = torch.floor(u_left * (width - w + 1)).to(torch.int64)
    # fallback: the central crop, aspect clamped to ratio
    fh, fw = height, width
    if width / height < ratio[0]:
        fh = int(round(width / ratio[0]))
    elif width / height > ratio[1]:
        fw = int(round(height * ratio[1]))
    top = torch.where(found, top, (height - fh) // 2)
    left = torch.where(found, left, (width - fw) // 2)
    h = torch.where(found, h, fh)
    w = torch.where(found, w, fw)
    return torch.stack([top, left, h, w], dim=1)


def _tap_weights(
    length: Tensor, out: int, longest: int, *, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Taps of ``W(length -> out)`` per sample: indices ``(n, out, K)`` into ``0 .. length - 1``
    and their weights (rows sum to 1); ``K`` covers the widest triangle of any
    ``length <= longest`` (a bound known on the host: no device sync)."""
    dev = length.device
    n_in = length.to(dtype)[:, None, None]  # (n, 1, 1)
    support = torch.clamp(n_in / out, min=1.0)  # triangle half-width, in input pixels
    o = torch.arange(out, device=dev, dtype=dtype)[None, :, None]
    center = (o + 0.5) * (n_in / out)
    taps = int(math.ceil(2 * max(longest / out, 1.0))) + 1
    first = torch.floor(center - support + 0.5)
    j = first + torch.arange(taps, device=dev, dtype=dtype)  # (n, out, K) candidate pixels
    weight = torch.clamp(1 - torch.abs(j + 0.5 - center) / support, min=0)
    weight = torch.where((j >= 0) & (j < n_in), weight, torch.zeros_like(weight))
    weight = weight / weight.sum(dim=2, keepdim=True)
    index = torch.clamp(j, min=0).to(torch.int64)
    index = torch.minimum(index, (length - 1)[:, None, None])
    return index, weight


def resize_matrix(
    n_in: int, n_out: int, *, dtype: torch.dtype = torch.float64, device: torch.device | None = None
) -> Tensor:
    """``(n_out, n_in)`` matrix of torchvision's bilinear antialiased resize along one axis."""
    if n_in < 1 or n_out < 1:
        raise DataError(f"sizes must be >= 1, got {n_in} -> {n_out}")
    index, weight = _tap_weights(torch.tensor([n_in], device=device), n_out, n_in, dtype=dtype)
    m = torch.zeros(1, n_out, n_in, dtype=dtype, device=device)
    m.scatter_add_(2, index, weight)
    return m[0]


def crop_resize_matrices(
    n_src: int,
    n_resized: int,
    start: Tensor,
    length: Tensor,
    out: int,
    *,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """``(n, out, n_src)``: ``W(length -> out) @ U[start : start + length]`` per sample, with
    ``U = resize_matrix(n_src, n_resized)``: one axis of ``Resize`` then ``resized_crop``.

    Built from the taps of both resizes (a scatter of ``n * out * K * K'`` weights), never
    as a product of dense matrices.
    """
    dev = start.device
    u_index, u_weight = _tap_weights(
        torch.tensor([n_src], device=dev), n_resized, n_src, dtype=dtype
    )
    index, weight = _tap_weights(length.to(dev), out, n_resized, dtype=dtype)  # (n, out, K)
    rows = start[:, None, None] + index  # rows of U
    src = u_index[0][rows]  # (n, out, K, K') source pixels
    w = weight[..., None] * u_weight[0][rows]
    m = torch.zeros(start.shape[0], out, n_src, dtype=dtype, device=dev)
    return m.scatter_add_(2, src.flatten(2), w.flatten(2))


def resample_crops(
    images: Tensor,
    boxes: Tensor,
    size: int,
    resize: tuple[int, int],
    flips: Tensor | None = None,
    channels_last: bool = True,
) -> Tensor:
    """``Resize`` then ``resized_crop`` of every image, as ``A_y X A_x^T`` (float32).

    Args:
        images: ``(B, H, W, C)`` images (any real dtype; uint8 is read as 0..255).
        boxes: ``(B, 4)`` ``(top, left, h, w)`` in the coordinates of the resized image.
        size: output side.
        resize: ``(H', W')``, the resized image the boxes refer to.
        flips: ``(B,)`` bool, mirror the output horizontally where true.
        channels_last: memory format of the result (both orders of the two products are
            large matrix products; each writes one layout directly).

    Returns ``(B, C, size, size)`` float32.
    """
    b, height, width, c = images.shape
    dev = images.device
    if boxes.shape != (b, 4):
        raise DataError(f"boxes must have shape ({b}, 4), got {tuple(boxes.shape)}")
    # weights in float64 (float32 where the device has no float64): a pixel centre like
    # (o + 1/2) * 32 / 224 in float32 moves a weight by ~1e-6, i.e. 1e-3 of 255
    wdt = torch.float32 if dev.type == "mps" else torch.float64
    if boxes.device.type == "cpu":  # (on a device this check would wait for it)
        top, left, h, w = boxes.unbind(1)
        if ((h < 1) | (w < 1) | (top < 0) | (left < 0)).any() or (
            (top + h > resize[0]) | (left + w > resize[1])
        ).any():
            raise DataError(f"boxes must lie inside the resized {resize[0]}x{resize[1]} image")
    boxes = boxes.to(dev)
    a_y = crop_resize_matrices(height, resize[0], boxes[:, 0], boxes[:, 2], size, dtype=wdt)
    a_x = crop_resize_matrices(width, resize[1], boxes[:, 1], boxes[:, 3], size, dtype=wdt)
    a_y, a_x = a_y.float(), a_x.float()  # (B, size, H), (B, size, W)
    if flips is not None:
        a_x = torch.where(flips.to(dev)[:, None, None], a_x.flip(1), a_x)
    x = images.to(torch.float32)
    if channels_last:  # columns first: [b, w, h, c] -> [b, x, h, c] -> [b, y, x, c]
        t = torch.bmm(a_x, x.transpose(1, 2).reshape(b, width, height * c))
        t = t.view(b, size, height, c).transpose(1, 2).reshape(b, height, size * c)
        return torch.bmm(a_y, t).view(b, size, size, c).permute(0, 3, 1, 2)
    # [b, c, h, w] -> [b, c, h, x] -> [b, c, y, x]
    t = torch.bmm(x.permute(0, 3, 1, 2).reshape(b, c * height, width), a_x.transpose(1, 2))
    return torch.matmul(a_y[:, None], t.view(b, c, height, size))
