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
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from focalsam.optim._step import (
    TINY,
    BackwardFn,
    BufferPool,
    DeviceCache,
    GradAllReduce,
    active_scaler,
    check_losses,
    check_targets,
    checked_values,
    default_backward,
    distributed,
    ensure_finite,
    losses_of,
    zero_grads,
)
from focalsam.optim.class_weights import Weights, as_weights, is_zero
from focalsam.optim.errors import InvalidHyperparameterError, LabelError, StepOrderError
from focalsam.optim.wrapper import (
    WrappedOptimizer,
    _validate_bn_update,
    _validate_max_grad_norm,
    _validate_rho,
)

BatchNormUpdate = Literal["both", "clean"]

_IDLE, _CLEAN_DONE, _PERTURBED = "idle", "clean-done", "perturbed"


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
            backward passes, so a step does one all-reduce).
        bn_update: ``"both"`` (default, as the published code) updates
            BatchNorm running statistics in both forward passes; ``"clean"``
            freezes them during the perturbed pass.
        ascent_all_reduce: under DDP, average ``g_b(theta)`` over replicas
            before the ascent, so a DDP run equals one process on the global
            batch (one extra all-reduce per step). Off: ``eps`` is per replica.
        max_grad_norm: clip the final gradient to this norm before the base step.
        check_finite: raise :class:`NonFiniteLossError` (and take no step) when
            a forward returns a NaN/inf loss. Costs one host sync per forward.
        **base_kwargs: options of the base optimizer (``lr``, ``momentum``, ...).

    Use it with :meth:`step` and a closure that runs the forward pass and
    returns per-sample losses, or with the explicit phases
    :meth:`first_step` / :meth:`second_step`.
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
        **base_kwargs: Any,
    ) -> None:
        _validate_rho(rho)
        _validate_bn_update(bn_update)
        if bn_update == "clean" and model is None:
            raise InvalidHyperparameterError(
                "bn_update='clean' freezes BatchNorm statistics of a model: pass model=..."
            )
        _validate_max_grad_norm(max_grad_norm)
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
        self._clean_is_zero = is_zero(self.clean_weights)
        self._sharp_is_zero = is_zero(self.sharp_weights)

        self._wrap(params, base_optimizer, {"rho": rho, "adaptive": adaptive}, base_kwargs)
        self.model = model
        self.bn_update: BatchNormUpdate = bn_update
        self.ascent_all_reduce = ascent_all_reduce
        self.max_grad_norm = max_grad_norm
        self.check_finite = check_finite

        self._weights = DeviceCache(self.clean_weights, self.sharp_weights)
        # Transient per-parameter buffers, allocated once, never saved.
        self._eps = BufferPool()
        self._backup = BufferPool()
        self._all_reduce = GradAllReduce()
        self._phase = _IDLE
        self._pending: dict[str, Any] = {}
        self._pending_params: list[Tensor] = []
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
        unless every sharp weight of the batch is zero, once at
        ``theta + eps``. ``targets`` are the labels ``(B,)`` that pick each
        sample's weights. Gradients are zeroed here: no ``zero_grad`` needed.

        Returns the first call's output with its losses detached.
        """
        if closure is None:
            raise StepOrderError(
                f"{type(self).__name__}.step needs a closure returning per-sample losses; "
                "for explicit phases call first_step(losses, targets) and second_step(losses)"
            )
        with self.clean_context():
            out = closure()
            losses = losses_of(out)
            perturbed = self.first_step(losses, targets, scaler=scaler, backward=backward)
        if perturbed:
            self.second_step(losses_of(closure()), backward=backward)
        elif self._phase == _CLEAN_DONE:
            self.second_step(None, backward=backward)
        if isinstance(out, tuple):
            return (losses.detach(), *out[1:])
        return losses.detach()

    def clean_context(self) -> contextlib.AbstractContextManager[Any]:
        """Context for the first forward and the clean backward passes.

        Under DDP (``model`` has ``no_sync``) it is ``model.no_sync()``, so only
        the perturbed backward all-reduces; otherwise it does nothing. When the
        rule never takes a perturbed pass (all sharp weights zero), the clean
        backward must synchronize and this is a no-op too.
        """
        if self._sharp_is_zero or not distributed():
            return contextlib.nullcontext()
        no_sync = getattr(self.model, "no_sync", None)
        if no_sync is None:
            if not self._warned_no_model:
                self._warned_no_model = True
                warnings.warn(
                    f"{type(self).__name__} runs under torch.distributed without a DDP model: "
                    "pass model=ddp_model so the clean passes skip their all-reduce "
                    "(one all-reduce per step instead of three)",
                    stacklevel=3,
                )
            return contextlib.nullcontext()
        return no_sync()

    @torch.no_grad()
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
        """
        if self._phase != _IDLE:
            raise StepOrderError(
                "first_step called twice without second_step; call second_step to finish"
            )
        batch = check_losses(losses)
        if targets is not None:
            targets = check_targets(targets, batch)
        a, b = self._sample_weights(targets, losses)
        run_a, run_b = self._decide(losses, targets, a, b)
        backward_fn = backward or default_backward
        scaler = active_scaler(scaler)
        params = self._trainable()
        zero_grads(params)
        if run_b:
            with torch.enable_grad():
                backward_fn(_scaled(_weighted_mean(losses, b, batch), scaler), retain_graph=run_a)
            inv_scale = 1.0 if scaler is None else 1.0 / float(scaler.get_scale())
            if not self._ascent(params, inv_scale, check=scaler is not None):
                # fp16 overflow in g_b: let the scaler see the inf and skip the step.
                assert scaler is not None
                self._pending = {"scaler": scaler, "skip": True}
                self._phase = _CLEAN_DONE
                return False
            zero_grads(params)
        if run_a:
            with torch.enable_grad():
                backward_fn(_scaled(_weighted_mean(losses, a, batch), scaler), retain_graph=False)
        self._pending = {"scaler": scaler, "b": b, "batch": batch, "skip": False}
        if run_b:
            self._perturb()
            self._phase = _PERTURBED
            return True
        self._phase = _CLEAN_DONE
        return False

    @torch.no_grad()
    def second_step(
        self, losses: Tensor | None = None, *, backward: BackwardFn | None = None
    ) -> None:
        """Perturbed phase and update: add the sharp gradient at ``theta + eps``,
        restore ``theta``, clip, and take the base optimizer's step.

        ``losses``: per-sample losses of a forward pass at ``theta + eps``, or
        ``None`` when :meth:`first_step` returned ``False``.
        """
        if self._phase == _IDLE:
            raise StepOrderError("second_step called before first_step")
        pending, self._pending = self._pending, {}
        try:
            if self._phase == _PERTURBED:
                if losses is None:
                    raise StepOrderError(
                        "first_step perturbed the parameters: second_step needs the losses "
                        "of a forward pass at theta + eps"
                    )
                batch = check_losses(losses, expected=pending["batch"])
                if self.check_finite:
                    ensure_finite(
                        losses,
                        "the forward pass at theta + eps returned non-finite losses; "
                        "the parameters were restored and no step was taken",
                    )
                with torch.enable_grad():
                    fn = backward or default_backward
                    fn(_scaled(_weighted_mean(losses, pending["b"], batch), pending["scaler"]))
            elif losses is not None:
                raise StepOrderError(
                    "first_step returned False (no perturbed pass): call second_step(None)"
                )
        except BaseException:
            self._restore()
            self._phase = _IDLE
            raise
        self._restore()
        self._phase = _IDLE
        self._update(pending.get("scaler"), skip=pending.get("skip", False))

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

    def _ascent(self, params: list[Tensor], inv_scale: float, check: bool) -> bool:
        """Write ``eps`` from the gradients in ``.grad``; False if they are not finite."""
        with_grad = [p for p in params if p.grad is not None]
        if not with_grad:
            return True
        grads = [p.grad for p in with_grad]
        if inv_scale != 1.0:
            torch._foreach_mul_(grads, inv_scale)  # type: ignore[arg-type]
        if self.ascent_all_reduce and distributed():
            self._all_reduce(params)
            with_grad = params
            grads = [p.grad for p in params]
        eps = self._eps(with_grad)
        torch._foreach_copy_(eps, grads)  # type: ignore[arg-type]
        # Group the parameters by param group (rho, adaptive may differ per group).
        groups = self._groups_of(with_grad)
        for group, idx in groups:
            if group["adaptive"]:
                torch._foreach_mul_([eps[i] for i in idx], [with_grad[i] for i in idx])
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(eps)))
        if check and not bool(torch.isfinite(norm)):
            return False
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
        torch._foreach_copy_(backup, params)
        torch._foreach_add_(params, [self._eps[p] for p in params])
        if self.bn_update == "clean":
            self._freeze_bn()

    def _restore(self) -> None:
        if self._phase != _PERTURBED:
            return
        params = self._pending_params
        torch._foreach_copy_(params, [self._backup[p] for p in params])
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
