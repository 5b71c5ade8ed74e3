"""Step helpers shared by the two-weight engine and CC-SAM (both stages): input checks,
the one-sync label/finite check, the scaler/clip/base-step update, the per-parameter
scratch buffers and the per-device copies of class weights.

The update is ``theta <- base_step(theta, clip(g))``; with an fp16 ``GradScaler`` the
gradient is unscaled before clipping and a step with an inf/NaN gradient is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.optim import Optimizer

from focalsam.optim.errors import LabelError, LossShapeError, NonFiniteLossError

_DTENSOR: type | None = None
if dist.is_available():
    from torch.distributed.tensor import DTensor as _DTENSOR

BackwardFn = Callable[..., Any]
#: Added to every norm that is divided by (a zero gradient gives no perturbation).
TINY = 1e-12
Weight = float | Tensor


def default_backward(loss: Tensor, retain_graph: bool = False) -> None:
    """``loss.backward(retain_graph=...)``: the backward a caller may replace."""
    loss.backward(retain_graph=retain_graph)


def per_sample_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``l_n = -log softmax(z_n)_{y_n}``, one value per sample."""
    return F.cross_entropy(logits, targets, reduction="none")


def losses_of(out: Any) -> Tensor:
    """The per-sample losses a closure returned (alone or first in a tuple)."""
    losses = out[0] if isinstance(out, tuple) else out
    if not isinstance(losses, Tensor):
        raise LossShapeError(
            "the closure must return per-sample losses (a tensor of shape (B,)) or a tuple "
            f"starting with them, got {type(losses).__name__}"
        )
    return losses


def check_losses(losses: Tensor, expected: int | None = None) -> int:
    """Check one floating loss per sample, with autograd; return the batch size ``B``."""
    if not isinstance(losses, Tensor):
        raise LossShapeError(f"losses must be a tensor of shape (B,), got {type(losses).__name__}")
    if losses.ndim != 1:
        hint = " (use reduction='none')" if losses.ndim == 0 else ""
        raise LossShapeError(
            f"losses must hold one value per sample, shape (B,); got shape "
            f"{tuple(losses.shape)}{hint}"
        )
    if not losses.is_floating_point():
        raise LossShapeError(f"losses must be floating point, got {losses.dtype}")
    if not losses.requires_grad:
        raise LossShapeError(
            "losses do not require grad: run the forward pass with autograd enabled"
        )
    batch = losses.shape[0]
    if batch == 0:
        raise LossShapeError("losses are empty: the batch has no samples")
    if expected is not None and batch != expected:
        raise LossShapeError(
            f"the perturbed forward returned {batch} losses, the clean one {expected}"
        )
    return batch


def check_targets(targets: Any, batch: int | None = None) -> Tensor:
    """Class labels as an int64 tensor ``(B,)``, one per loss when ``batch`` is given: any
    signed integer dtype is accepted; floating, complex, bool and unsigned ones (uint8
    indexes as a mask) are refused."""
    dtype = getattr(targets, "dtype", None)
    if (
        not isinstance(targets, Tensor)
        or targets.ndim != 1
        or not targets.dtype.is_signed
        or targets.is_floating_point()
        or targets.is_complex()
    ):
        raise LabelError(
            "targets must be a 1-D integer tensor of class labels (int64), got "
            f"{dtype if dtype is not None else type(targets).__name__} of shape "
            f"{tuple(getattr(targets, 'shape', ()))}"
            + (" (uint8 and bool tensors index as masks)" if dtype in _MASKS else "")
        )
    if batch is not None and targets.shape[0] != batch:
        raise LossShapeError(
            f"got {batch} losses for {targets.shape[0]} labels: the loss must be "
            "per sample (reduction='none')"
        )
    return targets.long()


_MASKS = (torch.uint8, torch.bool)


def label_range_error(targets: Tensor, num_classes: int) -> LabelError:
    """The error for labels outside ``[0, num_classes)``, naming the range found."""
    return LabelError(
        f"labels must lie in [0, {num_classes}) (one per class of class_counts); got values "
        f"in [{int(targets.min())}, {int(targets.max())}]"
    )


def checked_values(
    losses: Tensor | None,
    targets: Tensor | None,
    num_classes: int | None,
    check_finite: bool,
    extra: Sequence[Tensor] = (),
) -> list[int]:
    """Check labels against ``[0, num_classes)`` (when both are known) and losses for
    NaN/inf (when ``check_finite``), and read ``extra`` (flattened, as ints): one host sync."""
    check_range = num_classes is not None and targets is not None
    check_finite = check_finite and losses is not None
    parts: list[Tensor] = []
    if check_range:
        assert targets is not None and num_classes is not None
        parts.append(((targets >= 0) & (targets < num_classes)).all().view(1))
    if check_finite:
        assert losses is not None
        parts.append(torch.isfinite(losses.detach()).all().view(1))
    parts += [e.flatten() for e in extra]
    if not parts:
        return []
    values: list[int] = torch.cat([p.long() for p in parts]).tolist()
    if check_range and not values.pop(0):
        assert targets is not None and num_classes is not None
        raise label_range_error(targets, num_classes)
    if check_finite and not values.pop(0):
        assert losses is not None
        bad = int((~torch.isfinite(losses.detach())).sum())
        raise NonFiniteLossError(
            f"the forward pass returned {bad} non-finite losses out of {losses.numel()}; "
            "no step was taken"
        )
    return values


def ensure_finite(value: Tensor, message: str) -> None:
    """Raise :class:`NonFiniteLossError` with ``message`` unless ``value`` is all finite."""
    if not bool(torch.isfinite(value.detach()).all()):
        raise NonFiniteLossError(message)


def active_scaler(scaler: torch.amp.GradScaler | None) -> torch.amp.GradScaler | None:
    """``scaler`` if it is enabled, else ``None``."""
    return scaler if scaler is not None and scaler.is_enabled() else None


def zero_grads(params: Iterable[Tensor]) -> None:
    """Zero the existing gradients in place (kept allocated)."""
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        torch._foreach_zero_(grads)


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


def is_sharded(tensors: Sequence[Tensor]) -> bool:
    """Whether ``tensors`` are DTensors (parameters sharded by FSDP2's ``fully_shard``)."""
    return _DTENSOR is not None and bool(tensors) and isinstance(tensors[0], _DTENSOR)


def copy_all(dst: Sequence[Tensor], src: Sequence[Tensor]) -> None:
    """``dst[i] <- src[i]``: one foreach copy, or one ``copy_`` per tensor for DTensors
    (FSDP2), which have no foreach copy; a shard copies into a shard, nothing is gathered."""
    if is_sharded(dst):
        for d, s in zip(dst, src):
            d.copy_(s)
        return
    torch._foreach_copy_(dst, src)  # type: ignore[arg-type]


def distributed() -> bool:
    """Whether this process is one of several replicas (torch.distributed, world > 1)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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
        grads: list[Tensor] = [p.grad for p in params if p.grad is not None]
        total = sum(g.numel() for g in grads)
        if self._flat is None or self._flat.numel() != total:
            self._flat = torch.empty(total, dtype=params[0].dtype, device=params[0].device)
        views = [v.view_as(g) for v, g in zip(self._flat.split([g.numel() for g in grads]), grads)]
        torch._foreach_copy_(views, grads)
        dist.all_reduce(self._flat)
        self._flat.div_(dist.get_world_size())
        torch._foreach_copy_(grads, views)


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
