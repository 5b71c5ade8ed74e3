"""Tensors a step keeps between its passes: one scratch tensor per parameter
(:class:`BufferPool`), class weights copied once per device (:class:`DeviceCache`), and the
gradient buffers, zeroed in place (:func:`zero_grads`)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

Weight = float | Tensor


def zero_grads(params: Iterable[Tensor]) -> None:
    """Zero the existing gradients in place (kept allocated)."""
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        torch._foreach_zero_(grads)


class BufferPool:
    """One scratch tensor per parameter (``empty_like``), allocated once and reused;
    transient, never part of a state dict."""

    def __init__(self) -> None:
        self._buffers: dict[Tensor, Tensor] = {}

    def __call__(self, params: Iterable[Tensor]) -> list[Tensor]:
        """The buffers of ``params``, allocated on first use."""
        out = []
        for p in params:
            buf = self._buffers.get(p)
            if buf is None:
                buf = self._buffers[p] = torch.empty_like(p, memory_format=torch.preserve_format)
            out.append(buf)
        return out

    def __getitem__(self, p: Tensor) -> Tensor:
        return self._buffers[p]

    def values(self) -> list[Tensor]:
        return list(self._buffers.values())


class DeviceCache:
    """Weights (tensors, or numbers passed through) copied once per device and dtype of
    the batch and reused, so a step moves nothing to the device."""

    def __init__(self, *weights: Weight) -> None:
        self.weights = weights
        self._copies: dict[tuple[str, torch.dtype], tuple[Weight, ...]] = {}

    def on(self, like: Tensor) -> tuple[Weight, ...]:
        """The weights on ``like``'s device, in its dtype."""
        key = (str(like.device), like.dtype)
        copies = self._copies.get(key)
        if copies is None:
            copies = self._copies[key] = tuple(
                w.to(device=like.device, dtype=like.dtype) if isinstance(w, Tensor) else w
                for w in self.weights
            )
        return copies

    def tensor(self, like: Tensor) -> Tensor:
        """The first weight, a tensor, on ``like``'s device and dtype."""
        (w, *_) = self.on(like)
        assert isinstance(w, Tensor)
        return w
