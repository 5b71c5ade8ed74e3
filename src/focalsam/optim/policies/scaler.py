"""The fp16 ``GradScaler`` policy of a step: every backward runs on the scaled loss, the
ascent gradient is unscaled before its norm (``eps`` must not depend on the scale), a step
whose gradient holds an inf/NaN is skipped (the scaler's ``step`` sees it), and the scaler
updates once per step, in :func:`base_step` (clip, then the base optimizer's step)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim import Optimizer


def active_scaler(scaler: torch.amp.GradScaler | None) -> torch.amp.GradScaler | None:
    """``scaler`` if it is enabled, else ``None``."""
    return scaler if scaler is not None and scaler.is_enabled() else None


def scaled(loss: Tensor, scaler: torch.amp.GradScaler | None) -> Tensor:
    """``scale * loss`` (``loss`` without a scaler)."""
    return loss if scaler is None else scaler.scale(loss)


def unscale_(grads: list[Tensor], scaler: torch.amp.GradScaler | None, strict: bool) -> None:
    """``g <- g / scale`` in place: the ascent gradient before its norm. A strict step reads
    the scale on the host; a sync-free one divides by it on the device."""
    if scaler is None:
        return
    if strict:
        inv_scale = 1.0 / float(scaler.get_scale())
        if inv_scale != 1.0:
            torch._foreach_mul_(grads, inv_scale)
    else:
        torch._foreach_mul_(grads, _inv_scale(scaler))  # type: ignore[arg-type]


def _inv_scale(scaler: torch.amp.GradScaler) -> Tensor | float:
    """``1 / scale`` on the device, without reading the scale on the host."""
    scale = getattr(scaler, "_scale", None)
    if not isinstance(scale, Tensor):
        return 1.0 / float(scaler.get_scale())
    return scale.double().reciprocal().float()


def base_step(
    optimizer: Optimizer,
    params: list[Tensor],
    scaler: torch.amp.GradScaler | None,
    max_grad_norm: float | None,
    skip: bool = False,
) -> None:
    """Clip the gradient of ``params`` to ``max_grad_norm`` and step ``optimizer``; with a
    scaler, unscale first (not when ``skip``: an inf was already seen) and update it once."""
    if scaler is not None:
        if max_grad_norm is not None and not skip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
        scaler.step(optimizer)
        scaler.update()
        return
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
    optimizer.step()
