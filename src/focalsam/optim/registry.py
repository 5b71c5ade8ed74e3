"""The one source of method names: a :class:`MethodSpec` per optimizer, by name.

A spec carries what a caller needs to build the method without knowing it:
its class, its own typed options (a dataclass, validated by itself), which of
the shared sharpness-aware settings it takes, whether it needs the training
class counts or the classifier head, and its stages. A training loop builds
any method through :meth:`MethodSpec.build` and never branches on its name.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from focalsam.names import normalize_name
from focalsam.optim.cc_sam import CCSAM, ccsam_mix_weight
from focalsam.optim.errors import InvalidHyperparameterError
from focalsam.optim.focal_sam import FocalSAM
from focalsam.optim.imbsam import ImbSAM
from focalsam.optim.sam import SAM, PlainOptimizer

OptimizerFactory = Callable[..., Optimizer]

BASE_OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
}

#: Settings every sharpness-aware rule of the engine takes (see ``WeightedSAM``).
SAM_SETTINGS = (
    "rho",
    "adaptive",
    "bn_update",
    "ascent_all_reduce",
    "max_grad_norm",
    "model",
    "strict_checks",
    "sam_every",
)


def _finite(name: str, value: Any, low: float = 0.0) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidHyperparameterError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < low:
        raise InvalidHyperparameterError(
            f"{name} must be a finite number >= {low:g}, got {value!r}"
        )


@dataclass
class FocalSAMOptions:
    """Focal-SAM: sharp weight ``c(y) = lam * (1 - pi_y) ** gamma``, clean weight ``1 - c(y)``."""

    gamma: float = 2.0
    lam: float = 0.5

    def validate(self) -> None:
        _finite("focal_sam.gamma", self.gamma)
        _finite("focal_sam.lam", self.lam)
        if self.lam > 1:
            warnings.warn(
                f"focal_sam.lam={self.lam:g} > 1: the clean weights 1 - c(y) of the head classes "
                "are negative (the published iNaturalist ResNet-50 recipe uses 1.1)",
                UserWarning,
                stacklevel=2,
            )

    def optimizer_kwargs(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "lam": self.lam}


@dataclass
class ImbSAMOptions:
    """ImbSAM: classes with fewer than ``eta`` training images are tail; ``kappa`` weights
    their sharpness (the paper uses 1, its public code 2)."""

    eta: float = 100.0
    kappa: float = 1.0

    def validate(self) -> None:
        _finite("imbsam.eta", self.eta)
        _finite("imbsam.kappa", self.kappa)

    def optimizer_kwargs(self) -> dict[str, Any]:
        return {"eta": self.eta, "kappa": self.kappa}


@dataclass
class CCSAMOptions:
    """CC-SAM: stage 1's radius scale and mix, stage 2 (the classifier on class-balanced
    batches of perturbed features) for ``stage2_epochs`` at a constant ``stage2_lr``."""

    rho: float = 1e-6
    flat_ratio: float = 0.5
    mode: str = "classifier"
    stage2_epochs: int = 30
    stage2_lr: float = 0.01
    rho2: float = 1.0
    up_limit: float = 1.0

    def validate(self) -> None:
        _finite("ccsam.rho", self.rho)
        _finite("ccsam.flat_ratio", self.flat_ratio)
        if self.flat_ratio > 1:
            raise InvalidHyperparameterError(
                f"ccsam.flat_ratio must lie in [0, 1], got {self.flat_ratio!r}"
            )
        if self.mode not in ("classifier", "network"):
            raise InvalidHyperparameterError(
                f"ccsam.mode must be 'classifier' (public code) or 'network' (paper), "
                f"got {self.mode!r}"
            )
        if isinstance(self.stage2_epochs, bool) or not isinstance(self.stage2_epochs, int):
            raise InvalidHyperparameterError(
                f"ccsam.stage2_epochs must be an integer, got {self.stage2_epochs!r}"
            )
        if self.stage2_epochs < 0:
            raise InvalidHyperparameterError(
                f"ccsam.stage2_epochs must be >= 0, got {self.stage2_epochs}"
            )
        _finite("ccsam.stage2_lr", self.stage2_lr)
        if self.stage2_lr == 0:
            raise InvalidHyperparameterError("ccsam.stage2_lr must be > 0, got 0")
        _finite("ccsam.rho2", self.rho2)
        _finite("ccsam.up_limit", self.up_limit)

    def optimizer_kwargs(self) -> dict[str, Any]:
        return {"rho": self.rho, "flat_ratio": self.flat_ratio, "mode": self.mode}


@dataclass(frozen=True)
class StageSpec:
    """A training stage after the optimizer's own. ``kind`` names what it trains:
    ``"classifier"``, the head alone on class-balanced batches of the features that
    enter it; ``epochs(options)`` its length; ``build(first_optimizer, classifier,
    options, momentum=, weight_decay=, max_grad_norm=)`` an object with
    ``step(features, targets, *, epoch, scaler) -> losses``, ``describe(epoch)``,
    ``state_dict()`` and ``load_state_dict()``."""

    kind: str
    epochs: Callable[[Any], int]
    build: Callable[..., Any]


@dataclass(frozen=True)
class MethodSpec:
    """What a method is and needs; :meth:`build` makes it from generic inputs."""

    name: str
    factory: OptimizerFactory
    description: str
    options: type[Any] | None = None
    settings: tuple[str, ...] = SAM_SETTINGS
    fixed: dict[str, Any] = field(default_factory=dict)
    needs_class_counts: bool = False
    needs_classifier: bool = False
    aliases: tuple[str, ...] = ()
    later_stages: tuple[StageSpec, ...] = ()
    #: forward / backward passes per step, for reports (None: depends on the batch)
    passes: tuple[int, int] | None = None

    def passes_per_step(self, sam_every: int = 1) -> tuple[float, float] | None:
        """Mean (forward, backward) passes per step when every ``sam_every``-th step is
        sharpness-aware and the others take one forward and one backward pass."""
        if self.passes is None:
            return None
        k = sam_every
        fwd, bwd = ((n + (k - 1)) / k for n in self.passes)
        return (int(fwd) if fwd.is_integer() else fwd, int(bwd) if bwd.is_integer() else bwd)

    #: whether the optimizer has ``step_accumulated`` (gradient accumulation)
    accumulates: bool = True

    def default_options(self) -> Any:
        return self.options() if self.options is not None else None

    def build(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: str | type[Optimizer] = "sgd",
        *,
        options: Any = None,
        class_counts: Any = None,
        classifier: nn.Module | None = None,
        settings: dict[str, Any] | None = None,
        **base_kwargs: Any,
    ) -> Optimizer:
        """The optimizer, from its options (a :attr:`options` instance, default: the
        defaults), the shared ``settings`` it takes (others are ignored: ``rho`` means
        nothing to the plain optimizer), and the base optimizer's keyword arguments."""
        kwargs: dict[str, Any] = {k: v for k, v in (settings or {}).items() if k in self.settings}
        if self.options is not None:
            opts: Any = options if options is not None else self.options()
            if not isinstance(opts, self.options):
                raise InvalidHyperparameterError(
                    f"options of {self.name!r} must be {self.options.__name__}, got {opts!r}"
                )
            opts.validate()
            kwargs.update(opts.optimizer_kwargs())
        if self.needs_class_counts:
            if class_counts is None:
                raise InvalidHyperparameterError(f"{self.name} needs class_counts")
            kwargs["class_counts"] = class_counts
        if self.needs_classifier:
            kwargs["classifier"] = classifier
        kwargs.update(self.fixed)
        return self.factory(params, resolve_base_optimizer(base_optimizer), **kwargs, **base_kwargs)


_METHODS: dict[str, MethodSpec] = {}
_ALIASES: dict[str, str] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` under its name and aliases; a name may be registered once."""
    names = [normalize_name(spec.name), *(normalize_name(a) for a in spec.aliases)]
    for key in names:
        if key in _METHODS or key in _ALIASES:
            raise ValueError(f"optimizer name {key!r} is already registered")
    _METHODS[names[0]] = spec
    for alias in names[1:]:
        _ALIASES[alias] = names[0]
    return spec


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
    return sorted(_METHODS)


def optimizer_aliases() -> dict[str, str]:
    """alias -> registered name."""
    return dict(_ALIASES)


def canonical_name(name: str) -> str:
    """The registered name of ``name`` or one of its aliases."""
    key = normalize_name(name)
    key = _ALIASES.get(key, key)
    if key not in _METHODS:
        raise InvalidHyperparameterError(f"unknown optimizer {name!r}; valid: {describe_names()}")
    return key


def describe_names() -> str:
    """The registered names, each with its aliases: ``plain (sgd, base, none)``."""
    out = []
    for name in list_optimizers():
        aliases = [a for a, n in _ALIASES.items() if n == name]
        out.append(f"{name} ({', '.join(aliases)})" if aliases else name)
    return ", ".join(out)


def get_method(name: str) -> MethodSpec:
    """The spec of a registered optimizer (name or alias)."""
    return _METHODS[canonical_name(name)]


def resolve_base_optimizer(base: str | type[Optimizer]) -> type[Optimizer]:
    """``"sgd"``, ``"adamw"``, ... or an optimizer class -> the class."""
    if isinstance(base, str):
        cls = BASE_OPTIMIZERS.get(normalize_name(base))
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
    """Build a registered optimizer by name, wrapping ``base_optimizer``; keyword
    arguments go to its class as they are.

    >>> import torch
    >>> model = torch.nn.Linear(4, 3)
    >>> opt = create_optimizer("focal_sam", model.parameters(), "sgd",
    ...                        class_counts=[50, 10, 2], rho=0.1, lr=0.1)
    >>> type(opt).__name__
    'FocalSAM'
    """
    spec = get_method(name)
    return spec.factory(params, resolve_base_optimizer(base_optimizer), **kwargs, **spec.fixed)


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


register_method(
    MethodSpec(
        "plain",
        PlainOptimizer,
        "the base optimizer alone",
        settings=("max_grad_norm", "model", "strict_checks"),
        aliases=("sgd", "base", "none"),
        passes=(1, 1),
    )
)
register_method(MethodSpec("sam", SAM, "SAM (Foret et al. 2021)", passes=(2, 2)))
register_method(
    MethodSpec(
        "asam",
        SAM,
        "ASAM: SAM with the scale-invariant ascent",
        fixed={"adaptive": True},
        passes=(2, 2),
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
    )
)
register_method(
    MethodSpec(
        "ccsam",
        CCSAM,
        "CC-SAM (Zhou et al. CVPR 2023), two stages",
        options=CCSAMOptions,
        settings=("bn_update", "max_grad_norm", "model", "strict_checks", "sam_every"),
        needs_class_counts=True,
        needs_classifier=True,
        aliases=("cc_sam",),
        accumulates=False,
        later_stages=(StageSpec("classifier", _ccsam_stage2_epochs, CCSAMClassifierStage),),
    )
)

__all__ = [
    "BASE_OPTIMIZERS",
    "CCSAMOptions",
    "FocalSAMOptions",
    "ImbSAMOptions",
    "MethodSpec",
    "StageSpec",
    "canonical_name",
    "create_optimizer",
    "get_method",
    "list_optimizers",
    "optimizer_aliases",
    "register_method",
    "register_optimizer",
    "resolve_base_optimizer",
]

# SSE-SAM: the group-wise rule (head and tail apart); its options live in its own module.
from focalsam.optim.sse_sam import SSESAM, SSESAMOptions  # noqa: E402

register_method(
    MethodSpec(
        "sse_sam",
        SSESAM,
        "SSE-SAM (Lyu et al. AAAI 2025): head and tail perturbed apart, head stops at gamma",
        options=SSESAMOptions,
        settings=(
            "bn_update",
            "ascent_all_reduce",
            "max_grad_norm",
            "model",
            "strict_checks",
            "sam_every",
        ),
        needs_class_counts=True,
        aliases=("ssesam",),
        accumulates=False,
    )
)
__all__ += ["SSESAMOptions"]
