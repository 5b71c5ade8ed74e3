"""One step of the two-weight rule over its micro-batches: which passes run, in which
DDP context, strict or sync-free, sharpness-aware or (``sam_every``) not.

The passes themselves and their math: :mod:`focalsam.optim._passes`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from focalsam.optim._guard import host_state_reason
from focalsam.optim._passes import SharpPasses, StepState
from focalsam.optim._step import (
    BackwardFn,
    active_scaler,
    check_targets,
    default_backward,
    is_sharded,
    losses_of,
)
from focalsam.optim.errors import AccumulationError, InvalidHyperparameterError, StepOrderError

MicroBatch = tuple[Callable[[], Any], Tensor | None]

IDLE, CLEAN_DONE, PERTURBED = "idle", "clean-done", "perturbed"


class StepRunner(SharpPasses):
    """Base of :class:`~focalsam.optim.engine.WeightedSAM`: runs a step's passes."""

    strict_checks: bool | None
    sam_every: int
    _sharp_can_vanish: bool
    _steps: int
    _phase: str
    _pending_step: StepState | None

    def _run(
        self,
        micro: list[MicroBatch],
        scaler: torch.amp.GradScaler | None,
        backward: BackwardFn | None,
    ) -> list[Any]:
        """One step over the micro-batches; each one's first-call output, losses detached.

        Sharpness-aware steps: every micro-batch's clean passes, then (when the ascent
        moved ``theta``) every micro-batch's perturbed pass, then the update. Off steps
        of ``sam_every``: one pass per micro-batch, then the update.
        """
        if self._phase != IDLE:
            raise StepOrderError(
                "step called between first_step and second_step; call second_step to finish"
            )
        total = _total(micro)
        scaler = active_scaler(scaler)
        params = self._trainable()
        strict = self._strict_now(params)
        if strict:
            self._guard.calls += 1
        sharp = self._steps % self.sam_every == 0
        st = self._open(scaler, strict, total, backward or default_backward)
        last, outs = len(micro) - 1, []
        try:
            for k, (closure, targets) in enumerate(micro):
                # Only the last backward of a step all-reduces under DDP.
                with self._context(sync=(self._sharp_is_zero or not sharp) and k == last):
                    out = closure()
                    losses = losses_of(out)
                    if sharp:
                        self._clean(st, losses, targets, last=k == last)
                    else:
                        self._single(st, losses, targets)
                outs.append(_detached(out, losses))
            if st.perturbed:
                todo = [k for k, run in enumerate(st.run_sharp) if run]
                for j, k in enumerate(todo):
                    kept = None if st.strict else self._keep_buffers(st.sharp[k])
                    with self._context(sync=j == len(todo) - 1):
                        self._sharp(st, k, losses_of(micro[k][0]()))
                    if kept is not None:
                        _put_back(*kept)
        except BaseException:
            self._restore()
            raise
        self._close(st)
        self._steps += 1
        return outs

    @torch.no_grad()
    def _keep_buffers(self, sharp: Any) -> tuple[list[Tensor], list[Tensor], Tensor] | None:
        """Sync-free: a micro-batch whose sharp weights are all zero (ImbSAM with no tail
        sample) still runs its perturbed forward, which a strict step skips; its buffers
        (BatchNorm statistics) are kept to be put back, so both modes train the same."""
        model = getattr(self, "model", None)
        if model is None or not self._sharp_can_vanish or not isinstance(sharp, Tensor):
            return None  # Focal-SAM's sharp weights are never all zero: nothing to keep
        buffers = list(model.buffers())
        if not buffers:
            return None
        return buffers, [b.clone() for b in buffers], sharp.ne(0).any()

    def _strict_now(self, params: list[Tensor]) -> bool:
        """Whether this step checks on the host (see ``strict_checks``)."""
        if not params:
            return True
        if self.strict_checks is not None:
            return self.strict_checks
        if is_sharded(params):
            return True  # FSDP2: a sync-free step cannot roll back DTensor shards
        if params[0].device.type != "cuda":
            return True
        return host_state_reason(self.base_optimizer, params[0].device) is not None


def validate_step_options(strict_checks: Any, sam_every: Any) -> None:
    """``strict_checks`` is ``None``, ``True`` or ``False``; ``sam_every`` an integer >= 1."""
    if strict_checks is not None and not isinstance(strict_checks, bool):
        raise InvalidHyperparameterError(
            f"strict_checks must be None (strict on the CPU, sync-free on CUDA), True or "
            f"False, got {strict_checks!r}"
        )
    if isinstance(sam_every, bool) or not isinstance(sam_every, int) or sam_every < 1:
        raise InvalidHyperparameterError(
            f"sam_every must be an integer >= 1 (1: every step is sharpness-aware), "
            f"got {sam_every!r}"
        )


def check_micro_batches(micro: Any) -> list[MicroBatch]:
    """``micro`` as a list of ``(closure, targets)`` pairs, or :class:`AccumulationError`."""
    if not isinstance(micro, Sequence) or isinstance(micro, str) or not micro:
        raise AccumulationError(
            "step_accumulated needs a non-empty sequence of (closure, targets) pairs, "
            f"got {type(micro).__name__}"
            + (" (empty)" if isinstance(micro, Sequence) and not micro else "")
        )
    for k, pair in enumerate(micro):
        if not isinstance(pair, tuple) or len(pair) != 2 or not callable(pair[0]):
            raise AccumulationError(
                f"micro-batch {k} must be a (closure, targets) pair with a callable "
                f"closure, got {type(pair).__name__}"
            )
    return list(micro)


def _total(micro: list[MicroBatch]) -> int | None:
    """``B = sum B_k`` from the labels (``None`` for one micro-batch: read from its losses)."""
    if len(micro) == 1:
        return None
    total = 0
    for k, (_, targets) in enumerate(micro):
        if targets is None:
            raise AccumulationError(
                f"step_accumulated over {len(micro)} micro-batches needs each one's labels "
                f"(micro-batch {k} has targets=None): B = sum B_k divides every backward, "
                "so it is read from them before the first forward"
            )
        total += check_targets(targets).shape[0]
    return total


@torch.no_grad()
def _put_back(buffers: list[Tensor], saved: list[Tensor], ran: Tensor) -> None:
    """Each buffer as it is when ``ran`` (a device bool), else as it was saved."""
    for buf, old in zip(buffers, saved):
        buf.copy_(torch.where(ran, buf, old))


def _detached(out: Any, losses: Tensor) -> Any:
    """A closure's output with its losses detached."""
    return (losses.detach(), *out[1:]) if isinstance(out, tuple) else losses.detach()
