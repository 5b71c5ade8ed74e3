"""ImbSAM (Zhou et al., ICCV 2023): sharpness-aware minimization on tail classes only."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from focalsam.optim.class_weights import imbsam_weights
from focalsam.optim.engine import WeightedSAM
from focalsam.optim.validators import ClassCounts, validate_class_counts


class ImbSAM(WeightedSAM):
    """ImbSAM: clean loss on head classes, SAM on tail classes.

    ``a_n = 1[y_n not tail]``, ``b_n = kappa * 1[y_n tail]`` with
    tail = ``{i : n_i < eta}`` (2 forward + 3 backward passes per step).

    ``kappa``: the paper uses 1, its public code 2.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None,
        base_optimizer: type[Optimizer] | Optimizer = torch.optim.SGD,
        *,
        class_counts: ClassCounts,
        num_classes: int | None = None,
        eta: float,
        kappa: float = 1.0,
        rho: float = 0.05,
        **kwargs: Any,
    ) -> None:
        self.class_counts = validate_class_counts(class_counts, num_classes)
        self.eta = eta
        self.kappa = kappa
        clean, sharp = imbsam_weights(self.class_counts, eta, kappa, dtype=torch.float64)
        super().__init__(
            params, base_optimizer, clean_weights=clean, sharp_weights=sharp, rho=rho, **kwargs
        )
