"""The shared engine: one update rule with two per-sample weight vectors.

For a batch of ``B`` per-sample losses ``l_n`` with clean weights ``a_n`` and
sharp weights ``b_n`` (DESIGN section 3)::

    g_b(theta) = grad (1/B) sum_n b_n l_n(theta)
    eps        = rho * g_b / ||g_b||            (adaptive: rho * p^2 g_b / ||p * g_b||)
    g          = grad (1/B) sum_n a_n l_n(theta) + grad (1/B) sum_n b_n l_n(theta + eps)
    theta     <- base_optimizer.step(theta, g)

Plain training is ``a = 1, b = 0``; SAM is ``a = 0, b = 1``; ImbSAM and
Focal-SAM use per-class weights. A backward pass whose weights are all zero is
skipped, so SAM costs 2 forward + 2 backward passes and Focal-SAM 2 + 3.

Three options of a step (:class:`WeightedSAM`):

* gradient accumulation (:meth:`WeightedSAM.step_accumulated`): ``K`` micro-batches
  make one step on their concatenation, with one ``eps`` from the whole ``g_b``
  (:mod:`focalsam.optim._passes`);
* sync-free steps (``strict_checks=False``): no host-device sync; a failed check
  skips the update on the device (:mod:`focalsam.optim._guard`);
* every-k sharpness-aware steps (``sam_every=k``): an approximation, see below.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from focalsam.optim._guard import SkipReport, StepGuard, host_state_reason
from focalsam.optim._passes import StepState
from focalsam.optim._runner import (
    CLEAN_DONE,
    IDLE,
    PERTURBED,
    MicroBatch,
    StepRunner,
    check_micro_batches,
    validate_step_options,
)
from focalsam.optim._step import (
    BackwardFn,
    BufferPool,
    DeviceCache,
    GradAllReduce,
    active_scaler,
    default_backward,
)
from focalsam.optim._width import check_logits_width
from focalsam.optim.class_weights import Weights, as_weights, is_zero
from focalsam.optim.errors import (
    InvalidHyperparameterError,
    LabelError,
    StateDictError,
    StepOrderError,
)
from focalsam.optim.wrapper import (
    _validate_bn_update,
    _validate_max_grad_norm,
    _validate_rho,
)

BatchNormUpdate = Literal["both", "clean"]
#: The state-dict key of the step count that ``sam_every`` cycles on.
SAM_EVERY_KEY = "sam_every"


class WeightedSAM(StepRunner):
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
        _validate_rho(rho)
        _validate_bn_update(bn_update)
        if bn_update == "clean" and model is None:
            raise InvalidHyperparameterError(
                "bn_update='clean' freezes BatchNorm statistics of a model: pass model=..."
            )
        _validate_max_grad_norm(max_grad_norm)
        validate_step_options(strict_checks, sam_every)
        self.clean_weights = as_weights(clean_weights, "clean_weights")
        self.sharp_weights = as_weights(sharp_weights, "sharp_weights")
        lengths = {
            w.numel() for w in (self.clean_weights, self.sharp_weights) if isinstance(w, Tensor)
        }
        if len(lengths) > 1:
            raise InvalidHyperparameterError(
                f"clean_weights and sharp_weights have different lengths {sorted(lengths)}"
            )
        self.num_classes: int | None = lengths.pop() if lengths else None
        self._width_checked = False  # the first step's logits are checked against it
        self._clean_is_zero = is_zero(self.clean_weights)
        self._sharp_is_zero = is_zero(self.sharp_weights)
        # some class has no sharp weight (ImbSAM's head): a batch may have no sharp term
        self._sharp_can_vanish = isinstance(self.sharp_weights, Tensor) and bool(
            self.sharp_weights.eq(0).any()
        )

        self._wrap(params, base_optimizer, {"rho": rho, "adaptive": adaptive}, base_kwargs)
        self.model = model
        self.bn_update: BatchNormUpdate = bn_update
        self.ascent_all_reduce = ascent_all_reduce
        self.max_grad_norm = max_grad_norm
        self.check_finite = check_finite
        self.strict_checks = strict_checks
        self.sam_every = sam_every
        if strict_checks is False:
            trainable = self._trainable()
            reason = trainable and host_state_reason(self.base_optimizer, trainable[0].device)
            if reason:
                raise InvalidHyperparameterError(
                    f"strict_checks=False cannot roll back a skipped step: {reason}, "
                    "or use strict_checks=True"
                )

        self._weights = DeviceCache(self.clean_weights, self.sharp_weights)
        # Transient per-parameter buffers, allocated once, never saved.
        self._eps = BufferPool()
        self._backup = BufferPool()
        self._all_reduce = GradAllReduce()
        self._guard = StepGuard()
        self._steps = 0  # steps taken, for sam_every (saved in the state dict)
        self._phase = IDLE
        self._pending_step: StepState | None = None
        self._pending_params: list[Tensor] = []
        self._perturbed_now = False
        self._warned_no_model = False

    # ------------------------------------------------------------------ API
    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Any] | None = None,
        targets: Tensor | None = None,
        *,
        scaler: torch.amp.GradScaler | None = None,
        backward: BackwardFn | None = None,
    ) -> Any:
        """One full update.

        ``closure()`` runs the forward pass and returns the per-sample losses
        (shape ``(B,)``), or a tuple whose first element they are (the rest,
        e.g. logits, is passed through). It is called once at ``theta`` and,
        unless every sharp weight of the batch is zero (strict steps) or this is
        an off step of ``sam_every``, once at ``theta + eps``. ``targets`` are the
        labels ``(B,)`` that pick each sample's weights. ``scaler``: an fp16
        ``GradScaler`` (unscaled before the ascent norm; a step with an inf/NaN
        gradient is skipped). ``backward(loss, retain_graph=False)`` replaces
        ``loss.backward``. Gradients are zeroed here: no ``zero_grad`` needed.

        Returns the first call's output with its losses detached.
        """
        if closure is None:
            raise StepOrderError(
                f"{type(self).__name__}.step needs a closure returning per-sample losses; "
                "for explicit phases call first_step(losses, targets) and second_step(losses)"
            )
        out = self._run([(closure, targets)], scaler, backward)[0]
        if not self._width_checked:  # once: the first step's logits
            check_logits_width(out, self.num_classes, type(self).__name__)
            self._width_checked = True
        return out

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
        return self._run(check_micro_batches(micro), scaler, backward)

    def take_skip_report(self) -> SkipReport | None:
        """The steps skipped on the device since the last call, or ``None`` (one host
        sync; it resets the counts). Strict steps raise instead and are never counted.

        A training loop calls it at its natural sync points (epoch end, a log
        interval) and stops the run with ``report.error()``, the error a strict step
        would have raised.
        """
        return self._guard.report(self.num_classes)

    def clean_context(self) -> contextlib.AbstractContextManager[Any]:
        """Context for the first forward and the clean backward passes.

        Under DDP (``model`` has ``no_sync``) it is ``model.no_sync()``, so only
        the perturbed backward all-reduces; otherwise it does nothing. When the
        rule never takes a perturbed pass (all sharp weights zero), the clean
        backward must synchronize and this is a no-op too.
        """
        return self._context(sync=self._sharp_is_zero)

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
        if self._phase != IDLE:
            raise StepOrderError(
                "first_step called twice without second_step; call second_step to finish"
            )
        if self.sam_every != 1:
            raise InvalidHyperparameterError(
                f"sam_every={self.sam_every}: the explicit phases always take the "
                "sharpness-aware step; use step() or step_accumulated()"
            )
        st = self._open(active_scaler(scaler), True, None, backward or default_backward)
        self._clean(st, losses, targets, last=True)
        self._pending_step = st
        self._phase = PERTURBED if st.perturbed else CLEAN_DONE
        return st.perturbed

    def second_step(
        self, losses: Tensor | None = None, *, backward: BackwardFn | None = None
    ) -> None:
        """Perturbed phase and update: add the sharp gradient at ``theta + eps``,
        restore ``theta``, clip, and take the base optimizer's step.

        ``losses``: per-sample losses of a forward pass at ``theta + eps``, or
        ``None`` when :meth:`first_step` returned ``False``.
        """
        if self._phase == IDLE or self._pending_step is None:
            raise StepOrderError("second_step called before first_step")
        st, self._pending_step = self._pending_step, None
        st.backward = backward or default_backward
        try:
            if self._phase == PERTURBED:
                if losses is None:
                    raise StepOrderError(
                        "first_step perturbed the parameters: second_step needs the losses "
                        "of a forward pass at theta + eps"
                    )
                self._sharp(st, 0, losses)
            elif losses is not None:
                raise StepOrderError(
                    "first_step returned False (no perturbed pass): call second_step(None)"
                )
        except BaseException:
            self._restore()
            self._phase = IDLE
            raise
        self._phase = IDLE
        self._close(st)
        self._steps += 1

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state; with ``sam_every > 1`` also the step count."""
        state = super().state_dict()
        if self.sam_every != 1:
            state[SAM_EVERY_KEY] = {"steps": self._steps, "every": self.sam_every}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` (the step count of ``sam_every`` when it holds one,
        else the count restarts at 0)."""
        steps: Any = 0
        if isinstance(state_dict, dict) and SAM_EVERY_KEY in state_dict:
            state_dict = dict(state_dict)
            saved = state_dict.pop(SAM_EVERY_KEY)
            steps = saved.get("steps") if isinstance(saved, dict) else None
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
                raise StateDictError(
                    f"the state dict's {SAM_EVERY_KEY!r} must be a dict with a step count "
                    f"'steps' >= 0, got {saved!r}"
                )
        super().load_state_dict(state_dict)
        self._steps = steps

    # -------------------------------------------------------------- helpers
    def _sample_weights(
        self, targets: Tensor | None, losses: Tensor
    ) -> tuple[float | Tensor, float | Tensor]:
        """Each sample's clean and sharp weights ``(a_n, b_n)`` (constants pass through)."""
        if self.num_classes is None:
            return self.clean_weights, self.sharp_weights  # type: ignore[return-value]
        if targets is None:
            raise LabelError(
                f"{type(self).__name__} weights samples by class: pass the labels "
                "as targets (shape (B,))"
            )
        clean, sharp = self._weights.on(losses)
        idx = targets.clamp(0, self.num_classes - 1)
        return (
            clean[idx] if isinstance(clean, Tensor) else clean,
            sharp[idx] if isinstance(sharp, Tensor) else sharp,
        )
