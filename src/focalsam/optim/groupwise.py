"""The group-wise rule: one perturbation per group of samples, each with its own radius.

The classes are split into groups ``k = 0..G-1`` (SSE-SAM: head and tail; CC-SAM's
network mode: one group per class). For a batch of ``B`` per-sample losses ``l_i``::

    L_k   = (1/B) sum_{i in group k} l_i
    eps_k = r_k * grad L_k(theta) / ||grad L_k(theta)||
    g     = c * grad (1/B) sum_i l_i(theta)  +  w * sum_k grad L_k(theta + eps_k)
    theta <- base_optimizer.step(theta, g)

with ``c = clean_weight`` (0 by default) and ``w = group_weight`` (1 by default). A group
whose radius is 0 has ``eps_k = 0``: its term is its clean gradient, folded into the
one clean backward pass, and its perturbed pass is skipped. A group with no sample in
the batch has ``L_k = 0`` and is skipped too. So a step costs one forward pass at
``theta`` and, for each group present whose radius is above 0, one backward pass for
``grad L_k(theta)`` and one forward and one backward pass at ``theta + eps_k``; plus one
clean backward pass when ``c != 0`` or a group present has radius 0.

A strict step (``strict_checks=True``, or ``None`` on the CPU) reads the groups present
on the host (one sync). A sync-free step (``strict_checks=False``, or ``None`` on CUDA)
reads nothing: it plans on what the host knows, the radii, so every group whose radius
can be above 0 gets its passes whether the batch holds a sample of it or not. An absent
group has ``L_k = 0``, ``grad L_k = 0``, ``eps_k = 0`` and its perturbed backward adds 0,
so the update is the strict step's; the model's buffers (BatchNorm statistics) are put
back after its perturbed forward, ``where(n_k > 0, new, saved)`` on the device. The
checks fold into one device code and a failed step is rolled back by selection
(:mod:`focalsam.optim.policies.syncfree`). Only radii that ignore the group's sample
count can run so (:attr:`GroupRadius.sync_free`); CC-SAM's cannot.

Accumulation over micro-batches ``m`` of a batch of ``B`` samples is exact, since
``grad L_k = sum_m grad (1/B) sum_{i in m, group k} l_i``: each micro-batch adds its
part of every perturbed group's ``grad L_k`` into one buffer per group, then each
``eps_k`` comes from its whole buffer and every micro-batch runs its pass at
``theta + eps_k`` (:meth:`GroupwiseSAM.step_accumulated`).

The radius ``r_k`` comes from a :class:`GroupRadius` (fixed radii: :class:`FixedRadii`;
CC-SAM's class-conditioned radius: :mod:`focalsam.optim.ccsam.network`), multiplied
per tensor by its parameter group's ``rho`` (a schedule on ``rho`` scales every group's
radius alike). With ``per_tensor=True`` each parameter tensor ``t`` is normalized apart:
``eps_{k,t} = r_{k,t} grad_t L_k / ||grad_t L_k||``, the radius taking the tensor's norm.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, NamedTuple, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer

from focalsam.optim.ascent import TINY
from focalsam.optim.backward import BackwardFn, default_backward
from focalsam.optim.buffers import BufferPool, zero_grads
from focalsam.optim.errors import (
    InvalidHyperparameterError,
    LabelError,
    StateDictError,
    StepOrderError,
)
from focalsam.optim.policies.batchnorm import BatchNormPolicy, Kept, put_back
from focalsam.optim.policies.ddp import GradAllReduce, distributed
from focalsam.optim.policies.scaler import active_scaler, base_step, scaled, unscale_
from focalsam.optim.policies.syncfree import (
    PERTURBED_LOSS,
    SkipReport,
    StepGuard,
    refuse_unrollbackable,
    strict_now,
)
from focalsam.optim.validators import (
    MicroBatch,
    check_losses,
    check_micro_batches,
    check_targets,
    checked_values,
    detached,
    ensure_finite,
    losses_of,
    validate_engine_settings,
    validate_rho,
)
from focalsam.optim.wrapped import WrappedOptimizer, trainable

BatchNormUpdate = Literal["both", "clean"]
#: The state-dict key of the group-wise engine's own counters.
GROUPWISE_KEY = "groupwise"


class GroupRadius(Protocol):
    """The radius of each group: ``active(k)`` says whether group ``k`` is perturbed at
    all (its radius can be above 0); ``radius(k, grad_norm, size, batch, params)`` is
    ``r_k`` for this step, from ``||grad L_k(theta)||`` (``L_k`` averaged over the whole
    batch; with per-tensor normalization a tensor of one norm per parameter tensor, and
    the radius then one per tensor or one for all), the group's sample count ``size`` in a
    batch of ``batch`` samples (the batch ``grad L_k`` comes from: under DDP with the
    ascent all-reduce, all replicas' together) and the parameters at ``theta``.

    ``sync_free``: the radius needs neither ``size`` nor ``batch`` and is finite for a
    zero gradient (an absent group's ``eps_k`` is then 0). Sync-free steps read no count
    on the host: they call ``radius`` with ``size = batch = None``, also for groups with
    no sample in the batch. A radius without it makes every step strict."""

    @property
    def sync_free(self) -> bool: ...

    def active(self, group: int) -> bool: ...

    def radius(
        self,
        group: int,
        grad_norm: Tensor,
        size: int | None,
        batch: int | None,
        params: list[Tensor],
    ) -> Tensor | float: ...


class FixedRadii:
    """Fixed radii ``rho_k`` per group (``rho_k = 0``: the group is not perturbed);
    ``set(k, value)`` changes one (a method's stage schedule). They ignore the counts, so
    steps with them can be sync-free."""

    sync_free = True

    def __init__(self, radii: Sequence[float]) -> None:
        self.values = [_checked_radius(r, f"radius of group {k}") for k, r in enumerate(radii)]

    def set(self, group: int, value: float) -> None:
        self.values[group] = _checked_radius(value, f"radius of group {group}")

    def active(self, group: int) -> bool:
        return self.values[group] > 0

    def radius(
        self,
        group: int,
        grad_norm: Tensor,
        size: int | None,
        batch: int | None,
        params: list[Tensor],
    ) -> float:
        return self.values[group]


class GroupwiseSAM(WrappedOptimizer):
    """Sharpness-aware minimization with one perturbation per group of classes.

    ``g = c grad mean(l)(theta) + w sum_k grad L_k(theta + eps_k)``,
    ``eps_k = r_k grad L_k / ||grad L_k||``, ``L_k = (1/B) sum_{i in k} l_i``
    (the module docstring has the passes).

    Args:
        params: parameters or parameter groups (a group may set its own ``rho``, the
            factor of every radius on its tensors; default 1).
        base_optimizer: a ``torch.optim.Optimizer`` class (built here on the same
            groups with ``**base_kwargs``) or an instance (``params=None``).
        group_of: the group of each class (length C, values in ``[0, G)``).
        radius: the radius of each group (:class:`GroupRadius`), or a sequence of
            ``G`` fixed radii (:class:`FixedRadii`).
        clean_weight: ``c``, the weight of the whole batch's clean gradient.
        group_weight: ``w``, the weight of the group terms.
        rho: the parameter groups' default ``rho``, the factor of every radius.
        model: the module being trained: for ``bn_update="clean"``, for DDP (its
            ``no_sync`` keeps every backward but the step's last from all-reducing) and
            for sync-free steps (its buffers are put back after an absent group's
            perturbed forward and rolled back with a skipped step; without it they are
            not).
        bn_update: ``"both"`` updates BatchNorm statistics in every forward pass;
            ``"clean"`` freezes them in the perturbed ones.
        ascent_all_reduce: under DDP, average each ``grad L_k(theta)`` over the replicas
            before its ascent, so a DDP run equals one process on the global batch (one
            all-reduce per perturbed group). Off: ``eps_k`` is per replica.
        max_grad_norm: clip the final gradient to this norm before the base step.
        per_tensor: normalize each parameter tensor apart (``eps_{k,t}`` along
            ``grad_t L_k / ||grad_t L_k||``); default: the whole vector, as SAM.
        check_finite: check that the losses (and, in sync-free steps, the final
            gradient) are finite; a strict step raises :class:`NonFiniteLossError` (no
            step taken).
        strict_checks: ``True``: a step plans its passes on the groups present in the
            batch, which it reads on the host together with the label and loss checks
            (one sync per step; under DDP the replicas add their group counts and batch
            sizes with one all-reduce of ``G + 1`` numbers, so every replica runs the
            same passes), and raises at once. ``False``: no host-device sync in
            :meth:`step`; every group whose radius is active gets its passes (an absent
            group's add exactly 0, and the model's buffers are put back after its
            perturbed forward, so the update and the BatchNorm statistics are the
            strict step's); the label and finite checks fold into a device code, a
            failed step is undone on the device (parameters, the base optimizer's state,
            ``model``'s buffers) and :meth:`take_skip_report` tells (under DDP the
            replicas agree through one all-reduce of one number, and, when ``model``
            has buffers, add their group counts on the device to put them back alike).
            ``None`` (default): strict on the CPU, sync-free for CUDA parameters when
            the base optimizer keeps its state on the device. A radius that needs the
            groups' counts (``sync_free`` false, CC-SAM's) makes every step strict and
            refuses ``False``.
        sam_every: ``k >= 1``; step ``i`` (counted from 0, saved in the state dict) is
            sharpness-aware when ``i % k == 0``, the others take one pass with
            ``eps = 0``: ``g = grad (1/B) sum_i (c + w) l_i(theta)``.
        **base_kwargs: the base optimizer's options (``lr``, ``momentum``, ...).

    Under DDP a step all-reduces the gradient once (the last backward pass syncs; when
    no group is perturbed, the clean gradient is averaged by hand). With an fp16
    ``GradScaler``, the gradients are unscaled before each norm, a non-finite
    ``grad L_k`` or final gradient makes the scaler skip the whole step, and the scaler
    updates once per step. A sync-free step with a scaler is not free of syncs (the
    scaler reads its own overflow flag on the host): an overflow in ``grad L_k`` sets
    ``eps_k = 0`` by selection and makes the last backward non-finite on the device, so
    the scaler skips the step as in a strict one, unreported.

    :meth:`step_accumulated` takes one step on ``K`` micro-batches, equal to :meth:`step`
    on their concatenation, with the same guarantees; it holds one extra gradient
    buffer (the size of the parameters) per perturbed group.

    :attr:`pass_counts` counts the steps, forward and backward passes taken (saved in
    the state dict; sync-free steps count the passes of absent groups they run; an
    accumulated step counts its passes over the whole batch, as :meth:`step` on it);
    :meth:`passes_per_step` is their mean. :attr:`last_radii` holds, for each group
    perturbed in the last step, its radius ``rho_t * r_k`` (one number, or one per
    parameter tensor when they differ).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None,
        base_optimizer: type[Optimizer] | Optimizer = torch.optim.SGD,
        *,
        group_of: Sequence[int] | Tensor,
        radius: GroupRadius | Sequence[float],
        clean_weight: float = 0.0,
        group_weight: float = 1.0,
        rho: float = 1.0,
        model: nn.Module | None = None,
        bn_update: BatchNormUpdate = "both",
        ascent_all_reduce: bool = False,
        max_grad_norm: float | None = None,
        per_tensor: bool = False,
        check_finite: bool = True,
        strict_checks: bool | None = None,
        sam_every: int = 1,
        **base_kwargs: Any,
    ) -> None:
        validate_engine_settings(
            bn_update=bn_update,
            model=model,
            max_grad_norm=max_grad_norm,
            strict_checks=strict_checks,
            sam_every=sam_every,
        )
        for name, value in (("clean_weight", clean_weight), ("group_weight", group_weight)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidHyperparameterError(f"{name} must be a number, got {value!r}")
        groups = torch.as_tensor(group_of).detach().cpu()
        if groups.ndim != 1 or groups.numel() == 0 or groups.is_floating_point():
            raise InvalidHyperparameterError(
                "group_of must be a non-empty 1-D integer sequence (the group of each class), "
                f"got {group_of!r}"
            )
        self.group_of = groups.long()
        self.num_classes = int(self.group_of.numel())
        self.num_groups = int(self.group_of.max()) + 1 if self.num_classes else 0
        if int(self.group_of.min()) < 0:
            raise InvalidHyperparameterError(f"group_of must be >= 0, got {groups.tolist()}")
        # known on the host: a group without a class never has a sample in a batch
        self._groups_with_classes = frozenset(int(k) for k in self.group_of.unique())
        self.radii: GroupRadius = (
            FixedRadii(radius) if isinstance(radius, Sequence) else radius  # type: ignore[arg-type]
        )
        if isinstance(self.radii, FixedRadii) and len(self.radii.values) < self.num_groups:
            raise InvalidHyperparameterError(
                f"group_of names {self.num_groups} groups, radius gives "
                f"{len(self.radii.values)} radii"
            )
        self.clean_weight = float(clean_weight)
        self.group_weight = float(group_weight)

        self._radius_sync_free = bool(getattr(self.radii, "sync_free", False))
        validate_rho(rho)
        self._wrap(params, base_optimizer, {"rho": rho}, base_kwargs)
        if strict_checks is False:
            self._check_sync_free()
        self.model = model
        self.bn_update: BatchNormUpdate = bn_update
        self._bn = BatchNormPolicy(model, bn_update)
        self.ascent_all_reduce = ascent_all_reduce
        self._all_reduce = GradAllReduce()  # averages by hand: the ascent, a clean-only step
        self.max_grad_norm = max_grad_norm
        self.per_tensor = bool(per_tensor)
        self.check_finite = check_finite
        self.strict_checks = strict_checks
        self.sam_every = sam_every
        self.last_radii: dict[int, Tensor] = {}
        self.pass_counts = {"steps": 0, "forward": 0, "backward": 0}
        self._steps = 0
        self._backup = BufferPool()
        self._group_cache: dict[str, Tensor] = {}
        self._guard = StepGuard()
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
        """One update. ``closure()`` runs the forward pass and returns the per-sample
        losses ``(B,)`` (or a tuple starting with them); it is called once at ``theta``
        and once at each ``theta + eps_k``. ``targets``: the labels ``(B,)``.
        ``scaler``: an fp16 ``GradScaler``. ``backward(loss, retain_graph=False)``
        replaces ``loss.backward``. Returns the first call's output, losses detached."""
        if closure is None:
            raise StepOrderError(
                f"{type(self).__name__}.step needs a closure returning per-sample losses"
            )
        targets = self._labels_of(targets, None)
        scaler = active_scaler(scaler)
        backward_fn = backward or default_backward
        params = trainable(self.param_groups)
        strict, sharp_step = self._begin(params)
        with self._context(sync=False):
            out = closure()
        losses = losses_of(out)
        size = check_losses(losses)
        targets = check_targets(targets, size)
        group = self._groups_on(losses.device)[targets.clamp(0, self.num_classes - 1)]
        if strict:
            plan = self._strict_plan(losses, targets, group, size, sharp_step)
        else:
            plan = self._sync_free_plan(losses, targets, group, sharp_step)
        try:
            self._passes(losses, group, size, plan, closure, scaler, backward_fn)
        except BaseException:
            zero_grads(params)
            raise
        self._update(params, strict, scaler, plan)
        return detached(out, losses)

    def step_accumulated(
        self,
        micro: Sequence[MicroBatch],
        *,
        scaler: torch.amp.GradScaler | None = None,
        backward: BackwardFn | None = None,
    ) -> list[Any]:
        """One update on ``K`` micro-batches, equal to :meth:`step` on their concatenation.

        ``micro``: ``(closure_m, targets_m)`` pairs; ``closure_m()`` runs the forward pass
        on micro-batch ``m`` and returns its per-sample losses (or a tuple starting with
        them); every ``targets_m`` is needed. With ``B = sum_m B_m``,
        ``grad L_k = sum_m grad (1/B) sum_{i in m, group k} l_i``, so: for each
        micro-batch, one forward at ``theta``, the clean backward into ``.grad`` and
        each perturbed group's ``grad L_k`` added into that group's buffer (its graph
        freed before the next forward); then for each perturbed group, ``eps_k`` from
        its whole buffer (one norm; the ascent all-reduce and the radius on the whole
        batch) and every micro-batch's forward and backward at ``theta + eps_k``; one
        base step. Memory: one gradient buffer (the size of the parameters) per
        perturbed group, besides ``.grad`` and the copy of ``theta``.

        Which groups are perturbed is planned before the first forward: a strict step
        checks all labels and reads the summed group counts on the host (one sync;
        under DDP all replicas'), then checks each micro-batch's losses (one sync
        each); a sync-free step plans on the radii as :meth:`step` does. Each closure
        is called ``1 + P`` times for ``P`` perturbed groups. Under DDP only the last
        backward all-reduces. BatchNorm statistics see each micro-batch apart, so
        models with BatchNorm match the one-batch step only approximately. ``K = 1``
        is :meth:`step`. Returns each micro-batch's first-call output, losses detached.

        Example:
            >>> model = torch.nn.Linear(4, 3)
            >>> opt = GroupwiseSAM(model.parameters(), group_of=[0, 0, 1],
            ...                    radius=[0.05, 0.1], lr=0.1)
            >>> x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 2])
            >>> def micro(xs, ys):
            ...     ce = torch.nn.functional.cross_entropy
            ...     return (lambda: ce(model(xs), ys, reduction="none")), ys
            >>> outs = opt.step_accumulated([micro(x[:5], y[:5]), micro(x[5:], y[5:])])
            >>> [o.shape[0] for o in outs]
            [5, 3]
        """
        checked = check_micro_batches(micro)
        if len(checked) == 1:
            closure, targets = checked[0]
            return [self.step(closure, targets, scaler=scaler, backward=backward)]
        labels = [self._labels_of(targets, m) for m, (_, targets) in enumerate(checked)]
        batch = sum(int(t.shape[0]) for t in labels)
        scaler = active_scaler(scaler)
        backward_fn = backward or default_backward
        params = trainable(self.param_groups)
        strict, sharp_step = self._begin(params)
        groups = [self._groups_on(t.device)[t.clamp(0, self.num_classes - 1)] for t in labels]
        plan = self._accumulated_plan(labels, groups, batch, strict, sharp_step)
        try:
            outs = self._accumulated_passes(checked, groups, batch, plan, scaler, backward_fn)
        except BaseException:
            zero_grads(params)
            raise
        self._update(params, strict, scaler, plan)
        return outs

    def _begin(self, params: list[Tensor]) -> tuple[bool, bool]:
        """Start a step: whether it is strict (else the guard saves what it may change),
        gradients zeroed, and whether it is sharpness-aware (``sam_every``)."""
        strict = self._strict_now(params)
        if strict:
            self._guard.calls += 1  # strict steps are counted on the host
        else:
            self._guard.begin(self.base_optimizer, params, self.model)
        zero_grads(params)
        self.last_radii = {}
        return strict, self._steps % self.sam_every == 0

    def passes_per_step(self) -> tuple[float, float] | None:
        """Mean (forward, backward) passes per step so far (``None`` before a step)."""
        steps = self.pass_counts["steps"]
        if steps == 0:
            return None
        return (self.pass_counts["forward"] / steps, self.pass_counts["backward"] / steps)

    def take_skip_report(self) -> SkipReport | None:
        """The sync-free steps skipped on the device since the last call, or ``None`` (one
        host sync; it resets the counts). Strict steps raise instead and are never
        counted. A training loop calls it at its natural sync points and stops the run
        with ``report.error()``, the error a strict step would have raised."""
        return self._guard.report(self.num_classes)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state, the step count (``sam_every``) and the pass counts."""
        state = super().state_dict()
        state[GROUPWISE_KEY] = {"steps": self._steps, "passes": dict(self.pass_counts)}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` (without the engine's counters they restart at 0)."""
        steps, passes = 0, {"steps": 0, "forward": 0, "backward": 0}
        if isinstance(state_dict, dict) and GROUPWISE_KEY in state_dict:
            state_dict = dict(state_dict)
            saved = state_dict.pop(GROUPWISE_KEY)
            ok = isinstance(saved, dict) and _count(saved.get("steps"))
            saved_passes = saved.get("passes") if ok else None
            if not ok or not (
                isinstance(saved_passes, dict)
                and set(saved_passes) == set(passes)
                and all(_count(v) for v in saved_passes.values())
            ):
                raise StateDictError(
                    f"the state dict's {GROUPWISE_KEY!r} must hold a step count 'steps' >= 0 "
                    f"and pass counts {sorted(passes)}, got {saved!r}"
                )
            steps, passes = saved["steps"], dict(saved_passes)
        super().load_state_dict(state_dict)
        self._steps, self.pass_counts = steps, passes

    # -------------------------------------------------------------- steps
    def _labels_of(self, targets: Tensor | None, micro: int | None) -> Tensor:
        """The labels of a batch (``micro``: of that micro-batch), checked for shape."""
        if targets is None:
            where = "" if micro is None else f" (micro-batch {micro} has targets=None)"
            raise LabelError(
                f"{type(self).__name__} groups samples by class: pass the labels as targets "
                f"(shape (B,)){where}"
            )
        return check_targets(targets)

    def _strict_now(self, params: list[Tensor]) -> bool:
        """Whether this step is strict: always with a radius that needs the counts."""
        return not self._radius_sync_free or strict_now(
            self.strict_checks, self.base_optimizer, params
        )

    def _update(
        self,
        params: list[Tensor],
        strict: bool,
        scaler: torch.amp.GradScaler | None,
        plan: _Plan,
    ) -> None:
        """Clip and take the base step on ``.grad`` (sync-free: undone on the device where
        a check failed); count the step and its passes over the batch (an accumulated
        step's micro-batches make one pass together)."""
        self._opt_called = True  # tells lr schedulers that the optimizer stepped
        with_grad = [p for p in trainable(self.param_groups) if p.grad is not None]
        if not strict and self.check_finite and scaler is None:
            self._guard.require_finite_grads(params)
        base_step(self.base_optimizer, with_grad, scaler, self.max_grad_norm)
        if not strict:  # undo the update on the device where a check failed
            self._guard.end(self.base_optimizer, params[0])
        perturbed = len(plan.perturbed)
        self.pass_counts["steps"] += 1
        self.pass_counts["forward"] += 1 + perturbed
        self.pass_counts["backward"] += 2 * perturbed + int(plan.clean)
        self._steps += 1

    # -------------------------------------------------------------- plans
    def _strict_plan(
        self, losses: Tensor, targets: Tensor, group: Tensor, size: int, sharp_step: bool
    ) -> _Plan:
        """Check labels and losses and read the group counts on the host (one sync; under
        DDP all replicas' counts): the groups present whose radius is active get passes."""
        counts = torch.bincount(group, minlength=self.num_groups)
        local = checked_values(losses, targets, self.num_classes, self.check_finite, [counts])
        return self._plan_on_counts(local, size, sharp_step, losses.device)

    def _plan_on_counts(
        self, local: list[int], size: int, sharp_step: bool, device: torch.device
    ) -> _Plan:
        """The strict plan from this replica's group counts ``local`` in a batch of
        ``size`` samples (under DDP all replicas' added with one all-reduce)."""
        plan = _Counts(local, size)
        if distributed():
            # every replica must run the same passes: plan on the global batch
            shared = torch.tensor([*local, size], dtype=torch.long, device=device)
            dist.all_reduce(shared)
            *total, batch = shared.tolist()
            plan = _Counts(total, batch)
        perturbed = [
            k
            for k in range(self.num_groups)
            if sharp_step and plan.counts[k] > 0 and self.group_weight != 0 and self.radii.active(k)
        ]
        clean = self.clean_weight != 0 or any(
            plan.counts[k] > 0 and k not in perturbed for k in range(self.num_groups)
        )
        # the batch each ascent gradient comes from: all replicas' when it is all-reduced
        ascent = plan if self.ascent_all_reduce else _Counts(local, size)
        return _Plan(perturbed, clean, ascent, None)

    def _accumulated_plan(
        self,
        labels: list[Tensor],
        groups: list[Tensor],
        batch: int,
        strict: bool,
        sharp_step: bool,
    ) -> _Plan:
        """The plan of an accumulated step, before its first forward: strict, check every
        micro-batch's labels and read their summed group counts (one sync); sync-free,
        fold the label checks into the device code and plan on the radii."""
        if strict:
            counts = torch.stack([torch.bincount(g, minlength=self.num_groups) for g in groups])
            counts = counts.sum(0)
            local = checked_values(None, torch.cat(labels), self.num_classes, False, [counts])
            return self._plan_on_counts(local, batch, sharp_step, counts.device)
        for t in labels:
            self._guard.require_labels(t, self.num_classes)
        return self._plan_on_classes(torch.cat(groups), sharp_step)

    def _sync_free_plan(
        self, losses: Tensor, targets: Tensor, group: Tensor, sharp_step: bool
    ) -> _Plan:
        """Fold the label and loss checks into the step's device code and plan on what
        the host knows (:meth:`_plan_on_classes`)."""
        self._guard.require_inputs(losses, targets, self.num_classes, self.check_finite)
        return self._plan_on_classes(group, sharp_step)

    def _plan_on_classes(self, group: Tensor, sharp_step: bool) -> _Plan:
        """The sync-free plan: every group with a class whose radius is active gets
        passes. With buffers to put back, which groups have a sample in ``group`` (under
        DDP in any replica), on the device."""
        possible = [k for k in range(self.num_groups) if k in self._groups_with_classes]
        perturbed = [
            k for k in possible if sharp_step and self.group_weight != 0 and self.radii.active(k)
        ]
        clean = self.clean_weight != 0 or len(perturbed) < len(possible)
        present = None
        if perturbed and self.model is not None and next(self.model.buffers(), None) is not None:
            ids = torch.arange(self.num_groups, device=group.device)
            hits = (group.unsqueeze(1) == ids).any(0).long()
            if distributed():  # a strict step plans on all replicas' counts
                dist.all_reduce(hits, op=dist.ReduceOp.MAX)
            present = hits > 0
        return _Plan(perturbed, clean, None, present)

    # -------------------------------------------------------------- passes
    def _passes(
        self,
        losses: Tensor,
        group: Tensor,
        size: int,
        plan: _Plan,
        closure: Callable[[], Any],
        scaler: torch.amp.GradScaler | None,
        backward_fn: BackwardFn,
    ) -> None:
        """Leave ``g`` in ``.grad`` (scaled like the losses): the clean backward, then each
        perturbed group's passes in group order, as ``plan`` says."""
        params = trainable(self.param_groups)
        strict = plan.ascent is not None
        perturbed = plan.perturbed
        inv_scale = 1.0 if scaler is None or not strict else 1.0 / float(scaler.get_scale())
        is_perturbed = torch.zeros(self.num_groups, dtype=torch.bool, device=losses.device)
        if perturbed:
            is_perturbed[perturbed] = True
        # c for every sample, plus w for the samples of groups not perturbed (eps_k = 0)
        clean = self.clean_weight + self.group_weight * (~is_perturbed[group]).to(losses.dtype)
        if plan.clean:
            with self._context(sync=not perturbed):
                backward_fn(
                    scaled(torch.dot(losses, clean) / size, scaler),
                    retain_graph=bool(perturbed),  # the groups' gradients need the graph
                )
        if not perturbed:
            if distributed() and getattr(self.model, "no_sync", None) is not None:
                self._all_reduce(params)  # the clean forward ran under no_sync
            return
        data = [p.data for p in params]
        backup = self._backup(params)
        torch._foreach_copy_(backup, data)
        total = losses.new_zeros(())
        overflow: Tensor | None = None  # sync-free with a scaler: some grad L_k overflowed
        for j, k in enumerate(perturbed):
            last = j == len(perturbed) - 1
            mask = (group == k).to(losses.dtype)
            grads = torch.autograd.grad(
                scaled(torch.dot(losses, mask) / size, scaler),
                params,
                retain_graph=not last,
                allow_unused=True,
            )
            g = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, grads)]
            overflow = self._eps_in_place(g, params, k, plan, scaler, inv_scale, overflow)
            with self._shifted(data, backup, g, k, plan):
                shifted = self._perturbed_pass(
                    closure, mask, size, size, last, overflow, scaler, backward_fn, strict
                )
                if shifted is not None:
                    total = total + shifted
        self._check_perturbed_total(total, strict, scaler)

    def _accumulated_passes(
        self,
        micro: list[MicroBatch],
        groups: list[Tensor],
        batch: int,
        plan: _Plan,
        scaler: torch.amp.GradScaler | None,
        backward_fn: BackwardFn,
    ) -> list[Any]:
        """Leave ``g`` in ``.grad`` (scaled like the losses) from ``K`` micro-batches of a
        batch of ``batch`` samples: every micro-batch's clean passes (:meth:`_clean_micro`),
        then for each perturbed group ``eps_k`` from its summed ``grad L_k`` and every
        micro-batch's perturbed pass. Returns each micro-batch's output."""
        params = trainable(self.param_groups)
        strict = plan.ascent is not None
        perturbed = plan.perturbed
        inv_scale = 1.0 if scaler is None or not strict else 1.0 / float(scaler.get_scale())
        sums: list[list[Tensor]] = []  # grad L_k per perturbed group, over the micro-batches
        outs, masks, sizes = [], [], []
        for (closure, _), group in zip(micro, groups):
            out, group_masks = self._clean_micro(
                closure, group, batch, plan, scaler, backward_fn, sums
            )
            outs.append(out)
            masks.append(group_masks)
            sizes.append(int(group.numel()))
        if not perturbed:
            if distributed() and getattr(self.model, "no_sync", None) is not None:
                self._all_reduce(params)  # the clean forwards ran under no_sync
            return outs
        data = [p.data for p in params]
        backup = self._backup(params)
        torch._foreach_copy_(backup, data)
        total = masks[0][0].new_zeros(())
        overflow: Tensor | None = None  # sync-free with a scaler: some grad L_k overflowed
        for j, k in enumerate(perturbed):
            eps, sums[j] = sums[j], []  # the buffer becomes eps_k, freed once applied
            overflow = self._eps_in_place(eps, params, k, plan, scaler, inv_scale, overflow)
            with self._shifted(data, backup, eps, k, plan):
                for m, (closure, _) in enumerate(micro):
                    last = j == len(perturbed) - 1 and m == len(micro) - 1
                    shifted = self._perturbed_pass(
                        closure,
                        masks[m][j],
                        sizes[m],
                        batch,
                        last,
                        overflow,
                        scaler,
                        backward_fn,
                        strict,
                    )
                    if shifted is not None:
                        total = total + shifted
        self._check_perturbed_total(total, strict, scaler)
        return outs

    @contextlib.contextmanager
    def _shifted(
        self, data: list[Tensor], backup: list[Tensor], eps: list[Tensor], group: int, plan: _Plan
    ) -> Iterator[None]:
        """The parameters at ``theta + eps_k`` for group ``k``'s perturbed passes, and the
        BatchNorm policy for them; ``theta`` (from ``backup``) and the buffers are restored
        on exit. ``eps`` is consumed: the list is emptied once added, freeing it."""
        with torch.no_grad():
            torch._foreach_add_(data, eps)  # through .data: the clean graph stays valid
        eps.clear()
        kept: Kept | None = None
        if plan.present is not None:  # a strict step runs these passes only if k is present
            kept = self._bn.keep_unless(plan.present[group])
        self._bn.freeze()  # with bn_update="clean": statistics of the clean passes only
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(data, backup)
            self._bn.unfreeze()
            put_back(kept)

    def _check_perturbed_total(
        self, total: Tensor, strict: bool, scaler: torch.amp.GradScaler | None
    ) -> None:
        """A strict step without a scaler raises :class:`NonFiniteLossError` when the
        perturbed losses summed to a non-finite ``total`` (sync-free steps and the scaler
        skip such a step instead)."""
        if strict and self.check_finite and scaler is None:
            ensure_finite(
                total,
                "the forward pass at theta + eps_k returned non-finite losses; "
                "the parameters were restored and no step was taken",
            )

    def _clean_micro(
        self,
        closure: Callable[[], Any],
        group: Tensor,
        batch: int,
        plan: _Plan,
        scaler: torch.amp.GradScaler | None,
        backward_fn: BackwardFn,
        sums: list[list[Tensor]],
    ) -> tuple[Any, list[Tensor]]:
        """One micro-batch at ``theta``: its forward, ``.grad += grad (1/batch) sum_i
        (c + w [group not perturbed]) l_i`` and, for the ``j``-th perturbed group ``k``,
        ``sums[j] += grad (1/batch) sum_{i in k} l_i``; its graph is freed at the end.
        Returns its output (losses detached) and its masks of the perturbed groups."""
        params = trainable(self.param_groups)
        perturbed = plan.perturbed
        with self._context(sync=False):
            out = closure()
        losses = losses_of(out)
        check_losses(losses, expected=int(group.numel()))
        if plan.ascent is not None:
            checked_values(losses, None, None, self.check_finite)
        else:
            self._guard.require_inputs(losses, None, None, self.check_finite)
        is_perturbed = torch.zeros(self.num_groups, dtype=torch.bool, device=losses.device)
        if perturbed:
            is_perturbed[perturbed] = True
        clean = self.clean_weight + self.group_weight * (~is_perturbed[group]).to(losses.dtype)
        if plan.clean:
            with self._context(sync=not perturbed):
                backward_fn(
                    scaled(torch.dot(losses, clean) / batch, scaler),
                    retain_graph=bool(perturbed),
                )
        masks = []
        for j, k in enumerate(perturbed):
            mask = (group == k).to(losses.dtype)
            grads = torch.autograd.grad(
                scaled(torch.dot(losses, mask) / batch, scaler),
                params,
                retain_graph=j < len(perturbed) - 1,
                allow_unused=True,
            )
            g = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, grads)]
            if j < len(sums):
                torch._foreach_add_(sums[j], g)
            else:
                sums.append(g)
            masks.append(mask)
        return detached(out, losses), masks

    def _perturbed_pass(
        self,
        closure: Callable[[], Any],
        mask: Tensor,
        size: int,
        batch: int,
        last: bool,
        overflow: Tensor | None,
        scaler: torch.amp.GradScaler | None,
        backward_fn: BackwardFn,
        strict: bool,
    ) -> Tensor | None:
        """One forward pass at ``theta + eps_k`` over ``size`` samples and
        ``.grad += w grad (1/batch) sum_i mask_i l_i``; the step's ``last`` backward
        all-reduces under DDP. Returns the masked loss sum for a strict step's finite
        check (a sync-free step folds it into the device code)."""
        with self._context(sync=last):
            shifted = losses_of(closure())
            check_losses(shifted, expected=size)
            weighted = torch.dot(shifted, mask) * (self.group_weight / batch)
            if last and overflow is not None:
                # inf in every replica's .grad before the all-reduce: the scaler skips
                weighted = weighted * torch.where(overflow, float("inf"), 1.0)
            backward_fn(scaled(weighted, scaler))
        if strict:
            return torch.dot(shifted.detach(), mask)
        if self.check_finite and scaler is None:
            self._guard.require(torch.isfinite(shifted.detach()).all(), PERTURBED_LOSS)
        return None

    def _eps_in_place(
        self,
        g: list[Tensor],
        params: list[Tensor],
        k: int,
        plan: _Plan,
        scaler: torch.amp.GradScaler | None,
        inv_scale: float,
        overflow: Tensor | None,
    ) -> Tensor | None:
        """``g = grad L_k(theta)`` (scaled like the losses) becomes ``eps_k`` in place:
        unscaled, averaged over the replicas with the ascent all-reduce, normalized and
        multiplied by the radius. Returns ``overflow`` (sync-free with a scaler: some
        ``grad L_k`` so far was not finite); a strict fp16 overflow poisons ``.grad``."""
        strict = plan.ascent is not None
        if not strict:
            unscale_(g, scaler, strict=False)  # by the scale on the device
        elif inv_scale != 1.0:
            torch._foreach_mul_(g, inv_scale)
        if self.ascent_all_reduce and distributed():
            self._all_reduce.average(g)
        norms = torch.stack(torch._foreach_norm(g))
        norm = norms if self.per_tensor else torch.linalg.vector_norm(norms)
        if plan.ascent is None:
            # sync-free: an absent group has g = 0, so eps_k = r * 0 / (0 + TINY) = 0
            self._scaled_eps(g, params, k, self.radii.radius(k, norm, None, None, params), norm)
            if scaler is not None:
                overflow = _zero_unless_finite(g, norm, overflow)
        elif scaler is not None and not bool(torch.isfinite(norm).all()):
            # fp16 overflow in grad L_k: put an inf in .grad before the step's
            # all-reduce, so the scaler skips the step on every replica; run the
            # remaining passes unperturbed (every replica runs the same passes)
            _poison(params)
            torch._foreach_zero_(g)
        elif plan.ascent.counts[k] > 0:
            r = self.radii.radius(k, norm, plan.ascent.counts[k], plan.ascent.batch, params)
            self._scaled_eps(g, params, k, r, norm)
        # else: no sample of group k behind grad L_k (here, per replica): eps_k = 0
        return overflow

    def _scaled_eps(
        self, g: list[Tensor], params: list[Tensor], group: int, r: Tensor | float, norm: Tensor
    ) -> None:
        """``eps_k = rho_t * r_k * g_k / ||g_k||`` in place on ``g`` (``rho_t``: the
        tensor's parameter group's ``rho``; ``r_k`` and ``||g_k||`` per tensor or one for
        all); records ``rho_t * r_k`` in :attr:`last_radii`."""
        factor = r / (norm + TINY)
        radius = torch.as_tensor(r, dtype=norm.dtype, device=norm.device).detach()
        rhos = [float(grp["rho"]) for grp in self.param_groups]
        if len(set(rhos)) == 1:
            rho = rhos[0]
            if isinstance(factor, Tensor) and factor.ndim == 1:
                torch._foreach_mul_(g, list((factor * rho).unbind()))
            else:
                torch._foreach_mul_(g, factor * rho)
            self.last_radii[group] = radius * rho
            return
        owner = {p: float(grp["rho"]) for grp in self.param_groups for p in grp["params"]}
        per_tensor = torch.tensor([owner[p] for p in params], dtype=norm.dtype, device=norm.device)
        torch._foreach_mul_(g, list((factor * per_tensor).unbind()))
        self.last_radii[group] = radius * per_tensor

    # ------------------------------------------------------------- helpers
    def _check_sync_free(self) -> None:
        """``strict_checks=False`` needs a radius that ignores the counts and a base
        optimizer whose state a skipped step can roll back on the device."""
        if not self._radius_sync_free:
            raise InvalidHyperparameterError(
                f"{type(self).__name__} cannot take sync-free steps (strict_checks=False): "
                f"its radius ({type(self.radii).__name__}) needs each group's sample count "
                "in the batch, read on the host; use strict_checks=None or True"
            )
        refuse_unrollbackable(self.base_optimizer, trainable(self.param_groups))

    def _groups_on(self, device: torch.device) -> Tensor:
        key = str(device)
        if key not in self._group_cache:
            self._group_cache[key] = self.group_of.to(device)
        return self._group_cache[key]

    def _context(self, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """``model.no_sync()`` under DDP unless this pass must all-reduce (``sync``)."""
        if sync or not distributed():
            return contextlib.nullcontext()
        no_sync = getattr(self.model, "no_sync", None)
        if no_sync is None:
            if not self._warned_no_model:
                self._warned_no_model = True
                warnings.warn(
                    f"{type(self).__name__} runs under torch.distributed without a DDP model: "
                    "pass model=ddp_model so only the last backward pass all-reduces",
                    stacklevel=4,
                )
            return contextlib.nullcontext()
        return no_sync()


class _Counts(NamedTuple):
    """Samples per group in a batch, and the batch's size."""

    counts: list[int]
    batch: int


class _Plan(NamedTuple):
    """The passes of one step: the groups perturbed (in order), whether the clean backward
    runs, the host counts behind each ``grad L_k`` (``None``: a sync-free step, which reads
    none) and, sync-free with buffers to put back, which groups have a sample (device
    bools; under DDP in any replica)."""

    perturbed: list[int]
    clean: bool
    ascent: _Counts | None
    present: Tensor | None


def _checked_radius(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise InvalidHyperparameterError(f"{name} must be a finite number >= 0, got {value!r}")
    if value == float("inf"):
        raise InvalidHyperparameterError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@torch.no_grad()
def _zero_unless_finite(eps: list[Tensor], norm: Tensor, overflow: Tensor | None) -> Tensor:
    """Sync-free fp16: ``eps_k <- where(||grad L_k|| finite, eps_k, 0)`` on the device (a
    selection: ``0 * inf`` is NaN), as a strict step zeroes it; returns ``overflow``
    or-ed with this group's."""
    bad = torch.isfinite(norm).all().logical_not()
    for t in eps:
        t.masked_fill_(bad, 0.0)
    return bad if overflow is None else overflow | bad


@torch.no_grad()
def _poison(params: list[Tensor]) -> None:
    """Make ``.grad`` non-finite (the scaler then skips the step)."""
    p = params[0]
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    p.grad.view(-1)[0] = float("inf")


__all__ = ["FixedRadii", "GroupRadius", "GroupwiseSAM"]
