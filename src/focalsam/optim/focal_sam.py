"""Focal-SAM (Li et al., ICML 2025): focal-weighted class-wise sharpness."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from focalsam.optim.class_weights import focal_weights
from focalsam.optim.engine import WeightedSAM
from focalsam.optim.validators import ClassCounts, validate_class_counts


class FocalSAM(WeightedSAM):
    """Focal-SAM: minimize ``L(theta) + lam * sum_i (1 - pi_i)^gamma * S_i(theta)``
    with class-wise sharpness ``S_i = L^i(theta + eps) - L^i(theta)``.

    Per sample: ``b_n = c(y_n) = lam * (1 - pi_{y_n})^gamma`` and
    ``a_n = 1 - c(y_n)``; one shared ``eps`` from the ``b``-weighted loss, so a
    step costs 2 forward + 3 backward passes for any number of classes.
    ``lam = 0`` is the base optimizer; ``lam = 1, gamma = 0`` is SAM.
    ``num_classes``, when given, is checked against ``len(class_counts)``.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = FocalSAM(model.parameters(), torch.optim.SGD, class_counts=[50, 10, 2],
        ...                rho=0.1, gamma=2.0, lam=0.5, lr=0.1, momentum=0.9)
        >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        >>> losses = opt.step(
        ...     lambda: torch.nn.functional.cross_entropy(model(x), y, reduction="none"), y)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None,
        base_optimizer: type[Optimizer] | Optimizer = torch.optim.SGD,
        *,
        class_counts: ClassCounts,
        num_classes: int | None = None,
        gamma: float = 2.0,
        lam: float = 0.5,
        rho: float = 0.05,
        **kwargs: Any,
    ) -> None:
        self.class_counts = validate_class_counts(class_counts, num_classes)
        self.gamma = gamma
        self.lam = lam
        sharp = focal_weights(self.class_counts, gamma, lam, dtype=torch.float64)
        super().__init__(
            params,
            base_optimizer,
            clean_weights=1.0 - sharp,
            sharp_weights=sharp,
            rho=rho,
            **kwargs,
        )
