"""The base classes of focalsam's errors, and the exit code the command line gives each.

=====  ==========================================================
code   meaning
=====  ==========================================================
0      done
1      a failure at run time (:class:`RunError`: disk full, diverged), or a bug
2      bad input (:class:`InputError`)
130    interrupted
=====  ==========================================================

The command line turns an :class:`InputError` or a :class:`RunError` into one line on
stderr; anything else is a bug and keeps its traceback. Each layer derives its own kinds
(``ConfigError``, ``DataError``, ``CheckpointError``, ``OptimizerInputError``, ...).
"""

from __future__ import annotations


class FocalsamError(Exception):
    """Base of every error focalsam raises on purpose."""


class InputError(FocalsamError, ValueError):
    """Something the user gave (a setting, a file, a tensor) is not what was expected."""


class RunError(FocalsamError, RuntimeError):
    """A run failed while running, through no fault of its input (a full disk, a
    diverged loss): exit code 1 with one line."""


class DataError(InputError):
    """A dataset, list file or image is missing, unreadable or inconsistent."""
