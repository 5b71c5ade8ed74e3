"""The engine: one update rule with two per-sample weight vectors.

For a batch of ``B`` per-sample losses ``l_n`` with clean weights ``a_n`` and
sharp weights ``b_n``::

    g_b(theta) = grad (1/B) sum_n b_n l_n(theta)
    eps        = rho * g_b / ||g_b||            (adaptive: rho * p^2 g_b / ||p * g_b||)
    g          = grad (1/B) sum_n a_n l_n(theta) + grad (1/B) sum_n b_n l_n(theta + eps)
    theta     <- base_optimizer.step(theta, g)

Plain training is ``a = 1, b = 0``; SAM is ``a = 0, b = 1``; ImbSAM and
Focal-SAM use per-class weights. A backward pass whose weights are all zero is
skipped, so SAM costs 2 forward + 2 backward passes and Focal-SAM 2 + 3.

:meth:`WeightedSAM.step` is the strict one-batch step, written out top to bottom. Each
concern around it is a part the step calls, in a module named for it:

* the weights ``a_n``, ``b_n`` of each sample: :mod:`focalsam.optim.sample_weights`;
* the ascent and the move to ``theta + eps``: :mod:`focalsam.optim.ascent`;
* the fp16 ``GradScaler``: :mod:`focalsam.optim.policies.scaler`;
* DDP's ``no_sync`` and the ascent all-reduce: :mod:`focalsam.optim.policies.ddp`;
* BatchNorm statistics: :mod:`focalsam.optim.policies.batchnorm`;
* gradient accumulation over ``K`` micro-batches (:meth:`WeightedSAM.step_accumulated`),
  which also runs sync-free steps and the off steps of ``sam_every``:
  :mod:`focalsam.optim.policies.accumulation`;
* the sync-free checks (``strict_checks=False``): :mod:`focalsam.optim.policies.syncfree`;
* every-k sharpness-aware steps (``sam_every=k``): :mod:`focalsam.optim.policies.every`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from focalsam.optim.ascent import Ascent
from focalsam.optim.backward import BackwardFn, default_backward
from focalsam.optim.buffers import zero_grads
from focalsam.optim.class_weights import Weights
from focalsam.optim.errors import InvalidHyperparameterError, StepOrderError
from focalsam.optim.policies.accumulation import Accumulator, StepState, total_size
from focalsam.optim.policies.batchnorm import BatchNormPolicy, BatchNormUpdate
from focalsam.optim.policies.ddp import DdpPolicy
from focalsam.optim.policies.every import SamEvery
from focalsam.optim.policies.scaler import active_scaler, base_step, scaled
from focalsam.optim.policies.syncfree import (
    SkipReport,
    StepGuard,
    refuse_unrollbackable,
    strict_now,
)
from focalsam.optim.sample_weights import SampleWeights, weighted_mean
from focalsam.optim.validators import (
    MicroBatch,
    check_logits_width,
    check_losses,
    check_micro_batches,
    check_perturbed_losses,
    check_targets,
    detached,
    losses_of,
    validate_engine_settings,
    validate_rho,
)
from focalsam.optim.wrapped import WrappedOptimizer, trainable

__all__ = ["BatchNormUpdate", "WeightedSAM"]

_NO_CLOSURE = (
    "{name}.step needs a closure returning per-sample losses; "
    "for explicit phases call first_step(losses, targets) and second_step(losses)"
)


class WeightedSAM(WrappedOptimizer):
    """Sharpness-aware minimization with per-class clean and sharp weights.

    ``g = grad mean(a * l)(theta) + grad mean(b * l)(theta + eps)``, with
    ``eps = rho * g_b / ||g_b||`` from ``g_b = grad mean(b * l)(theta)``.

    Args:
        params: parameters or parameter groups (groups may set their own
            ``rho`` and ``adaptive`` besides the base optimizer's options).
        base_optimizer: a ``torch.optim.Optimizer`` class (constructed here on
            the same parameter groups with ``**base_kwargs``), or an already
            constructed instance (then ``params`` must be ``None``).
        clean_weights: ``a`` per class (a sequence of length C) or one number.
        sharp_weights: ``b`` per class or one number.
        rho: radius of the ascent step (>= 0).
        adaptive: ASAM's scale-invariant ascent ``rho * p^2 g / ||p g||``.
        model: the module being trained. Needed for ``bn_update="clean"`` and
            for DDP (its ``no_sync`` wraps the first forward and the clean
            backward passes, so a step does one all-reduce); in sync-free steps
            its buffers are rolled back with the parameters when a step is skipped.
        bn_update: ``"both"`` (default, as the published code) updates
            BatchNorm running statistics in both forward passes; ``"clean"``
            freezes them during the perturbed pass.
        ascent_all_reduce: under DDP, average ``g_b(theta)`` over replicas
            before the ascent, so a DDP run equals one process on the global
            batch (one extra all-reduce per step). Off: ``eps`` is per replica.
            Under FSDP2 every backward averages over the ranks already, so ``eps``
            is the global batch's either way.
        max_grad_norm: clip the final gradient to this norm before the base step.
        check_finite: check that losses (and, in sync-free steps, gradients) are
            finite; a strict step raises :class:`NonFiniteLossError` and takes no step.
        strict_checks: ``True``: check labels and losses on the host (one sync per
            forward), raise at once, skip backward passes whose weights are all zero
            for the batch. ``False``: no host-device sync in :meth:`step` /
            :meth:`step_accumulated`; every pass of the rule runs, the checks fold
            into a device flag and a failed step is undone on the device (parameters,
            the base optimizer's state and ``model``'s buffers keep their values);
            :meth:`take_skip_report` tells (under DDP the replicas agree through one
            more all-reduce of one number per step). ``None`` (default): strict on the CPU,
            sync-free for CUDA parameters when the base optimizer keeps its state on
            the device (torch's Adam family needs ``capturable=True``).
        sam_every: ``k >= 1``. Step ``i`` (counted from 0, saved in the state dict)
            is sharpness-aware when ``i % k == 0``; the others take one pass with
            ``eps = 0``: ``g = grad (1/B) sum_n (a_n + b_n) l_n(theta)`` (plain SGD
            for SAM). ``k = 1`` is the exact rule. ``k > 1`` is an approximation in
            the spirit of periodic SAM (perturb only every k-th step), without
            reusing any gradient; it costs ``1 + 1/k`` (SAM) forward-backward pairs
            per step instead of 2.
        **base_kwargs: options of the base optimizer (``lr``, ``momentum``, ...).

    Use it with :meth:`step` and a closure that runs the forward pass and
    returns per-sample losses, with :meth:`step_accumulated` and one closure per
    micro-batch, or with the explicit phases :meth:`first_step` / :meth:`second_step`
    (always strict, ``sam_every=1`` only).

    A skipped sync-free step leaves state that the base optimizer created in it at
    zero (as good as absent for SGD without dampening and for the Adam family). With an
    fp16 ``GradScaler`` a step is not free of syncs: ``scaler.step`` reads its own
    ``found_inf`` on the host (torch's GradScaler), and an overflow is the scaler's to
    skip, not reported; the model's buffers are rolled back with it only when the
    overflow is in the ascent gradient (as in a strict step, BatchNorm statistics of a
    step the scaler skips are kept). Sync-free steps want bf16 or fp32.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None,
        base_optimizer: type[Optimizer] | Optimizer = torch.optim.SGD,
        *,
        clean_weights: Weights,
        sharp_weights: Weights,
        rho: float = 0.05,
        adaptive: bool = False,
        model: nn.Module | None = None,
        bn_update: BatchNormUpdate = "both",
        ascent_all_reduce: bool = False,
        max_grad_norm: float | None = None,
        check_finite: bool = True,
        strict_checks: bool | None = None,
        sam_every: int = 1,
        **base_kwargs: Any,
    ) -> None:
        validate_rho(rho)
        validate_engine_settings(
            bn_update=bn_update,
            model=model,
            max_grad_norm=max_grad_norm,
            strict_checks=strict_checks,
            sam_every=sam_every,
        )
        weights = SampleWeights(clean_weights, sharp_weights)
        self._wrap(params, base_optimizer, {"rho": rho, "adaptive": adaptive}, base_kwargs)
        if strict_checks is False:
            refuse_unrollbackable(self.base_optimizer, trainable(self.param_groups))
        self.strict_checks = strict_checks
        self.max_grad_norm = max_grad_norm
        self.check_finite = check_finite
        name = type(self).__name__
        self._weights = weights
        self._ascent = Ascent()
        self._ddp = DdpPolicy(model, ascent_all_reduce, name)
        self._bn = BatchNormPolicy(model, bn_update, weights.sharp_can_vanish)
        self._guard = StepGuard()
        self._every = SamEvery(sam_every)
        self._accumulator = Accumulator(
            weights, self._ascent, self._ddp, self._bn, self._guard, check_finite, name
        )
        self._pending: StepState | None = None  # between first_step and second_step

    @property
    def clean_weights(self) -> float | Tensor:
        """``a``: one number, or one weight per class (float64, CPU)."""
        return self._weights.clean

    @property
    def sharp_weights(self) -> float | Tensor:
        """``b``: one number, or one weight per class (float64, CPU)."""
        return self._weights.sharp

    @property
    def num_classes(self) -> int | None:
        """The number of classes of per-class weights (``None``: both are numbers)."""
        return self._weights.num_classes

    @property
    def sam_every(self) -> int:
        """``k``: every k-th step is sharpness-aware."""
        return self._every.every

    # ------------------------------------------------------------------ API
    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Any] | None = None,
        targets: Tensor | None = None,
        *,
        scaler: torch.amp.GradScaler | None = None,
        backward: BackwardFn | None = None,
    ) -> Any:
        """One full update; returns the first call's output with its losses detached.

        ``closure()`` runs the forward pass and returns the per-sample losses ``(B,)`` (or
        a tuple starting with them); it is called at ``theta`` and, unless the batch's
        sharp weights are all zero, at ``theta + eps``. ``targets``: the labels ``(B,)``
        that pick each sample's weights; ``scaler``: an fp16 ``GradScaler``;
        ``backward(loss, retain_graph=False)`` replaces ``loss.backward``. Gradients are
        zeroed here. Below is the strict step; sync-free steps and off steps of
        ``sam_every`` run as one micro-batch of :meth:`step_accumulated`.
        """
        if closure is None:
            raise StepOrderError(_NO_CLOSURE.format(name=type(self).__name__))
        params = self._params_for("step")
        strict = strict_now(self.strict_checks, self.base_optimizer, params)
        if not strict or not self._every.sharp_now():
            return self._accumulated([(closure, targets)], params, strict, scaler, backward)[0]
        scaler, backward = active_scaler(scaler), backward or default_backward
        self._guard.calls += 1  # strict steps are counted on the host
        zero_grads(params)
        w, skip = self._weights, False
        with self._ddp.context(sync=w.sharp_is_zero):  # DDP: the clean passes do not all-reduce
            out = closure()  # l_n(theta)
            losses = losses_of(out)
            check_logits_width(out, w.num_classes, type(self).__name__)  # C = len(counts)
            size = check_losses(losses)
            targets = None if targets is None else check_targets(targets, size)
            a, b = w.per_sample(targets, losses, type(self).__name__)  # a_n = a[y_n], b_n = b[y_n]
            run_a, run_b = w.passes_to_run(losses, targets, a, b, self.check_finite)  # one sync
            if run_b:  # .grad = g_b = grad (1/B) sum_n b_n l_n(theta)
                backward(scaled(weighted_mean(losses, b, size), scaler), retain_graph=run_a)
                # eps = rho g_b / ||g_b||  (ASAM: rho p^2 g_b / ||p g_b||), g_b unscaled first
                norm = self._ascent.write(params, self.param_groups, scaler, True, self._ddp)
                # an fp16 overflow in g_b: no more passes, the scaler sees the inf and skips
                skip = scaler is not None and norm is not None and not bool(torch.isfinite(norm))
                if not skip:
                    zero_grads(params)
            if run_a and not skip:  # .grad = g_a = grad (1/B) sum_n a_n l_n(theta)
                backward(scaled(weighted_mean(losses, a, size), scaler), retain_graph=False)
        if run_b and not skip:  # theta + eps (BatchNorm held with bn_update="clean")
            with self._ascent.perturbed(), self._bn.frozen():
                perturbed = losses_of(closure())  # l_n(theta + eps)
                check_perturbed_losses(perturbed, size, self.check_finite)
                # .grad += grad (1/B) sum_n b_n l_n(theta + eps)
                backward(scaled(weighted_mean(perturbed, b, size), scaler))
        # theta is restored; clip the gradient and take the base optimizer's step
        self._opt_called = True  # tells lr schedulers that the optimizer stepped
        with_grad = [p for p in params if p.grad is not None]
        base_step(self.base_optimizer, with_grad, scaler, self.max_grad_norm, skip)
        self._every.advance()
        return detached(out, losses)

    def step_accumulated(
        self,
        micro: Sequence[MicroBatch],
        *,
        scaler: torch.amp.GradScaler | None = None,
        backward: BackwardFn | None = None,
    ) -> list[Any]:
        """One update on ``K`` micro-batches, equal to :meth:`step` on their concatenation.

        ``micro``: ``(closure_k, targets_k)`` pairs; ``closure_k()`` runs the forward
        pass on micro-batch ``k`` and returns its per-sample losses (or a tuple starting
        with them). With ``B = sum_k B_k``: every micro-batch's clean passes at
        ``theta`` accumulate ``g_b`` and ``g_a`` (one graph held at a time); one
        ``eps`` from the whole ``g_b`` (one norm); every micro-batch's forward and
        backward at ``theta + eps``; one base step. Each closure is called twice
        (once on off steps of ``sam_every``, and in a strict step when all its sharp
        weights are zero). With ``K > 1`` each ``targets_k`` must
        be given (its length ``B_k`` makes ``B`` before the first backward; SAM
        ignores the values). Under DDP only the last backward all-reduces.
        BatchNorm statistics see each micro-batch apart, so models with BatchNorm
        match the one-batch step only approximately. ``K = 1`` is :meth:`step`.

        Returns each micro-batch's first-call output, losses detached.

        Example:
            >>> model = torch.nn.Linear(4, 3)
            >>> opt = WeightedSAM(model.parameters(), torch.optim.SGD, clean_weights=0.0,
            ...                   sharp_weights=1.0, rho=0.05, lr=0.1)
            >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
            >>> def micro(xs, ys):
            ...     ce = torch.nn.functional.cross_entropy
            ...     return (lambda: ce(model(xs), ys, reduction="none")), ys
            >>> outs = opt.step_accumulated([micro(x[:5], y[:5]), micro(x[5:], y[5:])])
            >>> [o.shape[0] for o in outs]
            [5, 3]
        """
        checked = check_micro_batches(micro)
        params = self._params_for("step_accumulated")
        strict = strict_now(self.strict_checks, self.base_optimizer, params)
        return self._accumulated(checked, params, strict, scaler, backward)

    def take_skip_report(self) -> SkipReport | None:
        """The steps skipped on the device since the last call, or ``None`` (one host
        sync; it resets the counts). Strict steps raise instead and are never counted.

        A training loop calls it at its natural sync points (epoch end, a log
        interval) and stops the run with ``report.error()``, the error a strict step
        would have raised.
        """
        return self._guard.report(self.num_classes)

    @property
    def model(self) -> nn.Module | None:
        """The module being trained (DDP's ``no_sync``, BatchNorm handling, sync-free
        roll-back of its buffers)."""
        return self._ddp.model

    @model.setter
    def model(self, model: nn.Module | None) -> None:
        """Point the step at another wrapper of the same module (e.g. the DDP model a
        trainer builds after the optimizer)."""
        self._ddp.model = model
        self._bn.model = model

    def clean_context(self) -> contextlib.AbstractContextManager[Any]:
        """Context for the first forward and the clean backward passes.

        Under DDP (``model`` has ``no_sync``) it is ``model.no_sync()``, so only
        the perturbed backward all-reduces; otherwise it does nothing. When the
        rule never takes a perturbed pass (all sharp weights zero), the clean
        backward must synchronize and this is a no-op too.
        """
        return self._ddp.context(sync=self._weights.sharp_is_zero)

    def first_step(
        self,
        losses: Tensor,
        targets: Tensor | None = None,
        *,
        scaler: torch.amp.GradScaler | None = None,
        backward: BackwardFn | None = None,
    ) -> bool:
        """Clean phase: ascent direction, clean gradient, move to ``theta + eps``.

        ``losses`` are the per-sample losses of a forward pass at ``theta``
        (run it inside :meth:`clean_context` under DDP). Returns ``True`` when
        the parameters were perturbed and :meth:`second_step` needs the losses
        of a forward pass at ``theta + eps``; ``False`` when it needs none.
        The explicit phases always check strictly and need ``sam_every=1``.
        """
        if self._pending is not None:
            raise StepOrderError(
                "first_step called twice without second_step; call second_step to finish"
            )
        if self.sam_every != 1:
            raise InvalidHyperparameterError(
                f"sam_every={self.sam_every}: the explicit phases always take the "
                "sharpness-aware step; use step() or step_accumulated()"
            )
        params = trainable(self.param_groups)
        st = self._open(params, active_scaler(scaler), True, None, backward)
        self._accumulator.clean(st, losses, targets, last=True)
        self._pending = st
        return st.perturbed

    def second_step(
        self, losses: Tensor | None = None, *, backward: BackwardFn | None = None
    ) -> None:
        """Perturbed phase and update: add the sharp gradient at ``theta + eps``,
        restore ``theta``, clip, and take the base optimizer's step.

        ``losses``: per-sample losses of a forward pass at ``theta + eps``, or
        ``None`` when :meth:`first_step` returned ``False``.
        """
        st, self._pending = self._pending, None
        if st is None:
            raise StepOrderError("second_step called before first_step")
        st.backward = backward or default_backward
        try:
            if st.perturbed:
                if losses is None:
                    raise StepOrderError(
                        "first_step perturbed the parameters: second_step needs the losses "
                        "of a forward pass at theta + eps"
                    )
                self._accumulator.perturbed(st, 0, losses)
            elif losses is not None:
                raise StepOrderError(
                    "first_step returned False (no perturbed pass): call second_step(None)"
                )
        except BaseException:
            self._restore()
            raise
        self._close(st)
        self._every.advance()

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state; with ``sam_every > 1`` also the step count."""
        return self._every.save(super().state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` (the step count of ``sam_every`` when it holds one,
        else the count restarts at 0)."""
        state_dict, steps = self._every.read(state_dict)
        super().load_state_dict(state_dict)
        self._every.steps = steps

    # -------------------------------------------------------------- helpers
    def _params_for(self, what: str) -> list[Tensor]:
        """The trainable parameters, once ``what`` may run (not between the explicit phases)."""
        if self._pending is not None:
            raise StepOrderError(
                f"{what} called between first_step and second_step; call second_step to finish"
            )
        return trainable(self.param_groups)

    def _accumulated(
        self,
        micro: list[MicroBatch],
        params: list[Tensor],
        strict: bool,
        scaler: torch.amp.GradScaler | None,
        backward: BackwardFn | None,
    ) -> list[Any]:
        """One step over the micro-batches by the accumulator, then the update."""
        total = total_size(micro)
        scaler = active_scaler(scaler)
        if strict:
            self._guard.calls += 1
        st = self._open(params, scaler, strict, total, backward)
        try:
            outs = self._accumulator.run(st, micro, sharp=self._every.sharp_now())
        except BaseException:
            self._restore()
            raise
        self._close(st)
        self._every.advance()
        return outs

    def _open(
        self,
        params: list[Tensor],
        scaler: torch.amp.GradScaler | None,
        strict: bool,
        total: int | None,
        backward: BackwardFn | None,
    ) -> StepState:
        """Begin a step of the accumulator: sync-free, save what it may change; zero grads."""
        if not strict:
            self._guard.begin(self.base_optimizer, params, self._ddp.model)
        zero_grads(params)
        fn = backward or default_backward
        return StepState(scaler, strict, total, fn, params, self.param_groups)

    def _restore(self) -> None:
        """``theta`` back from ``theta + eps``, BatchNorm statistics released."""
        self._ascent.restore()
        self._bn.unfreeze()

    @torch.no_grad()
    def _close(self, st: StepState) -> None:
        """Restore ``theta``, clip, take the base step; sync-free: undo it if a check failed."""
        self._restore()
        self._opt_called = True  # tells lr schedulers that the optimizer stepped
        with_grad = [p for p in st.params if p.grad is not None]
        if st.strict:
            base_step(self.base_optimizer, with_grad, st.scaler, self.max_grad_norm, st.skip)
            return
        if self.check_finite and st.scaler is None:
            self._guard.require_finite_grads(st.params)
        base_step(self.base_optimizer, with_grad, st.scaler, self.max_grad_norm)
        skip = None if st.ascent_ok is None else st.ascent_ok.logical_not()
        self._guard.end(self.base_optimizer, st.params[0], skip)
