"""The one base class of every error caused by bad input rather than a bug.

The command line turns any :class:`InputError` into one line naming the input
and what was expected, exit code 2; anything else is a bug and keeps its
traceback. Each layer derives its own kinds (``ConfigError``, ``DataError``,
``CheckpointError``, ``OptimizerInputError``, ...) from it.
"""

from __future__ import annotations


class InputError(ValueError):
    """Something the user gave (a setting, a file, a tensor) is not what was expected."""


class DataError(InputError):
    """A dataset, list file or image is missing, unreadable or inconsistent."""
