"""SAM (Foret et al. 2021) and ASAM (Kwon et al. 2021); plain training on the same engine."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from focalsam.optim.engine import WeightedSAM


class SAM(WeightedSAM):
    """Sharpness-aware minimization: ``g = grad mean(l)(theta + eps)``,
    ``eps = rho * g / ||g||`` (2 forward + 2 backward passes per step).

    ``adaptive=True`` gives ASAM: ``eps = rho * p^2 g / ||p g||``.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
        >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        >>> def closure():
        ...     return torch.nn.functional.cross_entropy(model(x), y, reduction="none")
        >>> losses = opt.step(closure)
        >>> losses.shape
        torch.Size([8])
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None,
        base_optimizer: type[Optimizer] | Optimizer = torch.optim.SGD,
        *,
        rho: float = 0.05,
        adaptive: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            params,
            base_optimizer,
            clean_weights=0.0,
            sharp_weights=1.0,
            rho=rho,
            adaptive=adaptive,
            **kwargs,
        )


class PlainOptimizer(WeightedSAM):
    """The base optimizer alone (``a = 1, b = 0``: 1 forward + 1 backward) behind
    the same step API, so a training loop can switch rules by name."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None,
        base_optimizer: type[Optimizer] | Optimizer = torch.optim.SGD,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("rho", 0.0)
        super().__init__(params, base_optimizer, clean_weights=1.0, sharp_weights=0.0, **kwargs)
