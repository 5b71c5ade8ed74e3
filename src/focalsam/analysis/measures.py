"""One measure of one target of one run, as a JSON-ready dict (for ``analyze``)."""

from __future__ import annotations

from typing import Any

import torch

from focalsam.analysis.density import spectral_density
from focalsam.analysis.hessian import hessian_trace, top_eigenvalues
from focalsam.analysis.landscape import (
    filter_normalized_direction,
    loss_landscape_1d,
    loss_landscape_2d,
)
from focalsam.analysis.sharpness import loss_and_grad_norm, sam_sharpness


def run_measure(measure: str, ctx: Any, batches: list[Any]) -> dict[str, Any]:
    """``basic`` (loss, gradient norm), ``hessian``, ``trace``, ``density``, ``sharpness``
    or ``landscape`` of ``ctx.model`` on ``batches``; ``ctx`` is the run's context."""
    s, model, loss, params = ctx.settings, ctx.model, ctx.loss_fn, ctx.params
    if measure == "basic":
        value, norm = loss_and_grad_norm(model, loss, batches, params=params)
        return {"loss": value, "grad_norm": norm}
    if measure == "hessian":
        return top_eigenvalues(
            model,
            loss,
            batches,
            s.top_k,
            params=params,
            max_iter=s.max_iter,
            tol=s.tol,
            seed=s.seed,
        ).as_dict()
    if measure == "trace":
        return hessian_trace(
            model, loss, batches, params=params, probes=s.trace_probes, tol=s.tol, seed=s.seed
        ).as_dict()
    if measure == "density":
        return spectral_density(
            model,
            loss,
            batches,
            params=params,
            lanczos_steps=s.lanczos_steps,
            probes=s.density_probes,
            seed=s.seed,
        ).as_dict()
    if measure == "sharpness":
        rhos = list(s.rhos)
        ascent, what = ctx.run_ascent()
        run = (
            sam_sharpness(model, loss, batches, rhos, params=params, ascent=ascent)
            if ascent is not None
            else None
        )
        return {
            "rho": rhos,
            "own": sam_sharpness(model, loss, batches, rhos, params=params),
            "run": run,
            "run_ascent": what,
        }
    if measure == "landscape":
        d1 = filter_normalized_direction(model, seed=s.seed, params=params)
        d2 = filter_normalized_direction(model, seed=s.seed + 1, params=params)
        alphas = torch.linspace(-s.span, s.span, s.grid).tolist()
        grid = loss_landscape_2d(model, loss, batches, d1, d2, alphas, alphas, params=params)
        line = torch.linspace(-s.span, s.span, 4 * s.grid - 3).tolist()  # finer, along d1
        return {
            "alphas_1d": line,
            "loss_1d": loss_landscape_1d(model, loss, batches, d1, line, params=params).tolist(),
            "alphas": alphas,
            "betas": alphas,
            "loss": grid.tolist(),  # loss[j][i]: alphas[i] along d1, betas[j] along d2
            "directions": f"filter-normalised Gaussian, seeds {s.seed} and {s.seed + 1}; "
            "biases and BatchNorm parameters not moved (Li et al. 2018)",
        }
    raise ValueError(f"unknown measure {measure!r}")
