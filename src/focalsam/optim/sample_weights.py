"""Each sample's weights in the two-weight rule: ``a_n = a[y_n]`` (clean) and
``b_n = b[y_n]`` (sharp), from per-class weights or one number for every class, and the
weighted mean ``(1/B) sum_n w_n l_n`` that every backward pass of a step takes."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from focalsam.optim.buffers import DeviceCache
from focalsam.optim.class_weights import Weights
from focalsam.optim.errors import InvalidHyperparameterError, LabelError
from focalsam.optim.policies.ddp import distributed
from focalsam.optim.validators import checked_values

Weight = float | Tensor


class SampleWeights:
    """The clean weights ``a`` and sharp weights ``b`` of a rule, checked once.

    ``num_classes`` is their length (``None`` when both are numbers); ``clean_is_zero``
    and ``sharp_is_zero``: the backward pass of that weight never runs;
    ``sharp_can_vanish``: some class has no sharp weight (ImbSAM's head).
    """

    def __init__(self, clean: Weights, sharp: Weights) -> None:
        self.clean = as_weights(clean, "clean_weights")
        self.sharp = as_weights(sharp, "sharp_weights")
        lengths = {w.numel() for w in (self.clean, self.sharp) if isinstance(w, Tensor)}
        if len(lengths) > 1:
            raise InvalidHyperparameterError(
                f"clean_weights and sharp_weights have different lengths {sorted(lengths)}"
            )
        self.num_classes: int | None = lengths.pop() if lengths else None
        self.clean_is_zero = is_zero(self.clean)
        self.sharp_is_zero = is_zero(self.sharp)
        self.sharp_can_vanish = isinstance(self.sharp, Tensor) and bool(self.sharp.eq(0).any())
        self._on_device = DeviceCache(self.clean, self.sharp)

    def per_sample(
        self, targets: Tensor | None, losses: Tensor, owner: str
    ) -> tuple[Weight, Weight]:
        """``(a_n, b_n)`` for each sample (numbers pass through); ``owner`` names the
        optimizer when labels are missing."""
        if self.num_classes is None:
            return self.clean, self.sharp
        if targets is None:
            raise LabelError(
                f"{owner} weights samples by class: pass the labels as targets (shape (B,))"
            )
        clean, sharp = self._on_device.on(losses)
        idx = targets.clamp(0, self.num_classes - 1)
        return (
            clean[idx] if isinstance(clean, Tensor) else clean,
            sharp[idx] if isinstance(sharp, Tensor) else sharp,
        )

    def passes_to_run(
        self, losses: Tensor, targets: Tensor | None, a: Weight, b: Weight, check_finite: bool
    ) -> tuple[bool, bool]:
        """Strict steps: check labels and losses on the host and decide which backward
        passes run, ``(a-pass, b-pass)``: those whose weights are not all zero (one sync)."""
        # Skipping on this batch's weights is data dependent: under DDP every
        # replica must take the same passes, so only skip what is zero for all.
        dynamic = not distributed()
        extra = [w.ne(0).any() for w in (a, b) if dynamic and isinstance(w, Tensor)]
        values = checked_values(losses, targets, self.num_classes, check_finite, extra)
        run_a, run_b = not self.clean_is_zero, not self.sharp_is_zero
        if dynamic and isinstance(a, Tensor):
            run_a = bool(values.pop(0))
        if dynamic and isinstance(b, Tensor):
            run_b = bool(values.pop(0))
        return run_a, run_b


def weighted_mean(losses: Tensor, weights: Weight, batch: int) -> Tensor:
    """``(1/B) sum_n w_n l_n``."""
    if isinstance(weights, Tensor):
        return torch.dot(losses, weights) / batch
    if weights == 1.0:
        return losses.sum() / batch
    return losses.sum() * weights / batch


def as_weights(weights: Weights, name: str) -> Weight:
    """A constant (float) or a 1-D float64 CPU tensor of per-class weights, checked finite."""
    if isinstance(weights, int | float):
        w = float(weights)
        if not math.isfinite(w):
            raise InvalidHyperparameterError(f"{name} must be finite, got {w}")
        return w
    t = torch.as_tensor(
        weights.detach().cpu() if isinstance(weights, Tensor) else weights, dtype=torch.float64
    )
    if t.ndim != 1 or t.numel() == 0:
        raise InvalidHyperparameterError(
            f"{name} must be a number or a non-empty 1-D per-class sequence, "
            f"got shape {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all():
        raise InvalidHyperparameterError(f"{name} must be finite, got {t.tolist()}")
    return t


def is_zero(w: Weight) -> bool:
    """Whether every weight is 0 (its backward pass can be skipped)."""
    return bool(w == 0) if isinstance(w, float) else not bool(w.ne(0).any())
