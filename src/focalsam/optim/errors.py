"""Exceptions raised by the optimizers, one per kind of misuse.

All derive from :class:`OptimizerInputError` (a ``ValueError``), so callers can
catch them together or one by one.
"""

from __future__ import annotations


class OptimizerInputError(ValueError):
    """Base class: an optimizer was given something it cannot use."""


class InvalidHyperparameterError(OptimizerInputError):
    """A hyperparameter is out of its range (rho < 0, gamma < 0, ...)."""


class ClassCountsError(OptimizerInputError):
    """``class_counts`` has the wrong length, zeros, negatives or non-integers."""


class LabelError(OptimizerInputError):
    """Labels are missing, of the wrong shape, or outside ``[0, num_classes)``."""


class LossShapeError(OptimizerInputError):
    """The forward pass did not return one loss value per sample."""


class NonFiniteLossError(FloatingPointError):
    """The forward pass returned a NaN or infinite loss; the step was not taken."""


class StepOrderError(RuntimeError):
    """The explicit phases were called out of order (e.g. ``second_step`` first)."""
