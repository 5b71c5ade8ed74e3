"""The typed options of the built-in methods: one dataclass per method, each validating
its own fields (the ``optim.<method>`` section of a training config is this dataclass).

An options class has ``validate()`` (raises :class:`InvalidHyperparameterError`) and
``optimizer_kwargs()`` (the keyword arguments its optimizer class takes).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from focalsam.errors import InvalidHyperparameterError

__all__ = ["CCSAMOptions", "FocalSAMOptions", "ImbSAMOptions", "check_number"]


def check_number(name: str, value: Any, low: float = 0.0) -> None:
    """Raise :class:`InvalidHyperparameterError` unless ``value`` is a finite number ``>= low``."""
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
        check_number("focal_sam.gamma", self.gamma)
        check_number("focal_sam.lam", self.lam)
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
        check_number("imbsam.eta", self.eta)
        check_number("imbsam.kappa", self.kappa)

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
        check_number("ccsam.rho", self.rho)
        check_number("ccsam.flat_ratio", self.flat_ratio)
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
        check_number("ccsam.stage2_lr", self.stage2_lr)
        if self.stage2_lr == 0:
            raise InvalidHyperparameterError("ccsam.stage2_lr must be > 0, got 0")
        check_number("ccsam.rho2", self.rho2)
        check_number("ccsam.up_limit", self.up_limit)

    def optimizer_kwargs(self) -> dict[str, Any]:
        return {"rho": self.rho, "flat_ratio": self.flat_ratio, "mode": self.mode}
