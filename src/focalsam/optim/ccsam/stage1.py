"""CC-SAM (Zhou et al., CVPR 2023): class-conditional sharpness-aware minimization.

CC-SAM is a two-stage recipe and does not fit the two-weight rule of
:class:`~focalsam.optim.engine.WeightedSAM`: it perturbs once per class present
in the batch, with a radius that depends on the class.

**Stage 1** (:class:`CCSAM`). For each class ``c`` present in a batch of ``B``
samples, with ``g_c = grad mean_{n: y_n = c} l_n(theta)`` over the perturbed
set ``S`` of parameters (``P`` scalars, norm ``||w||``) and ``n_c`` the class's
training count::

    rho_c = rho * sqrt(||w|| / ||g_c||) * P ** (1/4) / (sqrt(2) * (n_c - 1) ** (1/4))
    eps_c = rho_c * g_c / ||g_c||
    L     = (1 - f) / B * sum_n l_n(theta) + f / B * sum_c sum_{n: y_n = c} l_n(theta + eps_c)

and the base optimizer steps on ``grad L``. ``f`` is ``flat_ratio``.

* ``mode="classifier"`` (default, the public code ``zzpustc/CC-SAM``,
  ``train_cifar.py``): ``S`` is the classifier only. The norms are taken per
  parameter tensor (weight and bias each get their own ``g_{c,k} / ||g_{c,k}||``
  and ``||g_{c,k}||`` in the radius), ``||w||`` is the norm of the whole
  classifier (the first public version took it per tensor too). The backbone
  runs forward and backward once; per class present
  the classifier alone runs one backward (``g_c``), one forward and one
  backward (at ``theta + eps_c``, on that class's features).
* ``mode="network"`` (the paper: "both the feature extractor and classifier are
  trained under parameter perturbations at a class-conditioned scale"): ``S`` is
  every trainable parameter and ``eps_c`` is normalized as one vector, as in
  SAM. It is the group-wise rule with one group per class, and steps through the
  group-wise engine (:class:`~focalsam.optim.ccsam.network.GroupwiseCCSAM`, with
  its DDP, AMP and BatchNorm handling). The closure runs once at ``theta`` and
  once per class present at ``theta + eps_c``; a step is ``1 + k`` forward and
  ``2k + 1`` backward passes of the whole network for ``k`` classes present
  (``2k`` when ``f = 1``).

Where ours differs from the public code, and why:

* Its classifier perturbation is written into ``param.data`` and undone before
  the single backward, so the gradient that reaches the features goes through
  the *unperturbed* classifier. Ours runs each class's classifier at
  ``theta + eps_c`` functionally and back-propagates through it: the exact
  gradient of ``L``. (The two differ by ``O(eps)``; the published radii are tiny.)
* A zero class gradient divides by zero there; here every norm gets ``+1e-12``.
* A class with a single training sample makes ``(n_c - 1) ** (1/4)`` zero there;
  here it is refused up front with :class:`ClassCountsError`.
* The paper's radius could not be read here: ``mode="network"`` uses the public
  code's formula with ``S`` = all parameters. ``per_tensor`` switches either
  mode between per-tensor and whole-vector normalization.

**Stage 2** (:class:`~focalsam.optim.ccsam.stage2.CCSAMStage2`, built by
:meth:`CCSAM.second_stage`): with the backbone frozen and class-balanced batches,
retrain the classifier on adversarially perturbed features (see its module).

Published recipe (public ``configs/Cifar{10,100}.json``; ResNet-32, batch 64,
SGD momentum 0.9, weight decay 2e-4): stage 1 for 200 epochs at lr 0.1 with 5
linear warm-up epochs and x0.1 at epochs 160 and 180, instance-balanced
batches; stage 2 for 30 epochs (230 in all) with a new SGD on the classifier
alone at lr 0.01 (CIFAR), class-balanced batches. ``flat_ratio``/``rho``:
CIFAR-10 1.0/1e-2 then 0.3/1e-6 (later config), CIFAR-100 0.2/1e-7 then
0.5/1e-6; ``up_limit`` 0.8 then 1.0 (CIFAR-10), 0.3 (CIFAR-100); stage-2
``rho2 = 1``, ``div = 2``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.optim import Optimizer

from focalsam.optim.ascent import TINY
from focalsam.optim.backward import BackwardFn, default_backward
from focalsam.optim.buffers import DeviceCache, zero_grads
from focalsam.optim.ccsam.network import GroupwiseCCSAM
from focalsam.optim.ccsam.radius import NO_ACCUMULATION, NO_SYNC_FREE, ccsam_radius
from focalsam.optim.ccsam.stage2 import (
    CCSAMStage2,
    LossFn,
    per_sample_cross_entropy,
)
from focalsam.optim.errors import (
    AccumulationError,
    InvalidHyperparameterError,
    LabelError,
    LossShapeError,
    NonFiniteLossError,
    StepOrderError,
)
from focalsam.optim.policies.batchnorm import BatchNormUpdate
from focalsam.optim.policies.scaler import active_scaler, base_step
from focalsam.optim.validators import (
    ClassCounts,
    check_classifier_outputs,
    check_losses,
    check_targets,
    checked_values,
    ensure_finite,
    losses_of,
    validate_bn_update,
    validate_ccsam_counts,
    validate_max_grad_norm,
    validate_rho,
    validate_step_options,
)
from focalsam.optim.wrapped import WrappedOptimizer, trainable

__all__ = ["CCSAM"]

Mode = Literal["classifier", "network"]


# ------------------------------------------------------------------ stage 1
class CCSAM(WrappedOptimizer):
    """CC-SAM, stage 1: one class-conditioned perturbation per class present.

    ``rho_c = rho * sqrt(||w|| / ||g_c||) * P^(1/4) / (sqrt(2) (n_c - 1)^(1/4))``,
    ``eps_c = rho_c g_c / ||g_c||``, and the step descends
    ``(1 - f) mean_n l_n(theta) + f mean_n l_n(theta + eps_{y_n})``
    (see the module docstring for the public code and the paper).

    Args:
        params: parameters or parameter groups (all the model's trainable ones).
        base_optimizer: a ``torch.optim.Optimizer`` class (built here on the
            same groups with ``**base_kwargs``) or an instance (``params=None``).
        class_counts: training samples per class (length = number of classes,
            every count >= 2).
        classifier: the module mapping features to logits, called exactly once
            by the closure on the batch's features (e.g. ``model.fc``). Required
            in ``mode="classifier"``; its trainable parameters must be in
            ``params``. It must act on each sample alone (a linear or cosine
            classifier does).
        num_classes: checked against ``len(class_counts)`` when given.
        rho: radius scale (the public code's ``noise_ratio``), >= 0; groups may
            set their own, and a scheduler may change ``group["rho"]``.
        flat_ratio: ``f``, weight of the perturbed loss, in ``[0, 1]``.
        mode: ``"classifier"`` (public code, default) or ``"network"`` (paper).
        per_tensor: normalize each parameter tensor apart (default: ``True``
            in classifier mode as the public code, ``False`` in network mode).
        loss_fn: per-sample loss of the perturbed classifier's logits in
            classifier mode, ``loss_fn(logits, targets)``; cross-entropy by
            default (the public code uses plain cross-entropy there even when
            the closure's loss is mixup's).
        model: the module, for ``bn_update="clean"`` and DDP in network mode.
        bn_update: network mode: ``"both"`` updates BatchNorm statistics in
            every forward, ``"clean"`` freezes them in the perturbed ones.
            Classifier mode has a single forward, so both mean the same there.
        ascent_all_reduce: network mode under DDP: average each ``g_c`` over the
            replicas before its ascent (a DDP run then equals one process on the
            global batch); off, ``eps_c`` is per replica. Classifier mode refuses it.
        max_grad_norm: clip the final gradient to this norm before the base step.
        check_finite: raise :class:`NonFiniteLossError` (no step taken) when a
            forward returns NaN/inf losses.
        strict_checks: ``None`` or ``True``: CC-SAM always checks on the host; it
            plans its passes on the classes present in each batch, which it reads
            there (one sync per step). ``False`` (sync-free) is refused: its radius
            takes each class's count in the batch, and a sync-free step would have to
            run the passes of every class of the dataset whatever the batch holds (100
            per step on CIFAR-100).
        sam_every: must be 1 (every step perturbs): accepted so a caller can pass
            the engine's settings alike; other values are refused.
        **base_kwargs: the base optimizer's options (``lr``, ``momentum``, ...).

    ``step(closure, targets)``: ``closure()`` runs the forward pass and returns
    per-sample losses (or a tuple starting with them), as for the other
    optimizers. Classifier mode calls it once and captures the classifier's
    input with a hook; network mode calls it ``1 + k`` times for ``k`` classes
    present. ``last_radii`` holds the radius per class present in the last step
    (per tensor in per-tensor mode).
    ``state_dict`` is the base optimizer's state, plus in network mode the
    group-wise engine's pass counts (:meth:`passes_per_step`). Under DDP, network
    mode all-reduces once per step (the engine's ``no_sync``); classifier mode is
    not handled specially (its one backward all-reduces).
    :meth:`step_accumulated` is refused: in network mode an exact accumulated step
    would hold one gradient buffer the size of the model per class present in the
    batch (the group-wise engine accumulates exactly, one buffer per perturbed group);
    in classifier mode each ``eps_c`` comes from the whole batch's features, which
    micro-batches never hold at once.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
        ...                             torch.nn.Linear(6, 3))
        >>> opt = CCSAM(model.parameters(), torch.optim.SGD, class_counts=[50, 10, 3],
        ...             classifier=model[2], rho=0.05, flat_ratio=0.5, lr=0.1)
        >>> x, y = torch.randn(8, 4), torch.tensor([0, 0, 0, 1, 1, 2, 0, 1])
        >>> losses = opt.step(
        ...     lambda: torch.nn.functional.cross_entropy(model(x), y, reduction="none"), y)
        >>> sorted(opt.last_radii)  # the classes present
        [0, 1, 2]
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None,
        base_optimizer: type[Optimizer] | Optimizer = torch.optim.SGD,
        *,
        class_counts: ClassCounts,
        classifier: nn.Module | None = None,
        num_classes: int | None = None,
        rho: float = 1e-6,
        flat_ratio: float = 0.5,
        mode: Mode = "classifier",
        per_tensor: bool | None = None,
        loss_fn: LossFn | None = None,
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
        validate_step_options(strict_checks, sam_every)
        if strict_checks is False:
            raise InvalidHyperparameterError(NO_SYNC_FREE)
        if sam_every != 1:
            raise InvalidHyperparameterError(
                f"CC-SAM perturbs on every step: sam_every must be 1, got {sam_every}"
            )
        if mode not in ("classifier", "network"):
            raise InvalidHyperparameterError(
                f"mode must be 'classifier' (public code) or 'network' (paper), got {mode!r}"
            )
        if not isinstance(flat_ratio, int | float) or not 0 <= flat_ratio <= 1:
            raise InvalidHyperparameterError(f"flat_ratio must lie in [0, 1], got {flat_ratio!r}")
        validate_bn_update(bn_update)
        if ascent_all_reduce and mode == "classifier":
            raise InvalidHyperparameterError(
                "ascent_all_reduce averages each class's ascent over the replicas in network "
                "mode; classifier mode does not take it"
            )
        validate_max_grad_norm(max_grad_norm)
        if mode == "classifier" and classifier is None:
            raise InvalidHyperparameterError(
                "mode='classifier' perturbs the classifier: pass classifier=model.fc "
                "(the module mapping features to logits), or use mode='network'"
            )
        self.class_counts = validate_ccsam_counts(class_counts, num_classes)
        self.num_classes = check_classifier_outputs(classifier, self.class_counts)
        self._wrap(params, base_optimizer, {"rho": rho}, base_kwargs)
        self.flat_ratio = float(flat_ratio)
        self.mode: Mode = mode
        self.per_tensor = (mode == "classifier") if per_tensor is None else bool(per_tensor)
        self.classifier = classifier
        self.loss_fn: LossFn = loss_fn or per_sample_cross_entropy
        self.max_grad_norm = max_grad_norm
        self.check_finite = check_finite
        self._counts: list[float] = self.class_counts.tolist()

        self._cls_names: list[str] = []
        self._cls_params: list[Tensor] = []
        if classifier is not None:
            for name, p in classifier.named_parameters():
                if p.requires_grad:
                    self._cls_names.append(name)
                    self._cls_params.append(p)
            if mode == "classifier":
                if not self._cls_params:
                    raise InvalidHyperparameterError("the classifier has no trainable parameters")
                owned = {p for g in self.param_groups for p in g["params"]}
                missing = [n for n, p in zip(self._cls_names, self._cls_params) if p not in owned]
                if missing:
                    raise InvalidHyperparameterError(
                        f"classifier parameters {missing} are not among the optimizer's params: "
                        "pass the whole model's parameters"
                    )

        self._rho_values: list[float] = []
        self._rho_cache = DeviceCache()
        self.last_radii: dict[int, Tensor] = {}
        # Network mode: the group-wise engine on this optimizer's base and groups.
        self._network: GroupwiseCCSAM | None = None
        if mode == "network":
            self._network = GroupwiseCCSAM(
                None,
                self.base_optimizer,
                class_counts=self.class_counts,
                rho=rho,
                flat_ratio=self.flat_ratio,
                per_tensor=self.per_tensor,
                model=model,
                bn_update=bn_update,
                ascent_all_reduce=ascent_all_reduce,
                max_grad_norm=max_grad_norm,
                check_finite=check_finite,
                strict_checks=strict_checks,
            )

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

        ``closure()`` runs the forward pass at ``theta`` and returns per-sample
        losses ``(B,)`` (or a tuple starting with them); ``targets`` are the
        labels ``(B,)`` that group the samples by class. ``scaler``: an fp16
        ``GradScaler`` (a step with an inf/NaN gradient is skipped).
        ``backward(loss)`` replaces ``loss.backward()`` for the passes that
        reach the feature extractor. Gradients are zeroed here.
        """
        if closure is None:
            raise StepOrderError(
                "CCSAM.step needs a closure that runs the forward pass and returns "
                "per-sample losses"
            )
        if targets is None:
            raise LabelError("CC-SAM groups samples by class: pass the labels as targets (B,)")
        if self._network is not None:
            self._opt_called = True  # tells lr schedulers that the optimizer stepped
            try:
                return self._network.step(closure, targets, scaler=scaler, backward=backward)
            finally:
                self.last_radii = self._network.last_radii
        scaler = active_scaler(scaler)
        out, losses = self._passes(closure, targets, scaler, backward)
        self._opt_called = True  # tells lr schedulers that the optimizer stepped
        params = [p for p in trainable(self.param_groups) if p.grad is not None]
        base_step(self.base_optimizer, params, scaler, self.max_grad_norm)
        if isinstance(out, tuple):
            return (losses.detach(), *out[1:])
        return losses.detach()

    def passes_per_step(self) -> tuple[float, float] | None:
        """Network mode: the mean (forward, backward) passes per step so far (``None``
        before a step, and in classifier mode)."""
        return None if self._network is None else self._network.passes_per_step()

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state; in network mode with the engine's pass counts."""
        if self._network is not None:
            return self._network.state_dict()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` (checked; a bad one changes nothing)."""
        if self._network is None:
            super().load_state_dict(state_dict)
            return
        try:
            self._network.load_state_dict(state_dict)
        finally:  # loading replaces the base's groups: share them again
            self.param_groups = self.base_optimizer.param_groups
            self.state = self.base_optimizer.state

    def step_accumulated(self, micro: Any, **kwargs: Any) -> list[Any]:
        """Refused (:class:`AccumulationError`): see the class docstring."""
        raise AccumulationError(NO_ACCUMULATION)

    def second_stage(self, optimizer: Optimizer, **kwargs: Any) -> CCSAMStage2:
        """Stage 2 on the same classifier and class counts: ``optimizer`` holds the
        classifier's parameters only; ``kwargs`` go to :class:`CCSAMStage2`."""
        if self.classifier is None:
            raise InvalidHyperparameterError(
                "stage 2 retrains the classifier: build CCSAM with classifier=..."
            )
        return CCSAMStage2(self.classifier, optimizer, self.class_counts, **kwargs)

    # -------------------------------------------------------------- helpers
    def _perturbation(
        self,
        grads: list[Tensor],
        inv_scale: float,
        param_norm: Tensor,
        num: int,
        rhos: Tensor,
        cls: int,
    ) -> list[Tensor]:
        """``eps_k = r_k * g_k / ||g||`` with ``r_k`` the :func:`ccsam_radius` of class
        ``cls``, in place on the (unscaled) gradients; ``||g||`` per tensor or over all."""
        if inv_scale != 1.0:
            torch._foreach_mul_(grads, inv_scale)
        norms = torch.stack(torch._foreach_norm(grads))
        gnorm = (norms if self.per_tensor else torch.linalg.vector_norm(norms)) + TINY
        radii = ccsam_radius(rhos, param_norm, gnorm, self._counts[cls], num)
        assert isinstance(radii, Tensor)
        radii = radii.detach()
        uniform = not self.per_tensor and self._uniform_rho
        self.last_radii[cls] = radii[0] if uniform else radii
        torch._foreach_mul_(grads, list((radii / gnorm).unbind()))
        return grads

    def _rhos(self, params: list[Tensor], like: Tensor) -> Tensor:
        """Each tensor's ``rho`` (its group's; a scheduler may change it), on ``like``'s device."""
        if len(self.param_groups) == 1:
            values = [float(self.param_groups[0]["rho"])] * len(params)
        else:
            owner = {p: float(g["rho"]) for g in self.param_groups for p in g["params"]}
            values = [owner[p] for p in params]
        self._uniform_rho = len(set(values)) == 1
        if values != self._rho_values:
            self._rho_values = values
            self._rho_cache = DeviceCache(torch.tensor(values, dtype=torch.float64))
        return self._rho_cache.tensor(like)

    # ------------------------------------------------------------- passes
    def _passes(
        self,
        closure: Callable[[], Any],
        targets: Tensor,
        scaler: torch.amp.GradScaler | None,
        backward: BackwardFn | None,
    ) -> tuple[Any, Tensor]:
        """Run one step's passes, leaving ``grad L`` in ``.grad``; returns the closure's
        output and its per-sample losses."""
        with self._capture() as captured:
            out = closure()
        batch = self._start(out, targets, scaler)
        backward_fn = backward or default_backward
        self._classifier_passes(batch, self._features(captured, batch.size), backward_fn)
        return out, batch.losses

    def _start(self, out: Any, targets: Tensor, scaler: torch.amp.GradScaler | None) -> _Batch:
        """Check the clean forward's losses and labels (one host sync), zero the gradients."""
        losses = losses_of(out)
        size = check_losses(losses)
        targets = check_targets(targets, size)
        classes, counts = torch.unique(targets, sorted=True, return_counts=True)
        values = checked_values(
            losses, targets, self.num_classes, self.check_finite, [classes, counts]
        )
        n = classes.numel() if self.flat_ratio > 0 else 0  # f = 0: no perturbed term
        params = trainable(self.param_groups)
        zero_grads(params)
        self.last_radii = {}
        return _Batch(
            losses,
            targets,
            size,
            values[:n],
            values[classes.numel() :][:n],
            _loss_scale(scaler, losses),
            scaler is not None,
            params,
        )

    # ------------------------------------------------------- classifier mode
    @contextlib.contextmanager
    def _capture(self) -> Iterator[Captured]:
        """In classifier mode, record the classifier's inputs (and autocast state)."""
        captured: Captured = []
        if self.mode != "classifier":
            yield captured
            return
        assert self.classifier is not None

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            first = args[0] if args and isinstance(args[0], Tensor) else None
            state = None if first is None else _autocast_state(first.device.type)
            captured.append((args, kwargs, state))

        handle = self.classifier.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield captured
        finally:
            handle.remove()

    @staticmethod
    def _features(captured: Captured, size: int) -> tuple[Tensor, tuple[bool, torch.dtype]]:
        """The batch's features: the classifier's one input, one row per sample."""
        if len(captured) != 1:
            raise InvalidHyperparameterError(
                f"the closure called the classifier {len(captured)} times; CC-SAM's "
                "classifier mode needs it called exactly once, on the batch's features"
            )
        args, kwargs, autocast = captured[0]
        if len(args) != 1 or kwargs or autocast is None:
            raise InvalidHyperparameterError(
                "the classifier must be called with one tensor of features, "
                f"got {len(args)} positional and {len(kwargs)} keyword arguments"
            )
        features: Tensor = args[0]
        if features.ndim < 1 or features.shape[0] != size:
            raise LossShapeError(
                f"the classifier's input has shape {tuple(features.shape)}, "
                f"expected {size} rows (one per sample)"
            )
        return features, autocast

    def _classifier_passes(
        self,
        batch: _Batch,
        captured: tuple[Tensor, tuple[bool, torch.dtype]],
        backward_fn: BackwardFn,
    ) -> None:
        """The classifier alone per class present, then one backward through the network."""
        assert self.classifier is not None
        features, (enabled, dtype) = captured
        losses, targets, scale = batch.losses, batch.targets, batch.scale
        cls_params = self._cls_params
        for p in cls_params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        cls_grads: list[Tensor] = [p.grad for p in cls_params]  # type: ignore[misc]

        feat_grad: Tensor | None = None
        if batch.classes:
            num = sum(p.numel() for p in cls_params)
            param_norm = _global_norm(cls_params) + TINY
            feats = features.detach()
            feat_grad = torch.zeros_like(feats)
            head_total = losses.new_zeros(())
            rhos = self._rhos(cls_params, param_norm)
            for c, idx in batch.by_class():
                # g_c through the classifier only (the graph of the clean forward).
                g = torch.autograd.grad(
                    losses.index_select(0, idx).sum() * (scale / idx.numel()),
                    cls_params,
                    retain_graph=True,
                )
                eps = self._perturbation(list(g), 1.0 / scale, param_norm, num, rhos, c)
                f_c = feats.index_select(0, idx).requires_grad_(True)
                shifted = {n: p + e for n, p, e in zip(self._cls_names, cls_params, eps)}
                with torch.autocast(features.device.type, dtype=dtype, enabled=enabled):
                    logits = functional_call(self.classifier, shifted, (f_c,))
                head = self.loss_fn(logits, targets.index_select(0, idx))
                grads = torch.autograd.grad(
                    head.sum() * (self.flat_ratio * scale / batch.size), [f_c, *cls_params]
                )
                feat_grad.index_copy_(0, idx, grads[0])
                torch._foreach_add_(cls_grads, list(grads[1:]))
                head_total = head_total + head.detach().sum()
            # With a scaler, an overflowing g_c makes eps_c non-finite: the scaler skips.
            if self.check_finite and not batch.scaled:
                self._ensure_finite(
                    head_total,
                    batch.params,
                    "the classifier at theta + eps_c returned non-finite losses; no step was taken",
                )
        # One backward through the feature extractor for the clean loss and all classes.
        surrogate: Tensor | None = None
        if self.flat_ratio < 1:
            surrogate = losses.sum() * ((1.0 - self.flat_ratio) * scale / batch.size)
        if feat_grad is not None:
            # d/dfeatures of sum(features * G) is G: the classes' feature gradients.
            dot = torch.sum(features * feat_grad)
            surrogate = dot if surrogate is None else surrogate + dot
        if surrogate is not None:
            backward_fn(surrogate)

    # -------------------------------------------------------------- helpers
    @staticmethod
    def _ensure_finite(total: Tensor, params: list[Tensor], message: str) -> None:
        """Raise :class:`NonFiniteLossError` with the gradients zeroed (no step) unless
        ``total`` is finite."""
        try:
            ensure_finite(total, message)
        except NonFiniteLossError:
            zero_grads(params)
            raise


class _Batch(NamedTuple):
    """A checked clean forward: its losses, labels, size ``B``, the classes present with
    their batch counts, the loss scale and the trainable parameters (gradients zeroed)."""

    losses: Tensor
    targets: Tensor
    size: int
    classes: list[int]
    counts: list[int]
    scale: float
    scaled: bool
    params: list[Tensor]

    def by_class(self) -> Iterator[tuple[int, Tensor]]:
        """Each class present and the indices of its samples."""
        return zip(self.classes, torch.argsort(self.targets, stable=True).split(self.counts))


Captured = list[tuple[tuple[Any, ...], dict[str, Any], tuple[bool, torch.dtype] | None]]


def _global_norm(tensors: list[Tensor]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm([t.detach() for t in tensors])))


def _loss_scale(scaler: torch.amp.GradScaler | None, like: Tensor) -> float:
    """The scaler's current scale (1 without one); ``scale()`` also initializes it."""
    return 1.0 if scaler is None else float(scaler.scale(like.new_ones((), dtype=torch.float32)))


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    """Whether autocast is on for ``device_type`` here, and its dtype."""
    with contextlib.suppress(AttributeError, TypeError):
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    if device_type == "cpu":
        return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
