"""The ascent of a sharpness-aware step and the move to ``theta + eps`` and back.

From the gradient ``g`` in ``.grad`` (the sharp-weighted one, ``g_b``)::

    eps = rho * g / ||g||                    (SAM)
    eps = rho * p^2 g / ||p g||              (ASAM, ``adaptive``: scale invariant)

with ``rho`` and ``adaptive`` per parameter group and one norm over every parameter
(FSDP2 shards included: :mod:`~focalsam.optim.sharded`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from focalsam.optim.buffers import BufferPool
from focalsam.optim.policies.ddp import DdpPolicy
from focalsam.optim.policies.scaler import unscale_
from focalsam.optim.sharded import copy_all

#: Added to every norm that is divided by (a zero gradient gives no perturbation).
TINY = 1e-12


class Ascent:
    """``eps`` (one scratch tensor per parameter, allocated once, never saved) and the
    parameters it moves: :meth:`write` computes it, :meth:`perturb` moves to
    ``theta + eps``, :meth:`restore` back to ``theta``."""

    def __init__(self) -> None:
        self._eps = BufferPool()
        self._backup = BufferPool()
        self.params: list[Tensor] = []
        self.moved = False

    @torch.no_grad()
    def write(
        self,
        params: list[Tensor],
        param_groups: list[dict[str, Any]],
        scaler: torch.amp.GradScaler | None,
        strict: bool,
        ddp: DdpPolicy,
    ) -> Tensor | None:
        """Write ``eps`` from the gradients of ``params`` in ``.grad`` (unscaled first, and
        averaged over replicas with ``ddp.ascent_all_reduce``); return the norm it divided
        by, ``||g||`` or ``||p g||`` (``None`` when no parameter has a gradient)."""
        with_grad = [p for p in params if p.grad is not None]
        if not with_grad:
            self.params = []
            return None
        unscale_([p.grad for p in with_grad], scaler, strict)  # type: ignore[misc]
        with_grad = ddp.ascent_params(params, with_grad)
        grads = [p.grad for p in with_grad]
        eps = self._eps(with_grad)
        copy_all(eps, grads)  # type: ignore[arg-type]
        groups = _groups_of(with_grad, param_groups)
        for group, idx in groups:
            if group["adaptive"]:
                torch._foreach_mul_([eps[i] for i in idx], [with_grad[i] for i in idx])
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(eps)))
        for group, idx in groups:
            sub = [eps[i] for i in idx]
            if group["adaptive"]:
                torch._foreach_mul_(sub, [with_grad[i] for i in idx])
            torch._foreach_mul_(sub, group["rho"] / (norm + TINY))
        self.params = with_grad
        return norm

    @torch.no_grad()
    def perturb(self) -> None:
        """``theta <- theta + eps`` (``theta`` kept to :meth:`restore`)."""
        params = self.params
        backup = self._backup(params)
        copy_all(backup, params)
        torch._foreach_add_(params, [self._eps[p] for p in params])
        self.moved = True

    @torch.no_grad()
    def restore(self) -> None:
        """``theta`` as it was before :meth:`perturb` (nothing when not moved)."""
        if not self.moved:
            return
        params = self.params
        copy_all(params, [self._backup[p] for p in params])
        self.moved = False

    @contextlib.contextmanager
    def perturbed(self) -> Iterator[None]:
        """At ``theta + eps`` for the block, back at ``theta`` after it (also on an error)."""
        self.perturb()
        try:
            yield
        finally:
            self.restore()


def _groups_of(
    params: list[Tensor], param_groups: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], list[int]]]:
    """Each parameter group with the indices of its members in ``params``."""
    if len(param_groups) == 1:
        return [(param_groups[0], list(range(len(params))))]
    owner = {p: gi for gi, g in enumerate(param_groups) for p in g["params"]}
    out: dict[int, list[int]] = {}
    for i, p in enumerate(params):
        out.setdefault(owner[p], []).append(i)
    return [(param_groups[gi], idx) for gi, idx in out.items()]
