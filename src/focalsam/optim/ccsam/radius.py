"""CC-SAM's class-conditioned radius (the public code's formula), shared by its network
mode (:mod:`focalsam.optim.ccsam.network`) and classifier mode
(:mod:`focalsam.optim.ccsam.stage1`)."""

from __future__ import annotations

import math

from torch import Tensor

from focalsam.optim.errors import ClassCountsError

#: Why CC-SAM refuses ``strict_checks=False``, in both modes.
NO_SYNC_FREE = (
    "CC-SAM checks strictly: strict_checks=False is refused. Its passes follow the classes "
    "present in each batch, read on the host, and its class-conditioned radius takes each "
    "class's sample count in the batch; a sync-free step would have to run the perturbed "
    "passes of every class of the dataset whatever the batch holds (100 per step on "
    "CIFAR-100). Use strict_checks=None or True"
)
NO_ACCUMULATION = (
    "CC-SAM cannot accumulate micro-batches: in network mode an exact accumulated step "
    "holds one gradient buffer the size of the model per class present in the batch (up "
    "to 100 on CIFAR-100), and in classifier mode each eps_c comes from the whole batch's "
    "features, which no micro-batch holds; use step() on the whole batch"
)


def ccsam_radius(
    rho: Tensor | float,
    param_norm: Tensor | float,
    grad_norm: Tensor | float,
    class_count: float,
    num_params: int,
) -> Tensor | float:
    """CC-SAM's class-conditioned radius (public code), elementwise over tensors::

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


__all__ = ["NO_ACCUMULATION", "NO_SYNC_FREE", "ccsam_radius"]
