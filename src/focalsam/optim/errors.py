"""Exceptions raised by the optimizers, one per kind of misuse.

All bad-input errors derive from :class:`OptimizerInputError`, itself a
:class:`focalsam.errors.InputError` (a ``ValueError``), so callers can catch
them together or one by one.
"""

from __future__ import annotations

from focalsam import class_counts
from focalsam.errors import InputError


class OptimizerInputError(InputError):
    """Base class: an optimizer was given something it cannot use."""


class InvalidHyperparameterError(OptimizerInputError):
    """A hyperparameter is out of its range (rho < 0, gamma < 0, ...)."""


class ClassCountsError(class_counts.ClassCountsError, OptimizerInputError):
    """``class_counts`` has the wrong length, zeros, negatives or non-integers
    (:func:`focalsam.class_counts.validate_class_counts`, raised by an optimizer)."""


class LabelError(OptimizerInputError):
    """Labels are missing, not a 1-D signed integer tensor, or outside ``[0, num_classes)``."""


class LossShapeError(OptimizerInputError):
    """The forward pass did not return one loss value per sample."""


class StateDictError(OptimizerInputError):
    """A state dict that was not saved by this optimizer on these parameter groups."""


class NonFiniteLossError(FloatingPointError):
    """The forward pass returned a NaN or infinite loss; the step was not taken."""


class StepOrderError(RuntimeError):
    """The explicit phases were called out of order (e.g. ``second_step`` first)."""


class AccumulationError(OptimizerInputError):
    """``step_accumulated`` was given something other than ``(closure, targets)`` pairs,
    lacks labels it needs, or the optimizer cannot accumulate micro-batches."""
