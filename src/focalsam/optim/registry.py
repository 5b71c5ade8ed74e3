"""Name -> optimizer registry: ``create_optimizer("focal_sam", params, ...)``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from focalsam.optim.cc_sam import CCSAM
from focalsam.optim.errors import InvalidHyperparameterError
from focalsam.optim.focal_sam import FocalSAM
from focalsam.optim.imbsam import ImbSAM
from focalsam.optim.sam import SAM, PlainOptimizer

OptimizerFactory = Callable[..., Optimizer]

_OPTIMIZERS: dict[str, OptimizerFactory] = {}
_ALIASES: dict[str, str] = {}

BASE_OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
}


def _normalize(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_optimizer(
    name: str, factory: OptimizerFactory, aliases: Iterable[str] = ()
) -> OptimizerFactory:
    """Register ``factory(params, base_optimizer, **kwargs)`` under ``name``."""
    key = _normalize(name)
    if key in _OPTIMIZERS or key in _ALIASES:
        raise ValueError(f"optimizer name {name!r} is already registered")
    _OPTIMIZERS[key] = factory
    for alias in aliases:
        _ALIASES[_normalize(alias)] = key
    return factory


def list_optimizers() -> list[str]:
    """The registered optimizer names (aliases not included)."""
    return sorted(_OPTIMIZERS)


def resolve_base_optimizer(base: str | type[Optimizer]) -> type[Optimizer]:
    """``"sgd"``, ``"adamw"``, ... or an optimizer class -> the class."""
    if isinstance(base, str):
        cls = BASE_OPTIMIZERS.get(_normalize(base))
        if cls is None:
            raise InvalidHyperparameterError(
                f"unknown base optimizer {base!r}; valid: {', '.join(sorted(BASE_OPTIMIZERS))} "
                "(or pass a torch.optim.Optimizer class)"
            )
        return cls
    return base


def create_optimizer(
    name: str,
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    base_optimizer: str | type[Optimizer] = "sgd",
    **kwargs: Any,
) -> Optimizer:
    """Build a registered optimizer by name, wrapping ``base_optimizer``.

    >>> import torch
    >>> model = torch.nn.Linear(4, 3)
    >>> opt = create_optimizer("focal_sam", model.parameters(), "sgd",
    ...                        class_counts=[50, 10, 2], rho=0.1, lr=0.1)
    >>> type(opt).__name__
    'FocalSAM'
    """
    key = _normalize(name)
    key = _ALIASES.get(key, key)
    factory = _OPTIMIZERS.get(key)
    if factory is None:
        raise InvalidHyperparameterError(
            f"unknown optimizer {name!r}; valid: {', '.join(list_optimizers())}"
        )
    return factory(params, resolve_base_optimizer(base_optimizer), **kwargs)


register_optimizer("plain", PlainOptimizer, aliases=("base", "none", "sgd_plain"))
register_optimizer("sam", SAM)
register_optimizer("asam", functools.partial(SAM, adaptive=True))
register_optimizer("imbsam", ImbSAM, aliases=("imb_sam",))
register_optimizer("focal_sam", FocalSAM, aliases=("focalsam",))
register_optimizer("ccsam", CCSAM, aliases=("cc_sam",))
