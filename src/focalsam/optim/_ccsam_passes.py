"""The passes of one CC-SAM stage-1 step, per mode (the math and where it differs from
the paper and the public code: :mod:`focalsam.optim.cc_sam`).

For each class ``c`` present: ``g_c = grad mean_{n: y_n = c} l_n(theta)``, a
perturbation ``eps_c`` from it, and the gradient of
``L = (1 - f) / B * sum_n l_n(theta) + f / B * sum_c sum_{n: y_n = c} l_n(theta + eps_c)``
accumulated in ``.grad`` for the base step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from focalsam.optim._step import (
    TINY,
    BackwardFn,
    BufferPool,
    check_losses,
    check_targets,
    checked_values,
    default_backward,
    ensure_finite,
    losses_of,
    zero_grads,
)
from focalsam.optim.cc_sam_stage2 import LossFn
from focalsam.optim.engine import BatchNormUpdate
from focalsam.optim.errors import InvalidHyperparameterError, LossShapeError, NonFiniteLossError
from focalsam.optim.wrapper import WrappedOptimizer


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


class CCSAMPasses(WrappedOptimizer):
    """Base of :class:`~focalsam.optim.cc_sam.CCSAM`: its two modes' passes; the
    subclass sets the attributes below and gives each class's perturbation."""

    classifier: nn.Module | None
    mode: str
    num_classes: int
    flat_ratio: float
    loss_fn: LossFn
    bn_update: BatchNormUpdate
    check_finite: bool
    last_radii: dict[int, Tensor]
    _cls_names: list[str]
    _cls_params: list[Tensor]
    _backup: BufferPool
    #: ``(grads, inv_scale, param_norm, num_params, rhos, cls) -> eps``, in place on ``grads``
    _perturbation: Callable[[list[Tensor], float, Tensor, int, Tensor, int], list[Tensor]]
    #: ``(params, like) -> rho`` per tensor, on ``like``'s device
    _rhos: Callable[[list[Tensor], Tensor], Tensor]

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
        if self.mode == "classifier":
            self._classifier_passes(batch, self._features(captured, batch.size), backward_fn)
        else:
            self._network_passes(batch, closure, backward_fn)
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
        params = self._trainable()
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

    # ---------------------------------------------------------- network mode
    def _network_passes(
        self, batch: _Batch, closure: Callable[[], Any], backward_fn: BackwardFn
    ) -> None:
        """Per class present: ``g_c``, the closure at ``theta + eps_c`` and its backward;
        then the clean backward."""
        losses, params, scale, size = batch.losses, batch.params, batch.scale, batch.size
        if batch.classes:
            num = sum(p.numel() for p in params)
            param_norm = _global_norm(params) + TINY
            rhos = self._rhos(params, param_norm)
            data = [p.data for p in params]
            backup = self._backup(params)
            torch._foreach_copy_(backup, data)
            head_total = losses.new_zeros(())
            try:
                for c, idx in batch.by_class():
                    g = torch.autograd.grad(
                        losses.index_select(0, idx).sum() * (scale / idx.numel()),
                        params,
                        retain_graph=True,
                        allow_unused=True,
                    )
                    grads = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g)]
                    eps = self._perturbation(grads, 1.0 / scale, param_norm, num, rhos, c)
                    # Through .data: the clean graph keeps its saved tensors' versions,
                    # and every backward through it runs with theta restored.
                    with torch.no_grad():
                        torch._foreach_add_(data, eps)
                    if self.bn_update == "clean":
                        self._freeze_bn()
                    try:
                        perturbed = losses_of(closure())
                        check_losses(perturbed, expected=size)
                        head = perturbed.index_select(0, idx)
                        backward_fn(head.sum() * (self.flat_ratio * scale / size))
                        head_total = head_total + head.detach().sum()
                    finally:
                        with torch.no_grad():
                            torch._foreach_copy_(data, backup)
                        self._unfreeze_bn()
            except BaseException:
                zero_grads(params)
                raise
            # With a scaler, an overflowing g_c makes eps_c non-finite: the scaler skips.
            if self.check_finite and not batch.scaled:
                self._ensure_finite(
                    head_total,
                    params,
                    "the forward pass at theta + eps_c returned non-finite losses; "
                    "the parameters were restored and no step was taken",
                )
        if self.flat_ratio < 1:
            backward_fn(losses.sum() * ((1.0 - self.flat_ratio) * scale / size))

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
