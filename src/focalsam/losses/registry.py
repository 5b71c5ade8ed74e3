"""Name -> loss registry: ``create_loss("ldam_drw", class_counts=counts)``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from focalsam.errors import InputError
from focalsam.losses._checks import CountsLike
from focalsam.losses.modules import (
    BalancedSoftmaxLoss,
    CrossEntropyLoss,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    LongTailLoss,
    VSLoss,
)
from focalsam.losses.weights import DeferredReweighting, class_balanced_weights
from focalsam.names import normalize_name

__all__ = ["LossOptions", "create_loss", "list_losses"]

# name -> (class, defaults); "ldam_drw" is LDAM with DRW from epoch 160
_REGISTRY: dict[str, tuple[type[LongTailLoss], dict[str, Any]]] = {
    "ce": (CrossEntropyLoss, {}),
    "logit_adjustment": (LogitAdjustedLoss, {}),
    "ldam": (LDAMLoss, {}),
    "ldam_drw": (LDAMLoss, {"drw_start_epoch": 160}),
    "vs": (VSLoss, {}),
    "balanced_softmax": (BalancedSoftmaxLoss, {}),
    "focal": (FocalLoss, {}),
}


def list_losses() -> list[str]:
    """Names accepted by :func:`create_loss`."""
    return sorted(_REGISTRY)


def create_loss(
    name: str,
    class_counts: CountsLike | None = None,
    *,
    drw_start_epoch: int | None = None,
    drw_beta: float = 0.9999,
    class_balanced_beta: float | None = None,
    **kwargs: Any,
) -> LongTailLoss:
    """Build a loss by name.

    ``class_counts``: training images per class (needed by every loss but ``ce`` and
    ``focal``). ``drw_start_epoch``: deferred re-weighting by effective number (``drw_beta``)
    from that epoch on, for any loss (``ldam_drw`` defaults it to 160).
    ``class_balanced_beta``: fixed class-balanced weights instead. Other keywords go to the
    loss class (``tau``, ``max_margin``, ``scale``, ``gamma``, ``reduction``, ``validate``).
    """
    key = normalize_name(name)
    if key not in _REGISTRY:
        raise InputError(f"unknown loss {name!r}; valid: {', '.join(list_losses())}")
    cls, defaults = _REGISTRY[key]
    if drw_start_epoch is None:
        drw_start_epoch = defaults.get("drw_start_epoch")
    if (drw_start_epoch is not None or class_balanced_beta is not None) and class_counts is None:
        raise ValueError(f"loss {name!r} with re-weighting needs class_counts")
    if drw_start_epoch is not None and class_balanced_beta is not None:
        raise ValueError("give either drw_start_epoch or class_balanced_beta, not both")
    if cls.needs_class_counts and class_counts is None:
        raise ValueError(f"loss {name!r} needs class_counts (training images per class)")
    if drw_start_epoch is not None:
        assert class_counts is not None
        kwargs["drw"] = DeferredReweighting(class_counts, drw_start_epoch, drw_beta)
    if class_balanced_beta is not None:
        assert class_counts is not None
        kwargs["weight"] = class_balanced_weights(class_counts, class_balanced_beta)
    try:
        return cls(class_counts, **kwargs)  # type: ignore[arg-type]
    except TypeError as e:
        raise TypeError(f"loss {name!r} ({cls.__name__}): {e}") from e


def _h(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class LossOptions:
    """A loss by name and its typed settings (each used by the losses named beside it).

    ``options.build(class_counts)`` is ``create_loss(name, class_counts, ...)`` with the
    settings that loss takes, per sample (``reduction="none"``).
    """

    name: str = _h("ce", "ce | logit_adjustment | ldam | ldam_drw | vs | balanced_softmax | focal")
    tau: float = _h(1.0, "logit_adjustment, vs: temperature of the prior")
    max_margin: float = _h(0.5, "ldam, ldam_drw: the largest margin")
    scale: float = _h(30.0, "ldam, ldam_drw: logit scale")
    vs_gamma: float = _h(0.3, "vs: multiplicative exponent")
    focal_gamma: float = _h(1.0, "focal: focusing exponent")
    drw_start_epoch: int | None = _h(None, "deferred re-weighting from this epoch (ldam_drw: 160)")
    drw_beta: float = _h(0.9999, "deferred re-weighting: effective-number beta")
    class_balanced_beta: float | None = _h(None, "fixed class-balanced weights with this beta")

    def validate(self) -> None:
        if normalize_name(self.name) not in _REGISTRY:
            raise InputError(f"unknown loss {self.name!r}; valid: {', '.join(list_losses())}")
        for key in ("tau", "max_margin", "vs_gamma", "focal_gamma"):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0:
                raise InputError(f"loss.{key} must be a finite number >= 0, got {value!r}")
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise InputError(f"loss.scale must be a finite number > 0, got {self.scale!r}")
        for key in ("drw_beta", "class_balanced_beta"):
            value = getattr(self, key)
            if value is not None and not 0 <= value < 1:
                raise InputError(f"loss.{key} must lie in [0, 1), got {value!r}")
        if self.drw_start_epoch is not None and self.drw_start_epoch < 0:
            raise InputError(f"loss.drw_start_epoch must be >= 0, got {self.drw_start_epoch}")
        if self.drw_start_epoch is not None and self.class_balanced_beta is not None:
            raise InputError("give loss.drw_start_epoch or loss.class_balanced_beta, not both")

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`create_loss` for this loss."""
        key = normalize_name(self.name)
        own: dict[str, Any] = {
            "logit_adjustment": {"tau": self.tau},
            "vs": {"tau": self.tau, "gamma": self.vs_gamma},
            "ldam": {"max_margin": self.max_margin, "scale": self.scale},
            "ldam_drw": {"max_margin": self.max_margin, "scale": self.scale},
            "focal": {"gamma": self.focal_gamma},
        }.get(key, {})
        if self.drw_start_epoch is not None:
            own["drw_start_epoch"] = self.drw_start_epoch
        if self.class_balanced_beta is not None:
            own["class_balanced_beta"] = self.class_balanced_beta
        return {**own, "drw_beta": self.drw_beta}

    def build(self, class_counts: CountsLike | None) -> LongTailLoss:
        """The per-sample loss module."""
        return create_loss(self.name, class_counts, reduction="none", **self.kwargs())
