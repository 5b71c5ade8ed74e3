"""Per-class curvature and sharpness: Hessian spectra, SAM sharpness, loss landscapes.

Every measure takes a model (the caller sets ``eval()``), a loss ``loss_fn(logits, y)``
returning the batch mean, and a list of ``(x, y)`` batches, so it works outside the
trainer; ``focalsam analyze`` (:func:`~focalsam.analysis.run.analyze`) runs them on
trained runs, per class or shot group, side by side.
"""

from focalsam.analysis._closure import dataset_gradient, dataset_loss, hvp
from focalsam.analysis.density import density_on_grid, spectral_density
from focalsam.analysis.hessian import hessian_trace, top_eigenvalues
from focalsam.analysis.landscape import (
    filter_normalized_direction,
    loss_landscape_1d,
    loss_landscape_2d,
)
from focalsam.analysis.sharpness import loss_and_grad_norm, sam_sharpness, weighted_ascent

__all__ = [
    "dataset_gradient",
    "dataset_loss",
    "density_on_grid",
    "filter_normalized_direction",
    "hessian_trace",
    "hvp",
    "loss_and_grad_norm",
    "loss_landscape_1d",
    "loss_landscape_2d",
    "sam_sharpness",
    "spectral_density",
    "top_eigenvalues",
    "weighted_ascent",
]
