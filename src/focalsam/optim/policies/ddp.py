"""DDP for the two-weight rule: the clean passes run under ``model.no_sync()`` so a step
all-reduces once (in its last backward), and optionally the ascent gradient ``g_b`` is
averaged over the replicas first, so that ``eps`` is the one of the global batch.

Under FSDP2 every backward already averages the gradient over the ranks, so ``eps`` is
always the global batch's and ``ascent_all_reduce`` changes nothing."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from focalsam.optim.sharded import is_sharded


def distributed() -> bool:
    """Whether this process is one of several replicas (torch.distributed, world > 1)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class DdpPolicy:
    """Which backward passes of a step all-reduce, and the optional ascent all-reduce.

    ``model``: the module being trained (a DDP model has ``no_sync``); ``ascent_all_reduce``:
    average ``g_b(theta)`` over the replicas before the ascent (one more all-reduce per
    step); ``owner``: the optimizer's name, for the warning when ``model`` is no DDP model.
    """

    def __init__(self, model: nn.Module | None, ascent_all_reduce: bool, owner: str) -> None:
        self.model = model
        self.ascent_all_reduce = ascent_all_reduce
        self._owner = owner
        self._warned_no_model = False
        self._all_reduce = GradAllReduce()

    def context(self, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """``model.no_sync()`` under DDP unless this backward must all-reduce (``sync``)."""
        if sync or not distributed():
            return contextlib.nullcontext()
        no_sync = getattr(self.model, "no_sync", None)
        if no_sync is None and hasattr(self.model, "set_requires_gradient_sync"):
            return contextlib.nullcontext()  # FSDP2: every backward reduce-scatters
        if no_sync is None:
            if not self._warned_no_model:
                self._warned_no_model = True
                warnings.warn(
                    f"{self._owner} runs under torch.distributed without a DDP model: "
                    "pass model=ddp_model so the clean passes skip their all-reduce "
                    "(one all-reduce per step instead of three)",
                    stacklevel=4,
                )
            return contextlib.nullcontext()
        return no_sync()

    def ascent_params(self, params: list[Tensor], with_grad: list[Tensor]) -> list[Tensor]:
        """The parameters whose gradients make ``eps``: ``with_grad``; with
        ``ascent_all_reduce`` under DDP, every one of ``params``, averaged over replicas."""
        if self.ascent_all_reduce and distributed():
            self._all_reduce(params)
            return params
        return with_grad


class GradAllReduce:
    """Average the gradients of ``params`` over the replicas: one all-reduce of one
    flat buffer, allocated once (missing gradients count as zeros)."""

    def __init__(self) -> None:
        self._flat: Tensor | None = None

    def __call__(self, params: list[Tensor]) -> None:
        if is_sharded(params):
            return  # FSDP2 reduce-scatters (averages) every backward: g_b is already global
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.average([p.grad for p in params if p.grad is not None])

    def average(self, tensors: list[Tensor]) -> None:
        """Average ``tensors`` over the replicas in place (one all-reduce)."""
        total = sum(t.numel() for t in tensors)
        if self._flat is None or self._flat.numel() != total:
            self._flat = torch.empty(total, dtype=tensors[0].dtype, device=tensors[0].device)
        views = [
            v.view_as(t) for v, t in zip(self._flat.split([t.numel() for t in tensors]), tensors)
        ]
        torch._foreach_copy_(views, tensors)
        dist.all_reduce(self._flat)
        self._flat.div_(dist.get_world_size())
        torch._foreach_copy_(tensors, views)
