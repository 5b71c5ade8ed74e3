"""The optimizers' errors, one per kind of misuse (defined in :mod:`focalsam.errors`).

The bad-input errors derive from :class:`OptimizerInputError`, itself a
:class:`focalsam.errors.InputError` (a ``ValueError``), so callers can catch
them together or one by one.
"""

from __future__ import annotations

from focalsam.errors import (
    AccumulationError,
    ClassCountsError,
    InvalidHyperparameterError,
    LabelError,
    LossShapeError,
    NonFiniteLossError,
    OptimizerInputError,
    StateDictError,
    StepOrderError,
)

__all__ = [
    "AccumulationError",
    "ClassCountsError",
    "InvalidHyperparameterError",
    "LabelError",
    "LossShapeError",
    "NonFiniteLossError",
    "OptimizerInputError",
    "StateDictError",
    "StepOrderError",
]
