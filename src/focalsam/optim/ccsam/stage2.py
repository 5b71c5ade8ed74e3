"""CC-SAM (Zhou et al., CVPR 2023), stage 2: the classifier on perturbed features.

With the backbone frozen and class-balanced batches, retrain the classifier on
adversarially perturbed features. With ``w_c = log(n_max / n_c + 0.01) / div``
and ``G_c`` the gradient of the class's mean loss with respect to the features
of its samples::

    f~_n = f_n + rho2 * w_c * G_c[n] / ||G_c||           (for n in class c)
    L2   = alpha * mean_n w_{y_n} l(f~_n) + (1 - alpha) * mean_n l(f_n)
    alpha = min((e + 1) / E, up_limit)                      (stage-2 epoch e of E)

as the public code's ``train_sample``. It loops over classes, running the
classifier on the whole batch per class; since a classifier acts on each
sample alone, one backward gives every ``G_c`` and one forward all perturbed
logits here (2 classifier forwards and 2 backwards per step, same result).
Stage 1 and the published recipe: :mod:`focalsam.optim.ccsam.stage1`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from focalsam.optim.ascent import TINY
from focalsam.optim.buffers import DeviceCache
from focalsam.optim.errors import InvalidHyperparameterError, LabelError, LossShapeError
from focalsam.optim.policies.scaler import active_scaler, base_step
from focalsam.optim.validators import (
    ClassCounts,
    check_classifier_outputs,
    check_targets,
    checked_values,
    ensure_finite,
    validate_class_counts,
    validate_max_grad_norm,
    validate_rho,
)

LossFn = Callable[[Tensor, Tensor], Tensor]


def per_sample_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``l_n = -log softmax(z_n)_{y_n}``, one value per sample."""
    return F.cross_entropy(logits, targets, reduction="none")


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
    loss_fn = loss_fn or per_sample_cross_entropy
    feats = features.detach().requires_grad_(True)
    clean = loss_fn(classifier(feats), targets)
    (grad,) = torch.autograd.grad(clean.sum(), feats, retain_graph=True)
    w = class_weights.to(device=feats.device, dtype=grad.dtype)
    row_sq = grad.flatten(1).square().sum(1)
    class_norm = torch.zeros_like(w).index_add_(0, targets, row_sq).sqrt()
    scale = rho * w / (class_norm + TINY)
    noise = grad * scale[targets].view(-1, *([1] * (grad.ndim - 1)))
    perturbed = loss_fn(classifier(feats.detach() + noise), targets) * w[targets].to(clean.dtype)
    return clean, perturbed


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
        validate_rho(rho)
        validate_max_grad_norm(max_grad_norm)
        self.class_counts = validate_class_counts(class_counts)
        self.num_classes = check_classifier_outputs(classifier, self.class_counts)
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
        self.loss_fn: LossFn = loss_fn or per_sample_cross_entropy
        self.max_grad_norm = max_grad_norm
        self.check_finite = check_finite
        self._weights = DeviceCache(self.class_weights)

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
        if getattr(targets, "shape", (None,))[:1] != features.shape[:1]:
            raise LabelError(
                f"targets must be 1-D integer labels, one per feature row ({features.shape[0]}); "
                f"got shape {tuple(getattr(targets, 'shape', ()))}"
            )
        targets = check_targets(targets)
        checked_values(None, targets, self.num_classes, check_finite=False)
        scaler = active_scaler(scaler)
        clean, perturbed = perturbed_feature_losses(
            self.classifier,
            features,
            targets,
            self._weights.tensor(features),
            self.rho,
            self.loss_fn,
        )
        loss = alpha * perturbed.mean() + (1.0 - alpha) * clean.mean()
        if self.check_finite:
            ensure_finite(loss, "stage 2 returned a non-finite loss; no step was taken")
        self.optimizer.zero_grad(set_to_none=False)
        (loss if scaler is None else scaler.scale(loss)).backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        base_step(self.optimizer, params, scaler, self.max_grad_norm)
        return clean.detach()
