"""The passes of one step of the two-weight rule, over ``K >= 1`` micro-batches.

For micro-batches ``k = 1..K`` of ``B_k`` samples (``B = sum B_k``)::

    clean:     for each k, at theta: .grad += grad (1/B) sum_n b_n l_n      (g_b, the ascent)
                                     A     += grad (1/B) sum_n a_n l_n      (g_a, set aside)
    ascent:    eps = rho * g_b / ||g_b||  (one norm over the whole g_b), .grad <- A
    perturbed: for each k, at theta + eps: .grad += grad (1/B) sum_n b_n l_n
    update:    theta <- base_step(theta, clip(.grad))

Each micro-batch's clean graph is freed before the next forward. The clean gradient of
micro-batches ``1..K-1`` is set aside by swapping ``.grad`` with a stash; the last one's
``a``-backward runs after the ascent straight into ``.grad``, so ``K = 1`` is exactly the
one-batch step. Strict steps check on the host (raising at once) and skip backward
passes whose weights are all zero; sync-free steps run every pass the rule has and fold
the checks into a device code (:mod:`focalsam.optim._guard`).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from focalsam.optim._guard import ASCENT, GRADIENT, LOSS, PERTURBED_LOSS, StepGuard
from focalsam.optim._step import (
    TINY,
    BackwardFn,
    BufferPool,
    GradAllReduce,
    check_losses,
    check_targets,
    checked_values,
    copy_all,
    distributed,
    ensure_finite,
    zero_grads,
)
from focalsam.optim.class_weights import Weights
from focalsam.optim.wrapper import WrappedOptimizer

Weight = float | Tensor


@dataclass
class StepState:
    """One step in flight: its options, each micro-batch's sharp weights and plan."""

    scaler: torch.amp.GradScaler | None
    strict: bool
    total: int | None  # B = sum B_k (None: read from the one micro-batch's losses)
    backward: BackwardFn
    params: list[Tensor]
    sharp: list[Weight] = field(default_factory=list)
    run_sharp: list[bool] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    stash: list[Tensor | None] | None = None
    perturbed: bool = False
    skip: bool = False  # strict: g_b overflowed in fp16, the scaler skips the step
    ascent_ok: Tensor | None = None  # sync-free with a scaler: g_b was finite


class SharpPasses(WrappedOptimizer):
    """Base of :class:`~focalsam.optim.engine.WeightedSAM`: the passes of a step; the
    subclass sets the attributes below and gives each sample's weights."""

    clean_weights: Weights
    sharp_weights: Weights
    num_classes: int | None
    check_finite: bool
    ascent_all_reduce: bool
    bn_update: str
    _clean_is_zero: bool
    _sharp_is_zero: bool
    _eps: BufferPool
    _backup: BufferPool
    _all_reduce: GradAllReduce
    _guard: StepGuard
    _pending_params: list[Tensor]
    _perturbed_now: bool
    _warned_no_model: bool

    def _sample_weights(
        self, targets: Tensor | None, losses: Tensor
    ) -> tuple[float | Tensor, float | Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------- contexts
    def _context(self, sync: bool) -> contextlib.AbstractContextManager[Any]:
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
                    f"{type(self).__name__} runs under torch.distributed without a DDP model: "
                    "pass model=ddp_model so the clean passes skip their all-reduce "
                    "(one all-reduce per step instead of three)",
                    stacklevel=4,
                )
            return contextlib.nullcontext()
        return no_sync()

    # --------------------------------------------------------------- phases
    def _open(
        self,
        scaler: torch.amp.GradScaler | None,
        strict: bool,
        total: int | None,
        backward: BackwardFn,
    ) -> StepState:
        params = self._trainable()
        if not strict:
            self._guard.begin(self.base_optimizer, params, self.model)
        zero_grads(params)
        return StepState(scaler, strict, total, backward, params)

    @torch.no_grad()
    def _inputs(
        self, st: StepState, losses: Tensor, targets: Tensor | None
    ) -> tuple[int, Tensor | None]:
        """Check the shapes of a clean forward's losses and labels; the micro-batch size."""
        size = check_losses(losses)
        if targets is not None:
            targets = check_targets(targets, size)
        if st.total is None:
            st.total = size
        st.sizes.append(size)
        return size, targets

    @torch.no_grad()
    def _clean(self, st: StepState, losses: Tensor, targets: Tensor | None, last: bool) -> None:
        """The clean passes of one micro-batch; after the last, the ascent and ``theta + eps``."""
        _, targets = self._inputs(st, losses, targets)
        a, b = self._sample_weights(targets, losses)
        if st.strict:
            run_a, run_b = self._decide(losses, targets, a, b)
        else:
            run_a, run_b = not self._clean_is_zero, not self._sharp_is_zero
            self._check_inputs(losses, targets)
        st.sharp.append(b)
        st.run_sharp.append(run_b)
        assert st.total is not None
        fn, scaler, total = st.backward, st.scaler, st.total
        if run_b:
            with torch.enable_grad():
                fn(_scaled(_weighted_mean(losses, b, total), scaler), retain_graph=run_a)
        if not last:
            if run_a:
                self._swap_stash(st)
                with torch.enable_grad():
                    fn(_scaled(_weighted_mean(losses, a, total), scaler), retain_graph=False)
                self._swap_stash(st)
            return
        ascent = any(st.run_sharp)
        if ascent:
            if not self._ascent(st):
                st.skip = True  # fp16 overflow in g_b: the scaler sees the inf and skips
                return
            zero_grads(st.params)
        self._merge_stash(st)
        if run_a:
            with torch.enable_grad():
                fn(_scaled(_weighted_mean(losses, a, total), scaler), retain_graph=False)
        if ascent:
            self._perturb()
            st.perturbed = True

    @torch.no_grad()
    def _single(self, st: StepState, losses: Tensor, targets: Tensor | None) -> None:
        """The one pass of a step with ``eps = 0``: ``.grad += grad (1/B) sum (a_n + b_n) l_n``."""
        _, targets = self._inputs(st, losses, targets)
        a, b = self._sample_weights(targets, losses)
        if st.strict:
            checked_values(losses, targets, self.num_classes, self.check_finite)
        else:
            self._check_inputs(losses, targets)
        assert st.total is not None
        with torch.enable_grad():
            st.backward(_scaled(_weighted_mean(losses, a + b, st.total), st.scaler))

    @torch.no_grad()
    def _sharp(self, st: StepState, k: int, losses: Tensor) -> None:
        """The perturbed pass of micro-batch ``k``: ``.grad += grad (1/B) sum b_n l_n(theta + eps)``."""
        check_losses(losses, expected=st.sizes[k])
        if st.strict:
            if self.check_finite:
                ensure_finite(
                    losses,
                    "the forward pass at theta + eps returned non-finite losses; "
                    "the parameters were restored and no step was taken",
                )
        elif self.check_finite:
            good = torch.isfinite(losses.detach()).all()
            if st.ascent_ok is not None:  # an fp16 overflow in g_b is the scaler's to skip
                good = good | st.ascent_ok.logical_not()
            self._guard.require(good, PERTURBED_LOSS)
        assert st.total is not None
        with torch.enable_grad():
            st.backward(_scaled(_weighted_mean(losses, st.sharp[k], st.total), st.scaler))

    @torch.no_grad()
    def _close(self, st: StepState) -> None:
        """Restore ``theta``, clip, take the base step; sync-free: undo it if a check failed."""
        self._restore()
        if st.strict:
            self._update(st.scaler, skip=st.skip)
            return
        if self.check_finite and st.scaler is None:
            grads = [p.grad for p in st.params if p.grad is not None]
            if grads:
                peak = torch.stack(torch._foreach_norm(grads, float("inf")))
                self._guard.require(torch.isfinite(peak).all(), GRADIENT)
        self._update(st.scaler)
        skip = None if st.ascent_ok is None else st.ascent_ok.logical_not()
        self._guard.end(self.base_optimizer, st.params[0], skip)

    # -------------------------------------------------------------- helpers
    def _check_inputs(self, losses: Tensor, targets: Tensor | None) -> None:
        """Sync-free: labels in range and finite losses, into the step's device code."""
        if self.num_classes is not None and targets is not None:
            self._guard.require_labels(targets, self.num_classes)
        if self.check_finite:
            self._guard.require(torch.isfinite(losses.detach()).all(), LOSS)

    def _decide(
        self, losses: Tensor, targets: Tensor | None, a: float | Tensor, b: float | Tensor
    ) -> tuple[bool, bool]:
        """Check labels and losses, and decide which backward passes to run (one sync)."""
        # Skipping on this batch's weights is data dependent: under DDP every
        # replica must take the same passes, so only skip what is zero for all.
        dynamic = not distributed()
        extra = [w.ne(0).any() for w in (a, b) if dynamic and isinstance(w, Tensor)]
        values = checked_values(losses, targets, self.num_classes, self.check_finite, extra)
        run_a, run_b = not self._clean_is_zero, not self._sharp_is_zero
        if dynamic and isinstance(a, Tensor):
            run_a = bool(values.pop(0))
        if dynamic and isinstance(b, Tensor):
            run_b = bool(values.pop(0))
        return run_a, run_b

    @staticmethod
    def _swap_stash(st: StepState) -> None:
        """Exchange ``.grad`` with the stash (the clean gradient set aside)."""
        if st.stash is None:
            st.stash = [None] * len(st.params)
        stash = st.stash
        for i, p in enumerate(st.params):
            p.grad, stash[i] = stash[i], p.grad

    @staticmethod
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

    def _ascent(self, st: StepState) -> bool:
        """Write ``eps`` from the gradients in ``.grad``; False if a strict fp16 step
        found them not finite."""
        params, scaler = st.params, st.scaler
        with_grad = [p for p in params if p.grad is not None]
        if not with_grad:
            self._pending_params = []
            return True
        grads = [p.grad for p in with_grad]
        if scaler is not None:
            if st.strict:
                inv_scale = 1.0 / float(scaler.get_scale())
                if inv_scale != 1.0:
                    torch._foreach_mul_(grads, inv_scale)  # type: ignore[arg-type]
            else:
                torch._foreach_mul_(grads, _inv_scale(scaler))  # type: ignore[arg-type]
        if self.ascent_all_reduce and distributed():
            self._all_reduce(params)
            with_grad = params
            grads = [p.grad for p in params]
        eps = self._eps(with_grad)
        copy_all(eps, grads)  # type: ignore[arg-type]
        # Group the parameters by param group (rho, adaptive may differ per group).
        groups = self._groups_of(with_grad)
        for group, idx in groups:
            if group["adaptive"]:
                torch._foreach_mul_([eps[i] for i in idx], [with_grad[i] for i in idx])
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(eps)))
        if st.strict:
            if scaler is not None and not bool(torch.isfinite(norm)):
                return False
        elif scaler is not None:
            st.ascent_ok = torch.isfinite(norm)
        elif self.check_finite:
            self._guard.require(torch.isfinite(norm), ASCENT)
        for group, idx in groups:
            sub = [eps[i] for i in idx]
            if group["adaptive"]:
                torch._foreach_mul_(sub, [with_grad[i] for i in idx])
            torch._foreach_mul_(sub, group["rho"] / (norm + TINY))
        self._pending_params = with_grad
        return True

    def _groups_of(self, params: list[Tensor]) -> list[tuple[dict[str, Any], list[int]]]:
        if len(self.param_groups) == 1:
            return [(self.param_groups[0], list(range(len(params))))]
        owner = {p: gi for gi, g in enumerate(self.param_groups) for p in g["params"]}
        out: dict[int, list[int]] = {}
        for i, p in enumerate(params):
            out.setdefault(owner[p], []).append(i)
        return [(self.param_groups[gi], idx) for gi, idx in out.items()]

    def _perturb(self) -> None:
        params = self._pending_params
        backup = self._backup(params)
        copy_all(backup, params)
        torch._foreach_add_(params, [self._eps[p] for p in params])
        self._perturbed_now = True
        if self.bn_update == "clean":
            self._freeze_bn()

    @torch.no_grad()
    def _restore(self) -> None:
        if not self._perturbed_now:
            return
        params = self._pending_params
        copy_all(params, [self._backup[p] for p in params])
        self._perturbed_now = False
        self._unfreeze_bn()


def _weighted_mean(losses: Tensor, weights: float | Tensor, batch: int) -> Tensor:
    """``(1/B) sum_n w_n l_n``."""
    if isinstance(weights, Tensor):
        return torch.dot(losses, weights) / batch
    if weights == 1.0:
        return losses.sum() / batch
    return losses.sum() * weights / batch


def _scaled(loss: Tensor, scaler: torch.amp.GradScaler | None) -> Tensor:
    return loss if scaler is None else scaler.scale(loss)


def _inv_scale(scaler: torch.amp.GradScaler) -> Tensor | float:
    """``1 / scale`` on the device, without reading the scale on the host."""
    scale = getattr(scaler, "_scale", None)
    if not isinstance(scale, Tensor):
        return 1.0 / float(scaler.get_scale())
    return scale.double().reciprocal().float()
