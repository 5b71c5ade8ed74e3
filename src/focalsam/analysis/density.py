"""Stochastic Lanczos quadrature (Ghorbani et al. 2019): the Hessian's spectral density.

PyHessian's ``density`` (Yao et al. 2020), written on Hessian-vector products only and
without PyHessian itself (whose density code calls the removed ``torch.eig``):
:func:`spectral_density` gives the quadrature nodes and weights per probe,
:func:`density_on_grid` smooths them on a grid. ``H``, ``params``, ``hvps`` and
``seconds`` as in :mod:`focalsam.analysis.hessian`.

>>> import torch
>>> import torch.nn.functional as F
>>> x = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
>>> batches = [(x, torch.zeros(2, 1, dtype=torch.float64))]
>>> model = torch.nn.Linear(2, 1, bias=False).double()    # H = diag(4, 1)
>>> res = spectral_density(model, F.mse_loss, batches, lanczos_steps=2)
>>> [round(v, 6) for v in res.nodes[0]], [round(w, 6) for w in res.weights[0]]
([1.0, 4.0], [0.5, 0.5])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from focalsam.analysis._closure import Batches, HVPMethod, LossFn
from focalsam.analysis.hessian import _Result, _Session

__all__ = ["DensityResult", "density_from_dict", "density_on_grid", "spectral_density"]


@dataclass
class DensityResult(_Result):
    """Stochastic Lanczos quadrature: per probe, the quadrature ``nodes`` (Ritz values)
    and ``weights`` (they sum to 1), after ``steps`` Lanczos steps (fewer than
    ``lanczos_steps`` only when the Krylov space is exhausted). The spectral density is
    approximated by ``mean over probes of sum_i weights[i] * delta(t - nodes[i])``;
    :meth:`on_grid` smooths it."""

    nodes: list[list[float]]
    weights: list[list[float]]
    steps: list[int]
    hvps: int
    seconds: float
    lanczos_steps: int
    probes: int
    seed: int
    hvp_method: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DensityResult:
        """The inverse of :meth:`as_dict` (e.g. after a JSON round trip)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def on_grid(
        self, grid: Tensor | None = None, sigma: float | None = None, num_points: int = 1000
    ) -> tuple[Tensor, Tensor]:
        """:func:`density_on_grid` of this result."""
        return density_on_grid(self, grid=grid, sigma=sigma, num_points=num_points)


def spectral_density(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Batches,
    *,
    params: Sequence[Tensor] | None = None,
    lanczos_steps: int = 80,
    probes: int = 1,
    seed: int = 0,
    hvp_method: HVPMethod = "double_backward",
) -> DensityResult:
    """Stochastic Lanczos quadrature (Ghorbani et al. 2019; PyHessian's ``density``).

    Per probe: ``m = lanczos_steps`` Lanczos steps on ``H`` from a normalised Rademacher
    vector ``v``, with full reorthogonalisation (twice, against all previous Lanczos
    vectors: ``m`` vectors of the parameters' size are kept), give the tridiagonal
    ``T = Q^T H Q``; with ``T = U diag(theta) U^T`` (``torch.linalg.eigh``),
    ``v^T f(H) v ~ sum_i U[0, i]^2 f(theta_i)``: nodes ``theta_i``, weights
    ``U[0, i]^2``. Stops early only when the Krylov space is exhausted (``beta`` below
    ``8 eps ||T||``, or ``m`` reaches the number of parameters), where the quadrature is
    exact.
    """
    if lanczos_steps < 1 or probes < 1:
        raise ValueError(f"lanczos_steps and probes must be >= 1, got {lanczos_steps}, {probes}")
    session = _Session(model, loss_fn, batches, params, seed, hvp_method)
    op = session.op
    m = min(lanczos_steps, op.numel)
    eps = torch.finfo(op.dtype).eps
    all_nodes, all_weights, steps = [], [], []
    with torch.no_grad():
        for _ in range(probes):
            q = torch.zeros(m, op.numel, dtype=op.dtype, device=op.device)
            v = session.random("rademacher")
            q[0] = v / v.norm()
            alphas: list[float] = []
            betas: list[float] = []
            scale = 0.0
            for j in range(m):
                w = op.matvec(q[j])
                alpha = float(q[j] @ w)
                alphas.append(alpha)
                if j == m - 1:
                    break
                basis = q[: j + 1]
                w = w - basis.T @ (basis @ w)
                w = w - basis.T @ (basis @ w)
                beta = float(w.norm())
                scale = max(scale, abs(alpha), beta)
                if beta <= 8 * eps * scale:
                    break
                betas.append(beta)
                q[j + 1] = w / beta
            n = len(alphas)
            t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
            if n > 1:
                off = torch.tensor(betas[: n - 1], dtype=torch.float64)
                t += torch.diag(off, 1) + torch.diag(off, -1)
            theta, u = torch.linalg.eigh(t)
            all_nodes.append(theta.tolist())
            all_weights.append((u[0] ** 2).tolist())
            steps.append(n)
    return DensityResult(
        nodes=all_nodes,
        weights=all_weights,
        steps=steps,
        lanczos_steps=lanczos_steps,
        probes=probes,
        **session.fields(),
    )


def density_on_grid(
    result: DensityResult,
    grid: Tensor | None = None,
    sigma: float | None = None,
    num_points: int = 1000,
) -> tuple[Tensor, Tensor]:
    """The SLQ density smoothed with a Gaussian of standard deviation ``sigma``:
    ``rho(t) = mean_probes sum_i w_i N(t; theta_i, sigma^2)``, normalised to integrate
    to 1 over ``grid`` (trapezoid rule). Returns ``(grid, density)``, float64 on the CPU.

    Defaults: ``sigma = 0.005 * R``, with ``R`` the range of all nodes (``|node|``, or 1,
    when they coincide), and ``grid`` = ``num_points`` points from ``min - 6 sigma`` to
    ``max + 6 sigma`` (so sigma is about 5 grid steps). PyHessian uses a variance of
    ``1e-5 * max(1, R)`` on 10,000 bins, which is finer than the grid when ``R`` is
    large and coarse relative to tiny spectra; a fixed fraction of ``R`` is resolved
    at any scale.
    """
    flat = [x for probe in result.nodes for x in probe]
    if not flat:
        raise ValueError("the result has no nodes")
    lo, hi = min(flat), max(flat)
    if sigma is None:
        span = hi - lo if hi > lo else (abs(hi) or 1.0)
        sigma = 0.005 * span
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if grid is None:
        if num_points < 2:
            raise ValueError(f"num_points must be >= 2, got {num_points}")
        grid = torch.linspace(lo - 6 * sigma, hi + 6 * sigma, num_points, dtype=torch.float64)
    else:
        grid = grid.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    density = torch.zeros_like(grid)
    for nodes, weights in zip(result.nodes, result.weights):
        theta = torch.tensor(nodes, dtype=torch.float64)
        w = torch.tensor(weights, dtype=torch.float64)
        gauss = torch.exp(-0.5 * ((grid[:, None] - theta[None, :]) / sigma) ** 2)
        density += (gauss * w).sum(1) / (sigma * math.sqrt(2 * math.pi))
    density /= len(result.nodes)
    mass = float(torch.trapezoid(density, grid))
    if not mass > 0:
        raise ValueError("the density has no mass on the grid")
    return grid, density / mass


def density_from_dict(
    data: dict[str, Any],
    grid: Tensor | None = None,
    sigma: float | None = None,
    num_points: int = 1000,
) -> tuple[Tensor, Tensor]:
    """:func:`density_on_grid` of a :class:`DensityResult` saved with ``as_dict()``."""
    return density_on_grid(DensityResult.from_dict(data), grid, sigma, num_points)
