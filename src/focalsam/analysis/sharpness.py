"""Per-class sharpness in the sense of SAM and Focal-SAM.

Focal-SAM (ICML 2025) penalises the class-wise sharpness
``S_i(theta) = L^i(theta + eps) - L^i(theta)`` with one shared
``eps = rho * g_b / ||g_b||``, ``g_b`` the gradient of the loss weighted per sample by
``c(y) = lam * (1 - pi_y) ** gamma`` (docs/design.md, "Focal-SAM"). These functions measure such
quantities on any model, loss and data:

* :func:`sam_sharpness` -- ``L(theta + rho * a / ||a||) - L(theta)`` for each ``rho``,
  ``a`` the gradient of the same batches' loss (a class's own worst-case direction, to
  first order) or any given direction (e.g. the run's own perturbation);
* :func:`weighted_ascent` -- the gradient of the label-weighted mean loss over a whole
  dataset; with :func:`focalsam.optim.class_weights.focal_weights` it is Focal-SAM's
  ascent direction ``g_b`` over the training set;
* :func:`loss_and_grad_norm` -- the cheap companions ``L(theta)`` and ``||grad L||``.

``batches`` is a sequence of ``(x, y)`` on the model's device. Every function runs in the
mode the caller set (``model.eval()`` to use the trained BatchNorm statistics) and leaves
the model exactly as it was -- parameters bitwise, buffers too -- even on an exception.
Results are plain Python floats, or lists of detached tensors for directions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from focalsam.analysis._closure import Batches, LossFn, dataset_gradient, trainable_params
from focalsam.analysis.landscape import _aligned, _floats, _loss, _preserved
from focalsam.errors import InputError

__all__ = ["loss_and_grad_norm", "sam_sharpness", "weighted_ascent"]

#: ``per_sample_loss_fn(logits, y)``: one loss per sample (``reduction="none"``).
PerSampleLossFn = Callable[[Tensor, Tensor], Tensor]


def sam_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Batches,
    rhos: Sequence[float] | Tensor | float,
    *,
    params: Sequence[Tensor] | None = None,
    ascent: Sequence[Tensor] | None = None,
) -> list[float]:
    """``L(theta + rho * a / ||a||) - L(theta)`` for each ``rho`` in ``rhos``.

    ``L`` is the mean of ``loss_fn(logits, y)`` over all samples of ``batches`` (pass one
    class's samples for that class's sharpness). ``a`` is ``ascent`` when given (aligned
    with ``params``, default the model's trainable parameters), else the gradient of
    ``L`` itself at ``theta``. ``||a||`` is the norm over all parameters together, as in
    SAM. ``rho = 0`` gives exactly ``0.0``. Raises :class:`~focalsam.errors.InputError`
    when ``a`` is zero or not finite (no direction to move along).

    Losses are evaluated under ``torch.no_grad()`` in the caller's mode; the model is
    restored exactly afterwards.
    """
    ps = trainable_params(model, params)
    radii = _floats(rhos, "rhos")
    with _preserved(model, ps) as theta:
        if ascent is None:
            with torch.enable_grad():
                _, grad = dataset_gradient(model, loss_fn, batches, ps)
            a = _aligned(grad, ps, "gradient")
        else:
            a = _aligned(ascent, ps, "ascent")
        norm = _global_norm(a)
        if not (math.isfinite(norm) and norm > 0):
            what = "ascent direction" if ascent is not None else "gradient of the loss"
            raise InputError(f"the {what} has norm {norm}: no direction to perturb along")
        base = _loss(model, loss_fn, batches)
        out: list[float] = []
        with torch.no_grad():
            for rho in radii:
                if rho == 0:
                    out.append(0.0)
                    continue
                scale = rho / norm
                for p, t, ai in zip(ps, theta, a):
                    p.copy_(t + scale * ai)
                out.append(_loss(model, loss_fn, batches) - base)
    return out


def weighted_ascent(
    model: nn.Module,
    per_sample_loss_fn: PerSampleLossFn,
    batches: Batches,
    sample_weight_of_label: Tensor | Sequence[float],
    *,
    params: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """The gradient of ``(1/N) * sum_n b(y_n) * l_n`` over all samples of ``batches``.

    ``b = sample_weight_of_label`` holds one weight per class (indexed by the label),
    ``l_n = per_sample_loss_fn(logits, y)[n]`` (``reduction="none"``), ``N`` the total
    number of samples. Accumulated batch by batch (one backward each), so memory stays
    that of one batch. With ``b = focal_weights(class_counts, gamma, lam)`` this is
    Focal-SAM's ascent direction ``g_b`` over the whole training set (up to the positive
    factor ``B/N``, which the normalisation ``eps = rho * g_b / ||g_b||`` removes); with
    ``b = 1`` it is the plain dataset gradient.

    Returns detached tensors aligned with ``params`` (default: the model's trainable
    parameters; a parameter the loss does not reach gets zeros). ``.grad`` is not
    touched; the model is left as it was.
    """
    ps = trainable_params(model, params)
    w = torch.as_tensor(
        sample_weight_of_label.detach()
        if isinstance(sample_weight_of_label, Tensor)
        else sample_weight_of_label
    )
    if w.ndim != 1 or w.numel() == 0 or w.is_complex():
        raise InputError(
            "sample_weight_of_label must be a non-empty 1-D real tensor, one weight per "
            f"class; got shape {tuple(w.shape)}, dtype {w.dtype}"
        )
    if not w.is_floating_point():
        w = w.to(torch.float64)
    n = sum(int(y.numel()) for _, y in batches)
    if n == 0:
        raise InputError("batches hold no samples")
    total = [torch.zeros_like(p, memory_format=torch.preserve_format).detach() for p in ps]
    with _preserved(model, ps), torch.enable_grad():
        for x, y in batches:
            if y.numel() == 0:
                continue
            _check_labels(y, w.numel())
            losses = per_sample_loss_fn(model(x), y)
            if losses.shape != y.shape:
                raise InputError(
                    f"per_sample_loss_fn must return one loss per sample, shape "
                    f"{tuple(y.shape)}; got {tuple(losses.shape)}"
                )
            b = w.to(device=losses.device, dtype=losses.dtype)[y.to(losses.device)]
            grads = torch.autograd.grad((b * losses).sum() / n, ps, allow_unused=True)
            for acc, g in zip(total, grads):
                if g is not None:
                    acc.add_(g)
    return total


def loss_and_grad_norm(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Batches,
    *,
    params: Sequence[Tensor] | None = None,
) -> tuple[float, float]:
    """``(L(theta), ||grad L(theta)||)``: the mean loss over ``batches`` and the norm of its
    gradient over all ``params`` together (default: the model's trainable parameters).
    The model is left as it was."""
    ps = trainable_params(model, params)
    with _preserved(model, ps), torch.enable_grad():
        loss, grad = dataset_gradient(model, loss_fn, batches, ps)
    return float(loss), _global_norm(grad)


def _global_norm(tensors: Iterable[Tensor]) -> float:
    """The Euclidean norm of all ``tensors`` together, accumulated in float64."""
    sq = 0.0
    for t in tensors:
        sq += float(t.detach().to(torch.float64).pow(2).sum())
    return math.sqrt(sq)


def _check_labels(y: Tensor, num_classes: int) -> None:
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InputError(f"labels must be an integer tensor, got dtype {y.dtype}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise InputError(
            f"labels must lie in [0, {num_classes}) (one weight per class), "
            f"got labels from {lo} to {hi}"
        )
