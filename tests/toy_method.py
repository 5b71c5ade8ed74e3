"""A toy method, defined here and nowhere in focalsam: ``g = grad mean((1 - s) l)(theta) +
grad mean(s l)(theta + eps)`` with one strength ``s`` for every class (``s = 1`` is SAM,
``s = 0`` the base optimizer). Registering :data:`TOY_SPEC` is all it takes to add it.

Also usable as a pytest plugin (``-p toy_method``): it registers the toy on import, so
the parametrized contract tests collect it beside the built-in methods.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from focalsam.errors import InvalidHyperparameterError
from focalsam.optim import MethodSpec, WeightedSAM
from focalsam.optim.method_spec import ClassWeights


@dataclass
class ToyOptions:
    """The toy's one option: the strength ``s`` in ``[0, 1]``."""

    strength: float = 0.5

    def validate(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise InvalidHyperparameterError(
                f"toy.strength must lie in [0, 1], got {self.strength!r}"
            )

    def optimizer_kwargs(self) -> dict[str, Any]:
        return {"strength": self.strength}


class ToySAM(WeightedSAM):
    """Clean weight ``1 - s``, sharp weight ``s``, for every class."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None,
        base_optimizer: type[Optimizer] | Optimizer = torch.optim.SGD,
        *,
        strength: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            params, base_optimizer, clean_weights=1.0 - strength, sharp_weights=strength, **kwargs
        )


def toy_weights(options: ToyOptions, counts: Tensor) -> ClassWeights:
    return ClassWeights(
        torch.full((len(counts),), float(options.strength), dtype=torch.float64),
        f"toy weights s = {options.strength}",
    )


TOY_SPEC = MethodSpec(
    "toy",
    ToySAM,
    "a toy SAM mix, for the registry's tests",
    options=ToyOptions,
    passes=(2, 3),
    display_name="Toy-SAM",
    sharp_weights=toy_weights,
)


def pytest_configure(config: Any) -> None:
    """As a pytest plugin: register the toy before the tests are collected."""
    from focalsam.optim import get_method, register_method

    try:
        get_method("toy")
    except InvalidHyperparameterError:
        register_method(TOY_SPEC)
