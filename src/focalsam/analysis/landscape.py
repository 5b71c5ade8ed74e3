"""Loss landscapes along filter-normalised random directions (Li et al., NeurIPS 2018).

The Focal-SAM paper (ICML 2025) plots, per optimizer, the loss landscape of a head
class and of a tail class: the model's loss on that class's samples at
``theta + alpha * d1 (+ beta * d2)`` for random directions ``d1, d2``. These functions
work on any ``nn.Module``, loss and data, outside the trainer.

Conventions shared by every function here:

* ``batches`` is a sequence of ``(x, y)`` already on the model's device; the loss is the
  mean over all their samples (:func:`focalsam.analysis._closure.dataset_loss`).
* BatchNorm is handled as Li et al. do: the caller puts the model in ``eval()`` mode, so
  the trained running statistics are used. The mode is never changed here.
* The model is left exactly as it was, even on an exception: parameters are copied back
  bitwise and buffers (BatchNorm running statistics, should the caller have left the
  model in training mode) are restored too.
* "Shared directions across runs" means the same ``seed``: two models of the same
  architecture get the same random draw, rescaled to each model's own filter norms.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from focalsam.analysis._closure import Batches, LossFn, dataset_loss, trainable_params
from focalsam.errors import InputError

__all__ = [
    "filter_normalized_direction",
    "loss_landscape_1d",
    "loss_landscape_2d",
]

#: Added to a filter's norm before dividing by it, as in Li et al.'s code.
_NORM_EPS = 1e-10


def filter_normalized_direction(
    model: nn.Module,
    *,
    seed: int = 0,
    params: Sequence[Tensor] | None = None,
    ignore_bn_and_bias: bool = True,
) -> list[Tensor]:
    """A random Gaussian direction, one tensor per parameter, filter-normalised.

    Each entry is drawn from ``N(0, 1)`` by a CPU ``torch.Generator`` seeded with ``seed``
    (in float64, one parameter after another, in the order of ``params``), so the draw is
    the same on every device and dtype, and then cast to the parameter's device and dtype.
    A draw is taken for *every* parameter, even one whose direction ends up zero, so
    ``ignore_bn_and_bias`` does not shift the draws of the others.

    Normalisation (Li et al. 2018):

    * a weight with ``ndim >= 2`` (linear, conv): each filter ``d[i]`` (slice along dim 0)
      is rescaled to the norm of the parameter's filter ``p[i]``:
      ``d[i] * ||p[i]|| / (||d[i]|| + 1e-10)``;
    * a parameter with ``ndim <= 1`` (biases, BatchNorm weights and biases): zero when
      ``ignore_bn_and_bias`` (the paper's choice), else rescaled as a whole to the
      parameter's norm. (Li et al.'s code copies the parameter itself in that case;
      here it stays random, like the other entries.)

    ``params`` (default: the model's trainable parameters) selects and orders the
    parameters; the result is aligned with it.

    >>> model = nn.Linear(3, 2)
    >>> d = filter_normalized_direction(model, seed=0)
    >>> [tuple(t.shape) for t in d]
    [(2, 3), (2,)]
    >>> torch.allclose(d[0].norm(dim=1), model.weight.detach().norm(dim=1)), bool(d[1].eq(0).all())
    (True, True)
    """
    ps = trainable_params(model, params)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    out: list[Tensor] = []
    for p in ps:
        w = p.detach().to(device="cpu", dtype=torch.float64)
        d = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        if p.ndim >= 2:
            w_norm = w.reshape(w.shape[0], -1).norm(dim=1)
            d_norm = d.reshape(d.shape[0], -1).norm(dim=1)
            scale = w_norm / (d_norm + _NORM_EPS)
            d = d * scale.reshape((-1,) + (1,) * (d.ndim - 1))
        elif ignore_bn_and_bias:
            d = torch.zeros_like(d)
        else:
            d = d * (w.norm() / (d.norm() + _NORM_EPS))
        out.append(d.to(device=p.device, dtype=p.dtype))
    return out


def loss_landscape_1d(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Batches,
    direction: Sequence[Tensor],
    alphas: Sequence[float] | Tensor,
    *,
    params: Sequence[Tensor] | None = None,
) -> Tensor:
    """The loss at ``theta + a * direction`` for each ``a`` in ``alphas``.

    Returns a 1-D float64 CPU tensor, ``out[i] = L(theta + alphas[i] * direction)``, where
    ``L`` is the mean of ``loss_fn(logits, y)`` over all samples of ``batches``. At
    ``a = 0`` the parameters are ``theta`` exactly, so that entry equals
    ``dataset_loss(model, loss_fn, batches)``.

    ``direction`` is aligned with ``params`` (default: the model's trainable parameters),
    e.g. from :func:`filter_normalized_direction`. Evaluated under ``torch.no_grad()`` in
    the mode the caller set: call ``model.eval()`` first to use the trained BatchNorm
    statistics, as Li et al. do. The model is restored exactly afterwards, even on an
    exception.
    """
    ps = trainable_params(model, params)
    d = _aligned(direction, ps, "direction")
    coords = _floats(alphas, "alphas")
    out = torch.empty(len(coords), dtype=torch.float64)
    with _preserved(model, ps) as theta, torch.no_grad():
        for i, a in enumerate(coords):
            for p, t, di in zip(ps, theta, d):
                p.copy_(t if a == 0 else t + a * di)
            out[i] = _loss(model, loss_fn, batches)
    return out


def loss_landscape_2d(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Batches,
    d1: Sequence[Tensor],
    d2: Sequence[Tensor],
    alphas: Sequence[float] | Tensor,
    betas: Sequence[float] | Tensor,
    *,
    params: Sequence[Tensor] | None = None,
) -> Tensor:
    """The loss on the plane ``theta + alpha * d1 + beta * d2``.

    Returns a float64 CPU tensor of shape ``(len(betas), len(alphas))``:
    ``out[j, i] = L(theta + alphas[i] * d1 + betas[j] * d2)`` -- rows follow ``betas``
    (the y axis), columns ``alphas`` (the x axis), the layout of
    ``matplotlib.pyplot.contour(alphas, betas, out)``. At ``(0, 0)`` the parameters are
    ``theta`` exactly, so that entry equals ``dataset_loss(model, loss_fn, batches)``.

    Same conventions as :func:`loss_landscape_1d`: ``torch.no_grad()``, the caller's
    mode (``eval()`` for Li et al.'s BatchNorm handling), model restored exactly.
    """
    ps = trainable_params(model, params)
    u = _aligned(d1, ps, "d1")
    v = _aligned(d2, ps, "d2")
    xs = _floats(alphas, "alphas")
    ys = _floats(betas, "betas")
    out = torch.empty(len(ys), len(xs), dtype=torch.float64)
    with _preserved(model, ps) as theta, torch.no_grad():
        for j, b in enumerate(ys):
            for i, a in enumerate(xs):
                for p, t, ui, vi in zip(ps, theta, u, v):
                    if a == 0 and b == 0:
                        p.copy_(t)
                    else:
                        p.copy_(t + a * ui + b * vi)
                out[j, i] = _loss(model, loss_fn, batches)
    return out


# --- helpers shared with focalsam.analysis.sharpness -------------------------------------


@contextmanager
def _preserved(model: nn.Module, params: Sequence[Tensor]) -> Iterator[list[Tensor]]:
    """Snapshot ``params`` and the model's buffers; yield the parameter copies (detached,
    to perturb from) and copy everything back bitwise on exit, exception or not."""
    theta = [p.detach().clone() for p in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield theta
    finally:
        with torch.no_grad():
            for p, t in zip(params, theta):
                p.copy_(t)
            for b, saved in buffers:
                b.copy_(saved)


def _aligned(direction: Sequence[Tensor], params: Sequence[Tensor], name: str) -> list[Tensor]:
    """``direction`` checked against ``params`` (count and shapes), on their device/dtype."""
    direction = list(direction)
    if len(direction) != len(params):
        raise InputError(
            f"{name} has {len(direction)} tensors but there are {len(params)} parameters"
        )
    out = []
    for k, (d, p) in enumerate(zip(direction, params)):
        if not isinstance(d, Tensor) or d.shape != p.shape:
            shape = tuple(d.shape) if isinstance(d, Tensor) else type(d).__name__
            raise InputError(
                f"{name}[{k}] has shape {shape}, its parameter has shape {tuple(p.shape)}"
            )
        out.append(d.detach().to(device=p.device, dtype=p.dtype))
    return out


def _floats(values: Sequence[float] | Tensor | float, name: str) -> list[float]:
    """Coordinates or radii as finite Python floats (a single number is a list of one)."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    elif isinstance(values, int | float):
        values = [values]
    out = [float(v) for v in values]
    if not out:
        raise InputError(f"{name} is empty")
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise InputError(f"{name} must be finite, got {bad}")
    return out


def _loss(model: nn.Module, loss_fn: LossFn, batches: Batches) -> float:
    """The mean loss over ``batches`` as a Python float, without a graph."""
    with torch.no_grad():
        return float(dataset_loss(model, loss_fn, batches))
