"""A whole optimizer step in one CUDA graph: both forwards, every backward pass and
the base update of a SAM-family step, replayed with one launch per batch.

For a batch ``(x, y)`` the captured program is exactly the eager step::

    losses = loss_fn(model(x).float(), y)          # at theta (and at theta + eps)
    optimizer.step(closure, y)                     # the engine's passes + base update

run with ``strict_checks=False`` (no host-device sync: non-finite updates are
skipped on the device). What a graph would otherwise bake in as constants is
kept in device tensors that the captured kernels read: each parameter group's
``lr`` (the base SGD runs fused, reading its lr from the device) and ``rho``
(the engine scales ``eps`` by ``rho / ||g_b||``, a tensor when rho is one). A
scheduler that writes a new Python float into a group is picked up before the
next replay; any other option changed after capture is refused.

Shapes are static: a batch of another shape (the last partial batch of an
epoch) is refused by :meth:`CapturedStep.__call__`; run it with
:meth:`CapturedStep.eager` (the same step, not replayed) or drop it
(``drop_last``). Warm-up iterations and capture leave the model, its
BatchNorm statistics and the optimizer state as they were before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from focalsam.errors import CaptureError

LossFn = Callable[[Tensor, Tensor], Tensor]

#: Group options the step reads from device tensors (not baked into the graph).
DEVICE_OPTIONS = ("lr", "rho")
_SKIP_KEYS = frozenset({"params", "initial_lr", "initial_rho", *DEVICE_OPTIONS})


def check_capturable(
    optimizer: Optimizer, model: nn.Module, x: Tensor, autocast: torch.dtype | None
) -> None:
    """Refuse, with one line naming the cause, what a CUDA graph cannot hold: a
    host-syncing optimizer (``strict_checks=True``, ``sam_every > 1``,
    CC-SAM's per-class passes), fp16 (its GradScaler syncs), BatchNorm with a
    cumulative average (``momentum=None`` reads a counter on the host), DDP, a CPU device."""
    if autocast not in (None, torch.bfloat16, torch.float32):
        raise CaptureError(
            f"autocast must be None or torch.bfloat16 in a captured step, got {autocast}: "
            "fp16 needs a GradScaler, whose step syncs with the host"
        )
    if _is_distributed():
        raise CaptureError("a captured step runs in one process; run DDP steps eagerly")
    _check_optimizer(optimizer)
    for m in model.modules():
        if (
            isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.training
            and m.track_running_stats
            and m.momentum is None
        ):
            raise CaptureError(
                f"{type(m).__name__} with momentum=None (a cumulative average) reads its "
                "batch counter on the host; give it a momentum to capture the step"
            )
    if not torch.cuda.is_available() or x.device.type != "cuda":
        raise CaptureError(
            f"a captured step needs CUDA tensors; got the batch on {x.device} "
            f"(CUDA available: {torch.cuda.is_available()}): run the step eagerly"
        )
    _check_tensors_on(model, x.device)


def _check_tensors_on(model: nn.Module, device: torch.device) -> None:
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.device != device:
            raise CaptureError(
                f"the model's {name} is on {t.device}, the batch on {device}: move the model"
            )


def _is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _check_optimizer(optimizer: Optimizer) -> None:
    """A torch optimizer is checked as it is; a registered method by its spec's
    capabilities (capturable, sync-free), then its options and its base optimizer."""
    from focalsam.optim.registry import method_of

    name = type(optimizer).__name__
    spec = method_of(optimizer)
    if spec is None:
        _check_base(optimizer)
        return
    if not spec.capturable:
        raise CaptureError(
            f"{name} ({spec.name}) cannot be captured in a CUDA graph: "
            f"{spec.not_capturable_because or 'it syncs with the host'}; run it eagerly"
        )
    if not spec.sync_free:
        raise CaptureError(
            f"{name} ({spec.name}) has no sync-free mode: its steps sync with the host "
            "and cannot be captured"
        )
    if optimizer.strict_checks is True:  # type: ignore[attr-defined]
        raise CaptureError(
            f"{name} was built with strict_checks=True, whose checks sync with the host: "
            "build it with strict_checks=False (or None, sync-free on CUDA)"
        )
    sam_every = optimizer.sam_every  # type: ignore[attr-defined]
    if sam_every != 1:
        raise CaptureError(
            f"{name} has sam_every={sam_every}: its steps alternate between two programs; "
            "capture needs sam_every=1"
        )
    _check_base(optimizer.base_optimizer)  # type: ignore[attr-defined]


def _is_method(optimizer: Optimizer) -> bool:
    from focalsam.optim.registry import method_of

    return method_of(optimizer) is not None


def _check_base(base: Optimizer) -> None:
    if isinstance(base, torch.optim.SGD):
        for i, group in enumerate(base.param_groups):
            if group.get("dampening", 0) != 0 and any(
                "momentum_buffer" not in base.state.get(p, {}) for p in group["params"]
            ):
                raise CaptureError(
                    f"parameter group {i}: SGD with dampening={group['dampening']} takes a "
                    "different first step; take one eager step before capturing"
                )
        return
    if all(g.get("capturable", False) for g in base.param_groups):
        return
    raise CaptureError(
        f"base optimizer {type(base).__name__} is not capturable: use SGD, or "
        "Adam/AdamW with capturable=True"
    )


class _Snapshot:
    """Copies of the parameters, buffers and optimizer state tensors, written back in
    place (the graph holds their addresses); state created meanwhile is zeroed, which for
    SGD (dampening 0) makes the next step the same as a first step."""

    def __init__(self, model: nn.Module, optimizer: Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.tensors = [(t, t.detach().clone()) for t in _model_tensors(model)]
        self.state = {
            (p, k): v.detach().clone()
            for p, s in optimizer.state.items()
            for k, v in s.items()
            if isinstance(v, Tensor)
        }

    @torch.no_grad()
    def restore(self) -> None:
        for t, saved in self.tensors:
            t.copy_(saved)
        for p, s in self.optimizer.state.items():
            for k, v in s.items():
                if isinstance(v, Tensor):
                    before = self.state.get((p, k))
                    if before is None:
                        v.zero_()
                    else:
                        v.copy_(before)


def _model_tensors(model: nn.Module) -> list[Tensor]:
    return [*model.parameters(), *model.buffers()]


class DeviceOptions:
    """Each parameter group's ``lr`` and ``rho`` as 0-d device tensors (the objects the
    captured kernels read); Python values written into a group later are copied in."""

    def __init__(self, optimizer: Optimizer, device: torch.device) -> None:
        self.optimizer = optimizer
        self.tensors: list[dict[str, Tensor]] = []
        self.baked: list[dict[str, Any]] = []
        for group in optimizer.param_groups:
            dtype = group["params"][0].dtype
            own = {
                k: torch.tensor(float(group[k]), device=device, dtype=dtype)
                for k in DEVICE_OPTIONS
                if k in group
            }
            for k, t in own.items():
                group[k] = t
            self.tensors.append(own)
        for group in optimizer.param_groups:
            if "initial_rho" in group and isinstance(group["initial_rho"], Tensor):
                group["initial_rho"] = float(group["initial_rho"])
        base = getattr(optimizer, "base_optimizer", optimizer)
        if isinstance(base, torch.optim.SGD):
            for group in base.param_groups:  # tensor lr read on the device: fused SGD
                group["fused"], group["foreach"] = True, False
        self.baked = [_baked(g) for g in optimizer.param_groups]

    @torch.no_grad()
    def sync(self) -> None:
        """Put this step's values into the tensors; refuse a changed baked option."""
        for i, (group, own) in enumerate(zip(self.optimizer.param_groups, self.tensors)):
            for k, t in own.items():
                value = group[k]
                if value is not t:
                    if isinstance(value, Tensor):
                        t.copy_(value)
                    else:
                        t.fill_(float(value))
                    group[k] = t
            if "initial_rho" in group and group["initial_rho"] is own.get("rho"):
                group["initial_rho"] = float(own["rho"])  # never alias the live tensor
            now = _baked(group)
            if now != self.baked[i]:
                changed = sorted(k for k in now if now[k] != self.baked[i].get(k))
                raise CaptureError(
                    f"parameter group {i}: {changed} changed after capture; they are baked "
                    "into the CUDA graph (only lr and rho may change): capture again"
                )


def _baked(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k not in _SKIP_KEYS}


class StepProgram:
    """The step a graph captures, runnable eagerly: static input buffers, device-tensor
    ``lr``/``rho``, and one closure ``loss_fn(model(x).float(), y)`` under autocast (float64
    logits stay float64).

    Returns ``(losses, logits)`` (detached) of the forward at ``theta``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        model: nn.Module,
        loss_fn: LossFn,
        x_example: Tensor,
        y_example: Tensor,
        *,
        autocast: torch.dtype | None = None,
    ) -> None:
        if x_example.shape[:1] != y_example.shape[:1] or y_example.ndim != 1:
            raise CaptureError(
                f"x_example {tuple(x_example.shape)} and y_example {tuple(y_example.shape)} "
                "must hold one label per sample"
            )
        self.optimizer, self.model, self.loss_fn = optimizer, model, loss_fn
        self.autocast = autocast
        self.x = x_example.detach().clone()
        self.y = y_example.detach().clone()
        self.options = DeviceOptions(optimizer, x_example.device)
        self.sam_family = _is_method(optimizer)  # a method's step(closure, y), else torch's

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast is None or self.autocast == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.x.device.type, dtype=self.autocast, cache_enabled=False)

    def run(self, x: Tensor | None = None, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One step on ``(x, y)`` (default: the static buffers)."""
        x = self.x if x is None else x
        y = self.y if y is None else y

        def closure() -> tuple[Tensor, Tensor]:
            with self._autocast():
                logits = self.model(x)
            wide = logits if logits.dtype == torch.float64 else logits.float()
            return self.loss_fn(wide, y), logits.detach()

        if self.sam_family:
            step: Any = self.optimizer.step
            losses, logits = step(closure, y)
            return losses, logits
        self.optimizer.zero_grad(set_to_none=False)
        losses, logits = closure()
        (losses.sum() / losses.shape[0]).backward()
        self.optimizer.step()
        return losses.detach(), logits

    def check_batch(self, x: Tensor, y: Tensor) -> None:
        """Refuse a batch whose shape, dtype or device differs from the captured one."""
        for name, got, want in (("x", x, self.x), ("y", y, self.y)):
            if got.shape != want.shape or got.dtype != want.dtype or got.device != want.device:
                raise CaptureError(
                    f"{name} is {tuple(got.shape)} {got.dtype} on {got.device}; the step was "
                    f"captured for {tuple(want.shape)} {want.dtype} on {want.device}: run "
                    "this batch with .eager(x, y) or drop it (drop_last)"
                )


class CapturedStep:
    """``optimizer.step(closure, y)`` for a fixed batch shape, captured once in a CUDA
    graph and replayed per batch.

    Args:
        optimizer: a SAM-family optimizer (SAM, ImbSAM, Focal-SAM, plain) built with
            ``strict_checks=False`` (or ``None``), or a plain torch optimizer (SGD;
            Adam/AdamW with ``capturable=True``). Its groups' ``lr`` and ``rho``
            become device tensors, and SGD runs fused.
        model: the module the closure calls (on CUDA, in the mode it trains in).
        loss_fn: ``loss_fn(logits, y)`` -> per-sample losses ``(B,)``.
        x_example, y_example: a batch of the shape, dtype and device to capture.
        autocast: ``torch.bfloat16`` for bf16 autocast, or ``None``.
        warmup: eager steps on a side stream before capture (undone afterwards).

    Calling it with a batch copies the batch into the static buffers and replays the
    graph; it returns ``(losses, logits)``, buffers that the next call overwrites.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        model: nn.Module,
        loss_fn: LossFn,
        x_example: Tensor,
        y_example: Tensor,
        *,
        autocast: torch.dtype | None = None,
        warmup: int = 3,
    ) -> None:
        check_capturable(optimizer, model, x_example, autocast)
        if warmup < 1:
            raise CaptureError(f"warmup must be >= 1 (allocates the state), got {warmup}")
        snapshot = _Snapshot(model, optimizer)
        self.program = StepProgram(
            optimizer, model, loss_fn, x_example, y_example, autocast=autocast
        )
        self.graph = torch.cuda.CUDAGraph()
        try:
            side = torch.cuda.Stream(device=x_example.device)
            side.wait_stream(torch.cuda.current_stream(x_example.device))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    self.program.run()
            torch.cuda.current_stream(x_example.device).wait_stream(side)
            torch.cuda.synchronize(x_example.device)
            with torch.cuda.graph(self.graph):
                self.outputs = self.program.run()
        except RuntimeError as exc:
            snapshot.restore()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CaptureError(f"the step could not be captured in a CUDA graph: {first}") from exc
        snapshot.restore()
        torch.cuda.synchronize(x_example.device)

    @property
    def optimizer(self) -> Optimizer:
        return self.program.optimizer

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Replay the step on ``(x, y)`` (same shape as captured); ``(losses, logits)``."""
        self.program.check_batch(x, y)
        self.program.options.sync()
        self.program.x.copy_(x, non_blocking=True)
        self.program.y.copy_(y, non_blocking=True)
        self.graph.replay()
        self.optimizer._opt_called = True  # type: ignore[attr-defined]  # lr schedulers
        return self.outputs

    def eager(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The same step on a batch of any shape, run eagerly (e.g. the last partial one)."""
        self.program.options.sync()
        return self.program.run(x, y)
