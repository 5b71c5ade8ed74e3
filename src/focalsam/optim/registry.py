"""The method registry: every :class:`MethodSpec` by name and alias, the built-in
methods, and the third-party ones of the ``focalsam.methods`` entry points.

A training loop, the config, the comparison and the analysis ask the registry for a
method's spec and never branch on its name; a new method is one
:func:`register_method` call (or one entry point, see :mod:`focalsam.optim.method_plugins`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from focalsam.names import normalize_name
from focalsam.optim.ccsam import CCSAM, ccsam_mix_weight
from focalsam.optim.class_weights import focal_weights, imbsam_weights
from focalsam.optim.errors import InvalidHyperparameterError
from focalsam.optim.focal_sam import FocalSAM
from focalsam.optim.imbsam import ImbSAM
from focalsam.optim.method_options import CCSAMOptions, FocalSAMOptions, ImbSAMOptions
from focalsam.optim.method_plugins import load_plugin_methods
from focalsam.optim.method_spec import (
    BASE_OPTIMIZERS,
    GROUPWISE_SETTINGS,
    SAM_SETTINGS,
    ClassWeights,
    MethodSpec,
    StageSpec,
    resolve_base_optimizer,
)
from focalsam.optim.sam import SAM, PlainOptimizer
from focalsam.optim.sse_sam import SSESAM, SSESAMOptions

OptimizerFactory = Callable[..., Optimizer]


class MethodRegistry:
    """Specs by registered name, and aliases; the entry-point methods are added the
    first time the registry is listed or asked (once)."""

    def __init__(self, entry_point_group: str | None = None) -> None:
        self.methods: dict[str, MethodSpec] = {}
        self.aliases: dict[str, str] = {}
        self.group = entry_point_group
        self.loaded_plugins: set[str] = set()
        self._plugins_done = entry_point_group is None

    def register(self, spec: MethodSpec) -> MethodSpec:
        """Add ``spec`` under its name and aliases; a name may be registered once."""
        names = [normalize_name(spec.name), *(normalize_name(a) for a in spec.aliases)]
        for key in names:
            if key in self.methods or key in self.aliases:
                raise ValueError(f"optimizer name {key!r} is already registered")
        self.methods[names[0]] = spec
        for alias in names[1:]:
            self.aliases[alias] = names[0]
        return spec

    def unregister(self, name: str) -> MethodSpec:
        """Remove a registered method (by name or alias) and its aliases."""
        key = self.canonical(name)
        spec = self.methods.pop(key)
        for alias in [a for a, n in self.aliases.items() if n == key]:
            del self.aliases[alias]
        return spec

    def _ready(self) -> None:
        if not self._plugins_done and self.group is not None:
            self._plugins_done = True  # set first: a plugin may list the registry
            try:
                load_plugin_methods(self.group, self.register, self.loaded_plugins)
            except BaseException:
                self._plugins_done = False  # a broken plugin fails every query, not once
                raise

    def names(self) -> list[str]:
        self._ready()
        return sorted(self.methods)

    def alias_map(self) -> dict[str, str]:
        self._ready()
        return dict(self.aliases)

    def canonical(self, name: str) -> str:
        self._ready()
        key = normalize_name(name)
        key = self.aliases.get(key, key)
        if key not in self.methods:
            raise InvalidHyperparameterError(
                f"unknown optimizer {name!r}; valid: {self.describe()}"
            )
        return key

    def get(self, name: str) -> MethodSpec:
        return self.methods[self.canonical(name)]

    def of(self, optimizer: Optimizer) -> MethodSpec | None:
        """The spec whose class built ``optimizer`` (the most derived one), or None for
        an optimizer of no registered method's class (a torch optimizer)."""
        self._ready()
        best: tuple[int, MethodSpec] | None = None
        for spec in self.methods.values():
            cls = spec.factory
            if isinstance(cls, type) and isinstance(optimizer, cls):
                depth = len(cls.__mro__)
                if best is None or depth > best[0]:
                    best = (depth, spec)
        return None if best is None else best[1]

    def describe(self) -> str:
        out = []
        for name in self.names():
            aliases = [a for a, n in self.aliases.items() if n == name]
            out.append(f"{name} ({', '.join(aliases)})" if aliases else name)
        return ", ".join(out)


#: the methods of this process: the built-ins below, then the entry points'
METHODS = MethodRegistry("focalsam.methods")


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` under its name and aliases; a name may be registered once."""
    return METHODS.register(spec)


def unregister_method(name: str) -> MethodSpec:
    """Remove a registered method (name or alias) and its aliases; returns its spec."""
    return METHODS.unregister(name)


def register_optimizer(
    name: str, factory: OptimizerFactory, aliases: Iterable[str] = (), **spec: Any
) -> OptimizerFactory:
    """Register ``factory(params, base_optimizer, **kwargs)`` under ``name``
    (a :class:`MethodSpec` with the given fields)."""
    register_method(
        MethodSpec(
            normalize_name(name),
            factory,
            spec.pop("description", name),
            aliases=tuple(aliases),
            **spec,
        )
    )
    return factory


def list_optimizers() -> list[str]:
    """The registered optimizer names (aliases not included)."""
    return METHODS.names()


def optimizer_aliases() -> dict[str, str]:
    """alias -> registered name."""
    return METHODS.alias_map()


def canonical_name(name: str) -> str:
    """The registered name of ``name`` or one of its aliases."""
    return METHODS.canonical(name)


def describe_names() -> str:
    """The registered names, each with its aliases: ``plain (sgd, base, none)``."""
    return METHODS.describe()


def get_method(name: str) -> MethodSpec:
    """The spec of a registered optimizer (name or alias)."""
    return METHODS.get(name)


def method_of(optimizer: Optimizer) -> MethodSpec | None:
    """The registered method whose class built ``optimizer``; None for a torch optimizer."""
    return METHODS.of(optimizer)


def create_optimizer(
    name: str,
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    base_optimizer: str | type[Optimizer] = "sgd",
    **kwargs: Any,
) -> Optimizer:
    """Build a registered optimizer by name, wrapping ``base_optimizer``: the keyword
    arguments that are fields of its options (``gamma``, ``lam`` for Focal-SAM) are
    validated as those options, as :meth:`MethodSpec.build` does; the others go to its
    class (and the base optimizer) as they are.

    >>> import torch
    >>> model = torch.nn.Linear(4, 3)
    >>> opt = create_optimizer("focal_sam", model.parameters(), "sgd",
    ...                        class_counts=[50, 10, 2], rho=0.1, lr=0.1)
    >>> type(opt).__name__
    'FocalSAM'
    """
    spec = get_method(name)
    options = spec.options_from(kwargs)
    class_counts = kwargs.pop("class_counts", None)
    classifier = kwargs.pop("classifier", None)
    return spec.build(
        params,
        base_optimizer,
        options=options,
        class_counts=class_counts,
        classifier=classifier,
        **kwargs,
    )


def _ccsam_stage2_epochs(options: CCSAMOptions) -> int:
    return options.stage2_epochs


class CCSAMClassifierStage:
    """CC-SAM's stage 2 as a classifier stage: ``step(features, targets, epoch=e)`` trains
    the classifier on (class-balanced) features with the mix weight of stage epoch ``e``
    (:func:`ccsam_mix_weight`), by SGD at a constant ``stage2_lr``."""

    def __init__(
        self,
        first: CCSAM,
        classifier: nn.Module,
        options: CCSAMOptions,
        *,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = None,
    ) -> None:
        self.options = options
        self.optimizer = torch.optim.SGD(
            classifier.parameters(),
            lr=options.stage2_lr,
            momentum=momentum,
            weight_decay=weight_decay,
        )
        self.second = first.second_stage(
            self.optimizer, rho=options.rho2, max_grad_norm=max_grad_norm
        )

    def describe(self, epoch: int) -> dict[str, float]:
        """What to log for stage epoch ``epoch`` (0-based)."""
        return {"lr": self.options.stage2_lr, "rho": self.options.rho2, "alpha": self.alpha(epoch)}

    def alpha(self, epoch: int) -> float:
        return ccsam_mix_weight(epoch, self.options.stage2_epochs, self.options.up_limit)

    def step(self, features: Tensor, targets: Tensor, *, epoch: int, scaler: Any = None) -> Tensor:
        return self.second.step(features, targets, alpha=self.alpha(epoch), scaler=scaler)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


def _sam_weights(_options: Any, counts: Tensor) -> ClassWeights:
    return ClassWeights(torch.ones(len(counts), dtype=torch.float64), "SAM: all weights 1")


def _asam_weights(_options: Any, counts: Tensor) -> ClassWeights:
    return ClassWeights(
        torch.ones(len(counts), dtype=torch.float64),
        "SAM: all weights 1 (ASAM's adaptive scaling is not applied)",
    )


def _focal_sam_weights(options: FocalSAMOptions, counts: Tensor) -> ClassWeights:
    return ClassWeights(
        focal_weights(counts, options.gamma, options.lam, dtype=torch.float64),
        f"Focal-SAM weights lam (1 - pi_y)^gamma, gamma {options.gamma}, lam {options.lam}",
    )


def _imbsam_weights(options: ImbSAMOptions, counts: Tensor) -> ClassWeights:
    return ClassWeights(
        imbsam_weights(counts, options.eta, options.kappa, dtype=torch.float64)[1],
        f"ImbSAM weights kappa 1[n_y < eta], eta {options.eta}, kappa {options.kappa}",
    )


def _plain_label(base: str) -> str:
    """The plain method is shown as its base optimizer: ``SGD``, ``adamw (plain)``."""
    return base.upper() if base.lower() == "sgd" else f"{base} (plain)"


register_method(
    MethodSpec(
        "plain",
        PlainOptimizer,
        "the base optimizer alone",
        settings=("max_grad_norm", "model", "strict_checks"),
        aliases=("sgd", "base", "none"),
        passes=(1, 1),
        display_name=_plain_label,
    )
)
register_method(
    MethodSpec(
        "sam",
        SAM,
        "SAM (Foret et al. 2021)",
        passes=(2, 2),
        display_name="SAM",
        sharp_weights=_sam_weights,
    )
)
register_method(
    MethodSpec(
        "asam",
        SAM,
        "ASAM: SAM with the scale-invariant ascent",
        fixed={"adaptive": True},
        passes=(2, 2),
        display_name="ASAM",
        sharp_weights=_asam_weights,
    )
)
register_method(
    MethodSpec(
        "imbsam",
        ImbSAM,
        "ImbSAM (Zhou et al. ICCV 2023)",
        options=ImbSAMOptions,
        needs_class_counts=True,
        aliases=("imb_sam",),
        passes=(2, 3),
        display_name="ImbSAM",
        sharp_weights=_imbsam_weights,
    )
)
register_method(
    MethodSpec(
        "focal_sam",
        FocalSAM,
        "Focal-SAM (Li et al. ICML 2025)",
        options=FocalSAMOptions,
        needs_class_counts=True,
        aliases=("focalsam",),
        passes=(2, 3),
        display_name="Focal-SAM",
        sharp_weights=_focal_sam_weights,
    )
)
register_method(
    MethodSpec(
        "ccsam",
        CCSAM,
        "CC-SAM (Zhou et al. CVPR 2023), two stages",
        options=CCSAMOptions,
        settings=GROUPWISE_SETTINGS,
        needs_class_counts=True,
        needs_classifier=True,
        aliases=("cc_sam",),
        accumulates=False,
        sync_free=False,
        capturable=False,
        not_capturable_because="its passes depend on the batch's classes: a data-dependent "
        "number of passes",
        later_stages=(StageSpec("classifier", _ccsam_stage2_epochs, CCSAMClassifierStage),),
        display_name="CC-SAM",
    )
)

register_method(
    MethodSpec(
        "sse_sam",
        SSESAM,
        "SSE-SAM (Lyu et al. AAAI 2025): head and tail perturbed apart, head stops at gamma",
        options=SSESAMOptions,
        settings=GROUPWISE_SETTINGS,
        needs_class_counts=True,
        aliases=("ssesam",),
        capturable=False,
        not_capturable_because="its passes change at the stage cut (the head's perturbed "
        "passes stop there), which one captured graph cannot follow",
        display_name="SSE-SAM",
    )
)

__all__ = [
    "BASE_OPTIMIZERS",
    "CCSAMOptions",
    "ClassWeights",
    "FocalSAMOptions",
    "ImbSAMOptions",
    "METHODS",
    "SSESAMOptions",
    "MethodRegistry",
    "MethodSpec",
    "SAM_SETTINGS",
    "StageSpec",
    "canonical_name",
    "create_optimizer",
    "describe_names",
    "get_method",
    "list_optimizers",
    "method_of",
    "optimizer_aliases",
    "register_method",
    "register_optimizer",
    "resolve_base_optimizer",
    "unregister_method",
]
