"""The passes of one step of the two-weight rule over ``K >= 1`` micro-batches, strict or
sync-free, sharpness-aware or (an off step of ``sam_every``) not.

For micro-batches ``k = 1..K`` of ``B_k`` samples (``B = sum B_k``)::

    clean:     for each k, at theta: .grad += grad (1/B) sum_n b_n l_n      (g_b, the ascent)
                                     A     += grad (1/B) sum_n a_n l_n      (g_a, set aside)
    ascent:    eps = rho * g_b / ||g_b||  (one norm over the whole g_b), .grad <- A
    perturbed: for each k, at theta + eps: .grad += grad (1/B) sum_n b_n l_n
    update:    theta <- base_step(theta, clip(.grad))         (by the optimizer)

Each micro-batch's clean graph is freed before the next forward. The clean gradient of
micro-batches ``1..K-1`` is set aside by swapping ``.grad`` with a stash; the last one's
``a``-backward runs after the ascent straight into ``.grad``, so ``K = 1`` is exactly the
one-batch step. Strict steps check on the host (raising at once) and skip backward
passes whose weights are all zero; sync-free steps run every pass the rule has and fold
the checks into a device code (:mod:`focalsam.optim.policies.syncfree`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from focalsam.optim.ascent import Ascent
from focalsam.optim.backward import BackwardFn
from focalsam.optim.buffers import zero_grads
from focalsam.optim.errors import AccumulationError
from focalsam.optim.policies.batchnorm import BatchNormPolicy, put_back
from focalsam.optim.policies.ddp import DdpPolicy
from focalsam.optim.policies.scaler import scaled
from focalsam.optim.policies.syncfree import ASCENT, PERTURBED_LOSS, StepGuard
from focalsam.optim.sample_weights import SampleWeights, Weight, weighted_mean
from focalsam.optim.validators import (
    MicroBatch,
    check_logits_width,
    check_losses,
    check_perturbed_losses,
    check_targets,
    checked_values,
    detached,
    losses_of,
)


@dataclass
class StepState:
    """One step in flight: its options, each micro-batch's sharp weights and plan."""

    scaler: torch.amp.GradScaler | None
    strict: bool
    total: int | None  # B = sum B_k (None: read from the one micro-batch's losses)
    backward: BackwardFn
    params: list[Tensor]
    param_groups: list[dict[str, Any]]
    sharp: list[Weight] = field(default_factory=list)
    run_sharp: list[bool] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    stash: list[Tensor | None] | None = None
    perturbed: bool = False
    skip: bool = False  # strict: g_b overflowed in fp16, the scaler skips the step
    ascent_ok: Tensor | None = None  # sync-free with a scaler: g_b was finite


class Accumulator:
    """Runs the passes of a step over its micro-batches with the rule's parts: the
    weights, the ascent, DDP, BatchNorm and the sync-free checks (``guard``).

    It leaves the update in ``.grad`` and ``theta`` at ``theta + eps`` after a
    sharpness-aware step's passes (:meth:`run`); the optimizer restores it and steps.
    ``owner`` names the optimizer in errors.
    """

    def __init__(
        self,
        weights: SampleWeights,
        ascent: Ascent,
        ddp: DdpPolicy,
        bn: BatchNormPolicy,
        guard: StepGuard,
        check_finite: bool,
        owner: str,
    ) -> None:
        self.weights = weights
        self.ascent = ascent
        self.ddp = ddp
        self.bn = bn
        self.guard = guard
        self.check_finite = check_finite
        self.owner = owner

    def run(self, st: StepState, micro: list[MicroBatch], sharp: bool) -> list[Any]:
        """Every micro-batch's clean passes, then (when the ascent moved ``theta``) every
        micro-batch's perturbed pass; off steps of ``sam_every`` (``sharp=False``): one
        pass per micro-batch. Returns each one's first-call output, losses detached."""
        last, outs = len(micro) - 1, []
        for k, (closure, targets) in enumerate(micro):
            # Only the last backward of a step all-reduces under DDP.
            with self.ddp.context(sync=(self.weights.sharp_is_zero or not sharp) and k == last):
                out = closure()
                losses = losses_of(out)
                check_logits_width(out, self.weights.num_classes, self.owner)
                if sharp:
                    self.clean(st, losses, targets, last=k == last)
                else:
                    self.single(st, losses, targets)
            outs.append(detached(out, losses))
        if st.perturbed:
            todo = [k for k, run in enumerate(st.run_sharp) if run]
            for j, k in enumerate(todo):
                kept = None if st.strict else self.bn.keep(st.sharp[k])
                with self.ddp.context(sync=j == len(todo) - 1):
                    self.perturbed(st, k, losses_of(micro[k][0]()))
                put_back(kept)
        return outs

    @torch.no_grad()
    def clean(self, st: StepState, losses: Tensor, targets: Tensor | None, last: bool) -> None:
        """The clean passes of one micro-batch; after the last, the ascent and ``theta + eps``."""
        targets = self._inputs(st, losses, targets)
        a, b = self.weights.per_sample(targets, losses, self.owner)
        if st.strict:
            run_a, run_b = self.weights.passes_to_run(losses, targets, a, b, self.check_finite)
        else:
            run_a, run_b = not self.weights.clean_is_zero, not self.weights.sharp_is_zero
            self.guard.require_inputs(losses, targets, self.weights.num_classes, self.check_finite)
        st.sharp.append(b)
        st.run_sharp.append(run_b)
        assert st.total is not None
        fn, scaler, total = st.backward, st.scaler, st.total
        if run_b:
            with torch.enable_grad():
                fn(scaled(weighted_mean(losses, b, total), scaler), retain_graph=run_a)
        if not last:
            if run_a:
                _swap_stash(st)
                with torch.enable_grad():
                    fn(scaled(weighted_mean(losses, a, total), scaler), retain_graph=False)
                _swap_stash(st)
            return
        ascent = any(st.run_sharp)
        if ascent:
            if not self._ascent(st):
                st.skip = True  # fp16 overflow in g_b: the scaler sees the inf and skips
                return
            zero_grads(st.params)
        _merge_stash(st)
        if run_a:
            with torch.enable_grad():
                fn(scaled(weighted_mean(losses, a, total), scaler), retain_graph=False)
        if ascent:
            self.ascent.perturb()
            self.bn.freeze()
            st.perturbed = True

    @torch.no_grad()
    def single(self, st: StepState, losses: Tensor, targets: Tensor | None) -> None:
        """The one pass of a step with ``eps = 0``: ``.grad += grad (1/B) sum (a_n + b_n) l_n``."""
        targets = self._inputs(st, losses, targets)
        a, b = self.weights.per_sample(targets, losses, self.owner)
        if st.strict:
            checked_values(losses, targets, self.weights.num_classes, self.check_finite)
        else:
            self.guard.require_inputs(losses, targets, self.weights.num_classes, self.check_finite)
        assert st.total is not None
        with torch.enable_grad():
            st.backward(scaled(weighted_mean(losses, a + b, st.total), st.scaler))

    @torch.no_grad()
    def perturbed(self, st: StepState, k: int, losses: Tensor) -> None:
        """The perturbed pass of micro-batch ``k``: ``.grad += grad (1/B) sum b_n l_n(theta + eps)``."""
        if st.strict:
            check_perturbed_losses(losses, st.sizes[k], self.check_finite)
        else:
            check_losses(losses, expected=st.sizes[k])
            if self.check_finite:
                good = torch.isfinite(losses.detach()).all()
                if st.ascent_ok is not None:  # an fp16 overflow in g_b is the scaler's to skip
                    good = good | st.ascent_ok.logical_not()
                self.guard.require(good, PERTURBED_LOSS)
        assert st.total is not None
        with torch.enable_grad():
            st.backward(scaled(weighted_mean(losses, st.sharp[k], st.total), st.scaler))

    # -------------------------------------------------------------- helpers
    @staticmethod
    def _inputs(st: StepState, losses: Tensor, targets: Tensor | None) -> Tensor | None:
        """Check the shapes of a clean forward's losses and labels; note its size."""
        size = check_losses(losses)
        if targets is not None:
            targets = check_targets(targets, size)
        if st.total is None:
            st.total = size
        st.sizes.append(size)
        return targets

    def _ascent(self, st: StepState) -> bool:
        """Write ``eps`` from the gradients in ``.grad``; False if a strict fp16 step
        found them not finite."""
        norm = self.ascent.write(st.params, st.param_groups, st.scaler, st.strict, self.ddp)
        if norm is None:
            return True
        if st.strict:
            return st.scaler is None or bool(torch.isfinite(norm))
        if st.scaler is not None:
            st.ascent_ok = torch.isfinite(norm)
        elif self.check_finite:
            self.guard.require(torch.isfinite(norm), ASCENT)
        return True


def total_size(micro: list[MicroBatch]) -> int | None:
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


def _swap_stash(st: StepState) -> None:
    """Exchange ``.grad`` with the stash (the clean gradient set aside)."""
    if st.stash is None:
        st.stash = [None] * len(st.params)
    stash = st.stash
    for i, p in enumerate(st.params):
        p.grad, stash[i] = stash[i], p.grad


def _merge_stash(st: StepState) -> None:
    """``.grad <- stash`` (``.grad`` is zero here)."""
    if st.stash is None:
        return
    for p, g in zip(st.params, st.stash):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g
        else:
            p.grad.copy_(g)
    st.stash = None
