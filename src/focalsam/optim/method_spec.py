"""What a method is: a :class:`MethodSpec`, the one place that knows a method by name.

A spec carries what every caller needs to use the method without branching on its
name: its class and typed options, which shared sharpness-aware settings it takes,
what it needs (the training class counts, the classifier head), what it can do
(accumulate micro-batches, step without host syncs, be captured in a CUDA graph,
take every-k sharpness-aware steps), its later training stages, its display name in
a comparison, and its per-class sharp weights for the analysis. The training loop,
the config, the comparison table, the analysis and the CUDA-graph capture all read
these fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from focalsam.errors import ClassCountsError, InvalidHyperparameterError
from focalsam.names import normalize_name

__all__ = [
    "BASE_OPTIMIZERS",
    "SAM_SETTINGS",
    "ClassWeights",
    "MethodSpec",
    "StageSpec",
    "resolve_base_optimizer",
]

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
#: Settings of the rules on the group-wise engine (``GroupwiseSAM``): radii are the
#: method's own options, so no ``rho`` or ``adaptive``.
GROUPWISE_SETTINGS = tuple(s for s in SAM_SETTINGS if s not in ("rho", "adaptive"))


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


@dataclass(frozen=True)
class ClassWeights:
    """A method's per-class sharp weights ``b_i`` (float64), and one line saying the rule."""

    sharp: Tensor
    what: str


@dataclass(frozen=True)
class StageSpec:
    """A training stage after the optimizer's own. ``kind`` names what it trains:
    ``"classifier"``, the head alone on class-balanced batches of the features that
    enter it; ``epochs(options)`` its length, set by the option ``epochs_setting``;
    ``build(first_optimizer, classifier, options, momentum=, weight_decay=,
    max_grad_norm=)`` an object with ``step(features, targets, *, epoch, scaler) ->
    losses``, ``describe(epoch)``, ``state_dict()`` and ``load_state_dict()``."""

    kind: str
    epochs: Callable[[Any], int]
    build: Callable[..., Any]
    #: the options field that sets ``epochs`` (named in messages: ``optim.<method>.<it>``)
    epochs_setting: str = "stage2_epochs"


def _same_label(name: str) -> Callable[[str], str]:
    return lambda _base: name


@dataclass(frozen=True)
class MethodSpec:
    """What a method is and needs; :meth:`build` makes it from generic inputs.

    ``display_name``: its name in a comparison; a callable takes the base optimizer's
    name (the plain method is shown as its base optimizer). ``sharp_weights(options,
    counts)``: the per-class sharp weights ``b`` its ascent uses (None: it takes no
    sharpness-aware ascent, or one the analysis cannot reproduce).
    """

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
    display_name: str | Callable[[str], str] | None = None
    sharp_weights: Callable[[Any, Tensor], ClassWeights] | None = None
    #: whether the optimizer has ``step_accumulated`` (gradient accumulation)
    accumulates: bool = True
    #: whether a step can run without a host-device sync (``strict_checks=False``)
    sync_free: bool = True
    #: whether a whole step can be captured in one CUDA graph
    capturable: bool = True
    #: why not, when it cannot (named in the refusal)
    not_capturable_because: str = ""

    @property
    def every_k(self) -> bool:
        """Whether it takes ``sam_every = k``: a sharpness-aware step every k-th step."""
        return "sam_every" in self.settings

    def label(self, base: str = "sgd") -> str:
        """The display name in a comparison (``base``: the base optimizer's name)."""
        shown = self.display_name
        if shown is None:
            return self.name
        return shown if isinstance(shown, str) else shown(base)

    def class_weights(self, options: Any, counts: Any) -> ClassWeights | None:
        """The per-class sharp weights ``b_i`` for training counts ``n_i`` (float64), or
        None for a method without a sharpness-aware ascent the analysis can reproduce."""
        if self.sharp_weights is None:
            return None
        n = torch.as_tensor(counts, dtype=torch.float64)
        return self.sharp_weights(self.check_options(options), n)

    def passes_per_step(self, sam_every: int = 1) -> tuple[float, float] | None:
        """Mean (forward, backward) passes per step when every ``sam_every``-th step is
        sharpness-aware and the others take one forward and one backward pass."""
        if self.passes is None:
            return None
        k = sam_every
        fwd, bwd = ((n + (k - 1)) / k for n in self.passes)
        return (int(fwd) if fwd.is_integer() else fwd, int(bwd) if bwd.is_integer() else bwd)

    def default_options(self) -> Any:
        return self.options() if self.options is not None else None

    def option_names(self) -> tuple[str, ...]:
        """The fields of its options dataclass (empty without one)."""
        return tuple(f.name for f in dataclasses.fields(self.options)) if self.options else ()

    def check_options(self, options: Any) -> Any:
        """``options`` (None: the defaults) validated: the one check of a method's options,
        for :meth:`build`, ``create_optimizer`` and the config alike."""
        if self.options is None:
            return None
        opts: Any = options if options is not None else self.options()
        if not isinstance(opts, self.options):
            raise InvalidHyperparameterError(
                f"options of {self.name!r} must be {self.options.__name__}, got {opts!r}"
            )
        opts.validate()
        return opts

    def options_from(self, kwargs: dict[str, Any]) -> Any:
        """Pop the option fields out of ``kwargs`` into an options instance (None when the
        method has no options); unknown fields stay for the optimizer class."""
        if self.options is None:
            return None
        return self.options(**{k: kwargs.pop(k) for k in self.option_names() if k in kwargs})

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
        nothing to the plain optimizer), and keyword arguments for its class and the
        base optimizer."""
        kwargs: dict[str, Any] = {k: v for k, v in (settings or {}).items() if k in self.settings}
        opts = self.check_options(options)
        if opts is not None:
            kwargs.update(opts.optimizer_kwargs())
        if self.needs_class_counts:
            if class_counts is None:
                raise ClassCountsError(
                    f"{self.name} needs class_counts: the number of training samples of each class"
                )
            kwargs["class_counts"] = class_counts
        if self.needs_classifier and classifier is not None:
            kwargs["classifier"] = classifier
        kwargs.update(self.fixed)
        return self.factory(params, resolve_base_optimizer(base_optimizer), **kwargs, **base_kwargs)
