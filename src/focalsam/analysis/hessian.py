"""The Hessian of a dataset loss: top eigenvalues and trace.

The protocol of PyHessian (Yao et al. 2020), as used for the per-class
sharpness analysis of long-tailed classifiers by Rangwani et al. (2022), written
on Hessian-vector products only (``H`` is never formed) and without PyHessian
itself (whose density code calls the removed ``torch.eig``):

- :func:`top_eigenvalues`: power iteration with deflation;
- :func:`hessian_trace`: Hutchinson's estimator with Rademacher probes;
- its spectral density: :mod:`focalsam.analysis.density` (stochastic Lanczos quadrature).

``H`` is the Hessian of ``L(theta) = sum_b loss_fn(model(x_b), y_b) * n_b / N``
with respect to ``params`` (default: the model's trainable parameters); see
:mod:`focalsam.analysis._closure`. Put the model in eval mode first. For a
per-class measure pass the batches of that class only. Every result is a
dataclass with ``hvps`` (Hessian-vector products used), ``seconds``, its
settings, and ``as_dict()`` (JSON-ready).

>>> import torch
>>> import torch.nn.functional as F
>>> x = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
>>> batches = [(x, torch.zeros(2, 1, dtype=torch.float64))]
>>> model = torch.nn.Linear(2, 1, bias=False).double()    # H = 2 x^T x / 2 = diag(4, 1)
>>> [round(v, 6) for v in top_eigenvalues(model, F.mse_loss, batches, k=2, tol=1e-12).values]
[4.0, 1.0]
>>> round(hessian_trace(model, F.mse_loss, batches).mean, 6)
5.0
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from focalsam.analysis._closure import Batches, HVPCounter, HVPMethod, LossFn

__all__ = ["EigenResult", "TraceResult", "hessian_trace", "top_eigenvalues"]


class _Result:
    """A measure's result (a dataclass): ``as_dict()`` gives its fields but ``_skip``."""

    _skip: ClassVar[tuple[str, ...]] = ()

    def as_dict(self) -> dict[str, Any]:
        obj: Any = self
        return {
            f.name: getattr(obj, f.name)
            for f in dataclasses.fields(obj)
            if f.name not in self._skip
        }


@dataclass
class EigenResult(_Result):
    """Top-``k`` Hessian eigenvalues, largest first.

    ``iterations[i]`` HVPs were spent on eigenvalue ``i``; ``converged[i]`` says whether
    the Rayleigh quotient's relative change fell below ``tol`` before ``max_iter``;
    ``shifted[i]`` that the dominant eigenvalue left was negative and a shifted second run
    found the largest algebraic one. ``vectors[i]`` is the unit eigenvector, shaped like
    the parameters (kept off ``as_dict``, ``repr`` and ``==``).
    """

    values: list[float]
    iterations: list[int]
    converged: list[bool]
    shifted: list[bool]
    hvps: int
    seconds: float
    k: int
    tol: float
    max_iter: int
    seed: int
    hvp_method: str
    vectors: list[list[Tensor]] = field(default_factory=list, repr=False, compare=False)
    _skip: ClassVar[tuple[str, ...]] = ("vectors",)


@dataclass
class TraceResult(_Result):
    """Hutchinson's estimate of ``tr(H)``: ``mean`` of the per-probe estimates
    ``estimates`` (``v^T H v``, Rademacher ``v``), ``stderr`` = their sample standard
    deviation / sqrt(``probes``); ``probes`` used of at most ``max_probes``."""

    mean: float
    stderr: float
    probes: int
    estimates: list[float]
    hvps: int
    seconds: float
    max_probes: int
    tol: float
    seed: int
    hvp_method: str


# ----------------------------------------------------------------------------- helpers


class _Session:
    """What every Hessian measure starts from: the clock, the counted HVP operator ``op``
    and a ``torch.Generator`` ``gen`` seeded with ``seed``."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Batches,
        params: Sequence[Tensor] | None,
        seed: int,
        hvp_method: HVPMethod,
    ) -> None:
        self.start = time.perf_counter()
        self.op = HVPCounter(model, loss_fn, batches, params, method=hvp_method)
        self.gen = torch.Generator().manual_seed(seed)
        self.seed = seed

    def random(self, kind: str) -> Tensor:
        """A ``"rademacher"`` (else Gaussian) vector of ``op.numel`` entries, drawn on the
        CPU in float64 (the same numbers on any device and dtype), in ``op``'s dtype and
        device."""
        op = self.op
        if kind == "rademacher":
            v = torch.randint(0, 2, (op.numel,), generator=self.gen, dtype=torch.float64) * 2 - 1
        else:
            v = torch.randn(op.numel, generator=self.gen, dtype=torch.float64)
        return v.to(device=op.device, dtype=op.dtype)

    def fields(self) -> dict[str, Any]:
        """The fields every result has: ``hvps``, ``seconds`` (so far), ``seed``,
        ``hvp_method``."""
        return {
            "hvps": self.op.count,
            "seconds": time.perf_counter() - self.start,
            "seed": self.seed,
            "hvp_method": self.op.method,
        }


def _orthogonalize(v: Tensor, basis: list[Tensor]) -> Tensor:
    for u in basis:
        v = v - (u @ v) * u
    return v


def _power_iteration(
    session: _Session, found: list[Tensor], shift: float, tol: float, max_iter: int
) -> tuple[float, Tensor, int, bool]:
    """The dominant eigenvalue of ``H - shift I`` on the complement of ``found``."""
    op = session.op
    v = _orthogonalize(session.random("gaussian"), found)
    v = v / v.norm()
    value = math.nan
    for it in range(1, max_iter + 1):
        hv = op.matvec(v)
        if shift:
            hv = hv - shift * v
        new = float(v @ hv)
        hv = _orthogonalize(hv, found)
        if it > 1 and (new == value or abs(new - value) < tol * abs(new)):
            return new, v, it, True
        value = new
        norm = hv.norm()
        if norm == 0:  # v spans an invariant subspace: exact
            return new, v, it, True
        v = hv / norm
    return value, v, max_iter, False


# ----------------------------------------------------------------------------- measures


def top_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Batches,
    k: int = 1,
    *,
    params: Sequence[Tensor] | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    hvp_method: HVPMethod = "double_backward",
) -> EigenResult:
    """The ``k`` largest (algebraic) eigenvalues of ``H``, by power iteration with
    deflation, as PyHessian's ``eigenvalues``.

    Eigenvalue ``i``: from a Gaussian start (``torch.Generator`` seeded with ``seed``),
    iterate ``v <- P H v / ||P H v||`` with ``P`` the projection off the eigenvectors
    already found, until the Rayleigh quotient ``v^T H v`` changes by less than
    ``tol`` relative, or ``max_iter`` HVPs. Power iteration finds the eigenvalue of
    largest magnitude; when that one is negative (PyHessian would report it), a second
    run on ``H - lambda I`` (all its eigenvalues >= 0 there) finds the largest
    algebraic one, ``mu + lambda`` (its convergence is judged on ``mu``).
    """
    if k < 1 or max_iter < 1:
        raise ValueError(f"k and max_iter must be >= 1, got k={k}, max_iter={max_iter}")
    session = _Session(model, loss_fn, batches, params, seed, hvp_method)
    op = session.op
    if k > op.numel:
        raise ValueError(f"k={k} exceeds the number of parameters ({op.numel})")
    found: list[Tensor] = []
    values, iterations, converged, shifted = [], [], [], []
    with torch.no_grad():
        for _ in range(k):
            value, vec, its, conv = _power_iteration(session, found, 0.0, tol, max_iter)
            neg = value < 0
            if neg:
                mu, vec, its2, conv = _power_iteration(session, found, value, tol, max_iter)
                value, its = mu + value, its + its2
            found.append(vec)
            values.append(value)
            iterations.append(its)
            converged.append(conv)
            shifted.append(neg)
    return EigenResult(
        values=values,
        iterations=iterations,
        converged=converged,
        shifted=shifted,
        k=k,
        tol=tol,
        max_iter=max_iter,
        **session.fields(),
        vectors=[[t.detach().clone() for t in op.split(v)] for v in found],
    )


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Batches,
    *,
    params: Sequence[Tensor] | None = None,
    probes: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    hvp_method: HVPMethod = "double_backward",
) -> TraceResult:
    """Hutchinson's estimate ``tr(H) ~ mean_i v_i^T H v_i`` with Rademacher ``v_i``
    (entries +-1, ``E[v v^T] = I``).

    Stops after ``probes`` probes, or earlier, once at least 10 are done, when
    ``stderr < tol * |mean|`` (``stderr`` = sample std of the estimates / sqrt(n)).
    """
    if probes < 2:
        raise ValueError(f"probes must be >= 2 (for a standard error), got {probes}")
    session = _Session(model, loss_fn, batches, params, seed, hvp_method)
    op = session.op
    estimates: list[float] = []
    mean = stderr = math.nan
    with torch.no_grad():
        for _ in range(probes):
            v = session.random("rademacher")
            estimates.append(float(v @ op.matvec(v)))
            if len(estimates) >= 2:
                est = torch.tensor(estimates, dtype=torch.float64)
                mean = float(est.mean())
                stderr = float(est.std() / math.sqrt(len(estimates)))
                if len(estimates) >= 10 and (stderr == 0 or stderr < tol * abs(mean)):
                    break
    return TraceResult(
        mean=mean,
        stderr=stderr,
        probes=len(estimates),
        estimates=estimates,
        max_probes=probes,
        tol=tol,
        **session.fields(),
    )
