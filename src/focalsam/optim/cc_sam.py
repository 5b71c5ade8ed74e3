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
  SAM. The closure runs once at ``theta`` and once per class present at
  ``theta + eps_c``; a step is ``1 + k`` forward and ``2k + 1`` backward passes
  of the whole network for ``k`` classes present (``2k`` when ``f = 1``).

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

**Stage 2** (:class:`CCSAMStage2`): with the backbone frozen and class-balanced
batches, retrain the classifier on adversarially perturbed features. With
``w_c = log(n_max / n_c + 0.01) / div`` and ``G_c`` the gradient of the class's
mean loss with respect to the features of its samples::

    f~_n = f_n + rho2 * w_c * G_c[n] / ||G_c||           (for n in class c)
    L2   = alpha * mean_n w_{y_n} l(f~_n) + (1 - alpha) * mean_n l(f_n)
    alpha = min((e + 1) / E, up_limit)                      (stage-2 epoch e of E)

as the public code's ``train_sample``. It loops over classes, running the
classifier on the whole batch per class; since a classifier acts on each
sample alone, one backward gives every ``G_c`` and one forward all perturbed
logits here (2 classifier forwards and 2 backwards per step, same result).

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
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.optim import Optimizer

from focalsam.optim.class_weights import ClassCounts, validate_class_counts
from focalsam.optim.engine import (
    BackwardFn,
    BatchNormUpdate,
    _check_losses,
    _default_backward,
    _losses_of,
    _zero_grads,
)
from focalsam.optim.errors import (
    ClassCountsError,
    InvalidHyperparameterError,
    LabelError,
    LossShapeError,
    NonFiniteLossError,
    StepOrderError,
)
from focalsam.optim.wrapper import (
    WrappedOptimizer,
    _validate_bn_update,
    _validate_max_grad_norm,
    _validate_rho,
)

Mode = Literal["classifier", "network"]
LossFn = Callable[[Tensor, Tensor], Tensor]

_TINY = 1e-12


class PassCount(NamedTuple):
    """Passes of one step. ``forward``/``backward``: through the whole network
    (closure calls; backward passes that reach the feature extractor).
    ``classifier_forward``/``classifier_backward``: through the classifier alone."""

    forward: int
    backward: int
    classifier_forward: int
    classifier_backward: int


# ---------------------------------------------------------------- pure math
def ccsam_radius(
    rho: float,
    param_norm: Tensor | float,
    grad_norm: Tensor | float,
    class_count: int | float,
    num_params: int,
) -> Tensor | float:
    """CC-SAM's class-conditioned radius (public code)::

        rho * sqrt(param_norm / grad_norm) * num_params ** (1/4) / (sqrt(2) * (n - 1) ** (1/4))

    >>> round(ccsam_radius(0.01, 4.0, 1.0, 17, 16), 6)  # 0.01 * 2 * 2 / (sqrt(2) * 2)
    0.014142
    """
    if class_count <= 1:
        raise ClassCountsError(
            f"CC-SAM's radius divides by (n - 1) ** (1/4): a class count of {class_count} "
            "is not allowed (every class needs at least 2 training samples)"
        )
    return (
        rho
        * (param_norm / grad_norm) ** 0.5
        * num_params**0.25
        / (math.sqrt(2.0) * (class_count - 1) ** 0.25)
    )


def validate_ccsam_counts(class_counts: ClassCounts, num_classes: int | None = None) -> Tensor:
    """:func:`validate_class_counts`, and every class has at least 2 training samples
    (CC-SAM's radius divides by ``(n_c - 1) ** (1/4)``)."""
    counts = validate_class_counts(class_counts, num_classes)
    ones = (counts < 2).nonzero().flatten().tolist()
    if ones:
        raise ClassCountsError(
            "CC-SAM's radius divides by (n_c - 1) ** (1/4), so every class needs at least "
            f"2 training samples; classes {ones} have a count of 1"
        )
    return counts


def ccsam_feature_weights(
    class_counts: ClassCounts, div: float = 2.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Stage 2's class weight ``w_c = log(n_max / n_c + 0.01) / div``: the scale of
    the feature perturbation and of the perturbed loss (near 0 for the head class).

    >>> ccsam_feature_weights([100, 10], div=1.0)
    tensor([0.0100, 2.3036])
    """
    if not div > 0 or not math.isfinite(div):
        raise InvalidHyperparameterError(f"div must be a finite number > 0, got {div}")
    counts = validate_class_counts(class_counts)
    return (torch.log(counts.max() / counts + 0.01) / div).to(dtype)


def ccsam_mix_weight(epoch: int, epochs: int, up_limit: float = 1.0) -> float:
    """Stage 2's weight of the perturbed loss at stage-2 epoch ``epoch`` (0-based)
    of ``epochs``: ``min((epoch + 1) / epochs, up_limit)``."""
    if epochs < 1:
        raise InvalidHyperparameterError(f"epochs must be >= 1, got {epochs}")
    if not 0 <= epoch < epochs:
        raise InvalidHyperparameterError(f"epoch must lie in [0, {epochs}), got {epoch}")
    if not 0 <= up_limit <= 1:
        raise InvalidHyperparameterError(f"up_limit must lie in [0, 1], got {up_limit}")
    return min((epoch + 1) / epochs, up_limit)


def perturbed_feature_losses(
    classifier: nn.Module,
    features: Tensor,
    targets: Tensor,
    class_weights: Tensor,
    rho: float = 1.0,
    loss_fn: LossFn | None = None,
) -> tuple[Tensor, Tensor]:
    """Stage 2's two per-sample losses: clean ``l(f_n)`` and weighted perturbed
    ``w_{y_n} * l(f_n + rho * w_{y_n} * G_{y_n}[n] / ||G_{y_n}||)``.

    ``G_c`` is the gradient of class ``c``'s losses with respect to its samples'
    features (one backward for all classes: the classifier acts on each sample
    alone); the perturbation is a constant. ``features`` are detached here, so
    gradients reach the classifier only.
    """
    loss_fn = loss_fn or _cross_entropy
    feats = features.detach().requires_grad_(True)
    clean = loss_fn(classifier(feats), targets)
    (grad,) = torch.autograd.grad(clean.sum(), feats, retain_graph=True)
    w = class_weights.to(device=feats.device, dtype=grad.dtype)
    row_sq = grad.flatten(1).square().sum(1)
    class_norm = torch.zeros_like(w).index_add_(0, targets, row_sq).sqrt()
    scale = rho * w / (class_norm + _TINY)
    noise = grad * scale[targets].view(-1, *([1] * (grad.ndim - 1)))
    perturbed = loss_fn(classifier(feats.detach() + noise), targets) * w[targets].to(clean.dtype)
    return clean, perturbed


def _cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits, targets, reduction="none")


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
        model: the module, for ``bn_update="clean"`` in network mode.
        bn_update: network mode: ``"both"`` updates BatchNorm statistics in
            every forward, ``"clean"`` freezes them in the perturbed ones.
            Classifier mode has a single forward, so both mean the same there.
        max_grad_norm: clip the final gradient to this norm before the base step.
        check_finite: raise :class:`NonFiniteLossError` (no step taken) when a
            forward returns NaN/inf losses.
        **base_kwargs: the base optimizer's options (``lr``, ``momentum``, ...).

    ``step(closure, targets)``: ``closure()`` runs the forward pass and returns
    per-sample losses (or a tuple starting with them), as for the other
    optimizers. Classifier mode calls it once and captures the classifier's
    input with a hook; network mode calls it ``1 + k`` times for ``k`` classes
    present. ``last_step_passes`` holds the passes of the last step and
    ``last_radii`` the radius per class present (per tensor in per-tensor mode).
    ``state_dict`` is the base optimizer's state only. DDP is not handled
    specially (no ``no_sync``; network mode all-reduces in every backward).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
        ...                             torch.nn.Linear(6, 3))
        >>> opt = CCSAM(model.parameters(), torch.optim.SGD, class_counts=[50, 10, 3],
        ...             classifier=model[2], rho=0.05, flat_ratio=0.5, lr=0.1)
        >>> x, y = torch.randn(8, 4), torch.tensor([0, 0, 0, 1, 1, 2, 0, 1])
        >>> losses = opt.step(
        ...     lambda: torch.nn.functional.cross_entropy(model(x), y, reduction="none"), y)
        >>> opt.last_step_passes
        PassCount(forward=1, backward=1, classifier_forward=3, classifier_backward=6)
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
        max_grad_norm: float | None = None,
        check_finite: bool = True,
        **base_kwargs: Any,
    ) -> None:
        _validate_rho(rho)
        if mode not in ("classifier", "network"):
            raise InvalidHyperparameterError(
                f"mode must be 'classifier' (public code) or 'network' (paper), got {mode!r}"
            )
        if not isinstance(flat_ratio, int | float) or not 0 <= flat_ratio <= 1:
            raise InvalidHyperparameterError(f"flat_ratio must lie in [0, 1], got {flat_ratio!r}")
        _validate_bn_update(bn_update)
        if bn_update == "clean" and mode == "network" and model is None:
            raise InvalidHyperparameterError(
                "bn_update='clean' freezes BatchNorm statistics of a model in the perturbed "
                "forward passes: pass model=..."
            )
        _validate_max_grad_norm(max_grad_norm)
        if mode == "classifier" and classifier is None:
            raise InvalidHyperparameterError(
                "mode='classifier' perturbs the classifier: pass classifier=model.fc "
                "(the module mapping features to logits), or use mode='network'"
            )
        self.class_counts = validate_ccsam_counts(class_counts, num_classes)
        self.num_classes = int(self.class_counts.numel())
        out_features = getattr(classifier, "out_features", None)
        if isinstance(out_features, int) and out_features != self.num_classes:
            raise ClassCountsError(
                f"class_counts has {self.num_classes} entries but the classifier has "
                f"{out_features} outputs"
            )

        self._wrap(params, base_optimizer, {"rho": rho}, base_kwargs)

        self.rho = float(rho)
        self.flat_ratio = float(flat_ratio)
        self.mode: Mode = mode
        self.per_tensor = (mode == "classifier") if per_tensor is None else bool(per_tensor)
        self.classifier = classifier
        self.loss_fn: LossFn = loss_fn or _cross_entropy
        self.model = model
        self.bn_update: BatchNormUpdate = bn_update
        self.max_grad_norm = max_grad_norm
        self.check_finite = check_finite
        # 1 / (sqrt(2) (n_c - 1)^(1/4)) per class, as Python floats.
        self._class_factor = (1.0 / (math.sqrt(2.0) * (self.class_counts - 1.0) ** 0.25)).tolist()

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

        # Transient per-parameter buffers (network mode), allocated once, never saved.
        self._backup: dict[Tensor, Tensor] = {}
        self._rho_cache: dict[tuple[tuple[float, ...], str, torch.dtype], Tensor] = {}
        self._uniform_rho = True
        self.last_step_passes = PassCount(0, 0, 0, 0)
        self.last_radii: dict[int, Tensor] = {}

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
        if scaler is not None and not scaler.is_enabled():
            scaler = None
        self._opt_called = True  # tells lr schedulers that the optimizer stepped
        if self.mode == "classifier":
            out, losses, skip = self._classifier_step(closure, targets, scaler, backward)
        else:
            out, losses, skip = self._network_step(closure, targets, scaler, backward)
        self._update(scaler, skip)
        if isinstance(out, tuple):
            return (losses.detach(), *out[1:])
        return losses.detach()

    def second_stage(self, optimizer: Optimizer, **kwargs: Any) -> CCSAMStage2:
        """Stage 2 on the same classifier and class counts: ``optimizer`` holds the
        classifier's parameters only; ``kwargs`` go to :class:`CCSAMStage2`."""
        if self.classifier is None:
            raise InvalidHyperparameterError(
                "stage 2 retrains the classifier: build CCSAM with classifier=..."
            )
        return CCSAMStage2(self.classifier, optimizer, self.class_counts, **kwargs)

    # ------------------------------------------------------- classifier mode
    def _classifier_step(
        self,
        closure: Callable[[], Any],
        targets: Tensor,
        scaler: torch.amp.GradScaler | None,
        backward: BackwardFn | None,
    ) -> tuple[Any, Tensor, bool]:
        assert self.classifier is not None
        captured: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        autocast: list[tuple[bool, torch.dtype]] = []

        def capture(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured.append((args, kwargs))
            if args and isinstance(args[0], Tensor):
                autocast.append(_autocast_state(args[0].device.type))

        handle = self.classifier.register_forward_pre_hook(capture, with_kwargs=True)
        try:
            out = closure()
        finally:
            handle.remove()
        losses = _losses_of(out)
        batch = _check_losses(losses, targets)
        if len(captured) != 1:
            raise InvalidHyperparameterError(
                f"the closure called the classifier {len(captured)} times; CC-SAM's "
                "classifier mode needs it called exactly once, on the batch's features"
            )
        args, kwargs = captured[0]
        if len(args) != 1 or kwargs or not isinstance(args[0], Tensor):
            raise InvalidHyperparameterError(
                "the classifier must be called with one tensor of features, "
                f"got {len(args)} positional and {len(kwargs)} keyword arguments"
            )
        features: Tensor = args[0]
        if features.ndim < 1 or features.shape[0] != batch:
            raise LossShapeError(
                f"the classifier's input has shape {tuple(features.shape)}, "
                f"expected {batch} rows (one per sample)"
            )
        classes, counts = self._classes_present(losses, targets)
        k = len(classes) if self.flat_ratio > 0 else 0

        params = self._trainable()
        _zero_grads(params)
        cls_params = self._cls_params
        for p in cls_params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        cls_grads: list[Tensor] = [p.grad for p in cls_params]  # type: ignore[misc]
        scale = _loss_scale(scaler, losses)
        self.last_radii = {}

        feat_grad: Tensor | None = None
        if k:
            num = sum(p.numel() for p in cls_params)
            param_norm = _global_norm(cls_params) + _TINY
            enabled, dtype = autocast[0]
            feats = features.detach()
            feat_grad = torch.zeros_like(feats)
            order = torch.argsort(targets, stable=True)
            head_total = losses.new_zeros(())
            coef_all = num**0.25 * param_norm.sqrt()
            rhos = self._rhos(cls_params, param_norm)
            for c, idx in zip(classes, order.split(counts)):
                # g_c through the classifier only (the graph of the clean forward).
                g = torch.autograd.grad(
                    losses.index_select(0, idx).sum() * (scale / idx.numel()),
                    cls_params,
                    retain_graph=True,
                )
                eps = self._perturbation(
                    list(g), 1.0 / scale, coef_all * self._class_factor[c], rhos, c
                )
                f_c = feats.index_select(0, idx).requires_grad_(True)
                shifted = {n: p + e for n, p, e in zip(self._cls_names, cls_params, eps)}
                with torch.autocast(features.device.type, dtype=dtype, enabled=enabled):
                    logits = functional_call(self.classifier, shifted, (f_c,))
                head = self.loss_fn(logits, targets.index_select(0, idx))
                grads = torch.autograd.grad(
                    head.sum() * (self.flat_ratio * scale / batch), [f_c, *cls_params]
                )
                feat_grad.index_copy_(0, idx, grads[0])
                torch._foreach_add_(cls_grads, list(grads[1:]))
                head_total = head_total + head.detach().sum()
            # With a scaler, an overflowing g_c makes eps_c non-finite: the scaler skips.
            if self.check_finite and scaler is None and not bool(torch.isfinite(head_total)):
                _zero_grads(params)
                raise NonFiniteLossError(
                    "the classifier at theta + eps_c returned non-finite losses; no step was taken"
                )
        # One backward through the feature extractor for the clean loss and all classes.
        surrogate: Tensor | None = None
        if self.flat_ratio < 1:
            surrogate = losses.sum() * ((1.0 - self.flat_ratio) * scale / batch)
        if feat_grad is not None:
            # d/dfeatures of sum(features * G) is G: the classes' feature gradients.
            dot = torch.sum(features * feat_grad)
            surrogate = dot if surrogate is None else surrogate + dot
        if surrogate is not None:
            (backward or _default_backward)(surrogate)
        self.last_step_passes = PassCount(1, int(surrogate is not None), k, 2 * k)
        return out, losses, False

    # ---------------------------------------------------------- network mode
    def _network_step(
        self,
        closure: Callable[[], Any],
        targets: Tensor,
        scaler: torch.amp.GradScaler | None,
        backward: BackwardFn | None,
    ) -> tuple[Any, Tensor, bool]:
        out = closure()
        losses = _losses_of(out)
        batch = _check_losses(losses, targets)
        classes, counts = self._classes_present(losses, targets)
        k = len(classes) if self.flat_ratio > 0 else 0
        backward_fn = backward or _default_backward
        params = self._trainable()
        _zero_grads(params)
        scale = _loss_scale(scaler, losses)
        self.last_radii = {}
        forwards, backwards = 1, 0
        if k:
            num = sum(p.numel() for p in params)
            param_norm = _global_norm(params) + _TINY
            coef_all = num**0.25 * param_norm.sqrt()
            rhos = self._rhos(params, param_norm)
            data = [p.data for p in params]
            backup = [self._buffer(p) for p in params]
            torch._foreach_copy_(backup, data)
            order = torch.argsort(targets, stable=True)
            head_total = losses.new_zeros(())
            try:
                for c, idx in zip(classes, order.split(counts)):
                    g = torch.autograd.grad(
                        losses.index_select(0, idx).sum() * (scale / idx.numel()),
                        params,
                        retain_graph=True,
                        allow_unused=True,
                    )
                    grads = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g)]
                    backwards += 1
                    eps = self._perturbation(
                        grads, 1.0 / scale, coef_all * self._class_factor[c], rhos, c
                    )
                    # Through .data: the clean graph keeps its saved tensors' versions,
                    # and every backward through it runs with theta restored.
                    with torch.no_grad():
                        torch._foreach_add_(data, eps)
                    if self.bn_update == "clean":
                        self._freeze_bn()
                    try:
                        perturbed = _losses_of(closure())
                        forwards += 1
                        _check_losses(perturbed, None, expected=batch)
                        head = perturbed.index_select(0, idx)
                        backward_fn(head.sum() * (self.flat_ratio * scale / batch))
                        backwards += 1
                        head_total = head_total + head.detach().sum()
                    finally:
                        with torch.no_grad():
                            torch._foreach_copy_(data, backup)
                        self._unfreeze_bn()
            except BaseException:
                _zero_grads(params)
                raise
            # With a scaler, an overflowing g_c makes eps_c non-finite: the scaler skips.
            if self.check_finite and scaler is None and not bool(torch.isfinite(head_total)):
                _zero_grads(params)
                raise NonFiniteLossError(
                    "the forward pass at theta + eps_c returned non-finite losses; "
                    "the parameters were restored and no step was taken"
                )
        if self.flat_ratio < 1:
            backward_fn(losses.sum() * ((1.0 - self.flat_ratio) * scale / batch))
            backwards += 1
        self.last_step_passes = PassCount(forwards, backwards, 0, 0)
        return out, losses, False

    # -------------------------------------------------------------- helpers
    def _classes_present(self, losses: Tensor, targets: Tensor) -> tuple[list[int], list[int]]:
        """Sorted classes present and their batch counts; checks labels and finite
        losses in the same host sync."""
        classes, counts = torch.unique(targets, sorted=True, return_counts=True)
        flags = [classes, counts]
        if self.check_finite:
            flags.append(torch.isfinite(losses.detach()).all().long().view(1))
        values = torch.cat([f.long() for f in flags]).tolist()
        n = classes.numel()
        present, per_class = values[:n], values[n : 2 * n]
        if present[0] < 0 or present[-1] >= self.num_classes:
            raise LabelError(
                f"labels must lie in [0, {self.num_classes}); got values in "
                f"[{present[0]}, {present[-1]}]"
            )
        if self.check_finite and not values[-1]:
            bad = int((~torch.isfinite(losses.detach())).sum())
            raise NonFiniteLossError(
                f"the forward pass returned {bad} non-finite losses out of {losses.numel()}; "
                "no step was taken"
            )
        return present, per_class

    def _perturbation(
        self, grads: list[Tensor], inv_scale: float, coef: Tensor, rhos: Tensor, cls: int
    ) -> list[Tensor]:
        """``eps_k = rho_k * coef / sqrt(||g||) * g_k / ||g||``, in place on the (unscaled)
        gradients, with ``||g||`` per tensor or over the whole list."""
        if inv_scale != 1.0:
            torch._foreach_mul_(grads, inv_scale)
        norms = torch.stack(torch._foreach_norm(grads))
        gnorm = (norms if self.per_tensor else torch.linalg.vector_norm(norms)) + _TINY
        radii = (coef * rhos / gnorm.sqrt()).detach()
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
        key = (tuple(values), str(like.device), like.dtype)
        cached = self._rho_cache.get(key)
        if cached is None:
            self._rho_cache.clear()
            cached = self._rho_cache[key] = torch.tensor(values, dtype=like.dtype).to(like.device)
        return cached

    def _buffer(self, p: Tensor) -> Tensor:
        buf = self._backup.get(p)
        if buf is None:
            buf = self._backup[p] = torch.empty_like(p, memory_format=torch.preserve_format)
        return buf


# ------------------------------------------------------------------ stage 2
class CCSAMStage2:
    """CC-SAM, stage 2: retrain the classifier alone on adversarially perturbed features.

    ``L2 = alpha mean_n w_{y_n} l(f_n + rho w_{y_n} G_{y_n}[n] / ||G_{y_n}||)
    + (1 - alpha) mean_n l(f_n)`` with ``w_c = log(n_max / n_c + 0.01) / div``
    (see :func:`perturbed_feature_losses`); ``alpha`` comes from
    :func:`ccsam_mix_weight` per stage-2 epoch.

    It takes batches of features and labels, so it does not care how they were
    sampled: the published recipe uses class-balanced batches, and computes the
    features with the frozen backbone left in train mode (its BatchNorm
    statistics keep updating). Features are detached here, so only the
    classifier's parameters change; ``optimizer`` must hold nothing else
    (the public code builds a new SGD on the classifier: lr 0.01 on CIFAR,
    momentum 0.9, weight decay 2e-4).

    Each step runs the classifier forward twice and backward twice, whatever
    the number of classes.

    Example:
        >>> fc = torch.nn.Linear(6, 3)
        >>> stage2 = CCSAMStage2(fc, torch.optim.SGD(fc.parameters(), lr=0.01),
        ...                      class_counts=[50, 10, 3])
        >>> feats, y = torch.randn(9, 6), torch.tensor([0, 1, 2] * 3)
        >>> losses = stage2.step(feats, y, alpha=ccsam_mix_weight(0, 30))
    """

    def __init__(
        self,
        classifier: nn.Module,
        optimizer: Optimizer,
        class_counts: ClassCounts,
        *,
        rho: float = 1.0,
        div: float = 2.0,
        loss_fn: LossFn | None = None,
        max_grad_norm: float | None = None,
        check_finite: bool = True,
    ) -> None:
        _validate_rho(rho)
        _validate_max_grad_norm(max_grad_norm)
        self.class_counts = validate_class_counts(class_counts)
        self.num_classes = int(self.class_counts.numel())
        out_features = getattr(classifier, "out_features", None)
        if isinstance(out_features, int) and out_features != self.num_classes:
            raise ClassCountsError(
                f"class_counts has {self.num_classes} entries but the classifier has "
                f"{out_features} outputs"
            )
        owned = {p for p in classifier.parameters()}
        others = [
            tuple(p.shape) for g in optimizer.param_groups for p in g["params"] if p not in owned
        ]
        if others:
            raise InvalidHyperparameterError(
                "stage 2 trains the classifier only: the optimizer holds "
                f"{len(others)} parameters that are not the classifier's (shapes {others[:4]})"
            )
        self.classifier = classifier
        self.optimizer = optimizer
        self.rho = float(rho)
        self.div = float(div)
        self.class_weights = ccsam_feature_weights(self.class_counts, div, dtype=torch.float64)
        self.loss_fn: LossFn = loss_fn or _cross_entropy
        self.max_grad_norm = max_grad_norm
        self.check_finite = check_finite
        self._weights_cache: dict[tuple[str, torch.dtype], Tensor] = {}
        self.last_step_passes = PassCount(0, 0, 2, 2)

    def step(
        self,
        features: Tensor,
        targets: Tensor,
        *,
        alpha: float,
        scaler: torch.amp.GradScaler | None = None,
    ) -> Tensor:
        """One update of the classifier; returns the clean per-sample losses (detached)."""
        if not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
            raise InvalidHyperparameterError(f"alpha must lie in [0, 1], got {alpha!r}")
        if not isinstance(features, Tensor) or features.ndim < 2:
            raise LossShapeError(
                "features must be a tensor with one row per sample, got shape "
                f"{tuple(getattr(features, 'shape', ()))}"
            )
        if (
            not isinstance(targets, Tensor)
            or targets.ndim != 1
            or targets.is_floating_point()
            or targets.shape[0] != features.shape[0]
        ):
            raise LabelError(
                f"targets must be 1-D integer labels, one per feature row ({features.shape[0]}); "
                f"got {getattr(targets, 'dtype', type(targets).__name__)} of shape "
                f"{tuple(getattr(targets, 'shape', ()))}"
            )
        if not bool(((targets >= 0) & (targets < self.num_classes)).all()):
            raise LabelError(
                f"labels must lie in [0, {self.num_classes}); got values in "
                f"[{int(targets.min())}, {int(targets.max())}]"
            )
        if scaler is not None and not scaler.is_enabled():
            scaler = None
        key = (str(features.device), features.dtype)
        weights = self._weights_cache.get(key)
        if weights is None:
            weights = self._weights_cache[key] = self.class_weights.to(
                device=features.device, dtype=features.dtype
            )
        clean, perturbed = perturbed_feature_losses(
            self.classifier, features, targets, weights, self.rho, self.loss_fn
        )
        loss = alpha * perturbed.mean() + (1.0 - alpha) * clean.mean()
        if self.check_finite and not bool(torch.isfinite(loss.detach())):
            raise NonFiniteLossError("stage 2 returned a non-finite loss; no step was taken")
        self.optimizer.zero_grad(set_to_none=False)
        (loss if scaler is None else scaler.scale(loss)).backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if scaler is not None:
            if self.max_grad_norm is not None:
                scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)
            scaler.step(self.optimizer)
            scaler.update()
        else:
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)
            self.optimizer.step()
        return clean.detach()


# ------------------------------------------------------------------ helpers
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
