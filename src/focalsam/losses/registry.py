"""Name -> loss registry: ``create_loss("ldam_drw", class_counts=counts)``."""

from __future__ import annotations

from typing import Any

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

__all__ = ["create_loss", "list_losses"]

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
    key = name.lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(list_losses())}")
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
