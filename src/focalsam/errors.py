"""Every error focalsam raises on purpose, in one hierarchy, and the exit code of each.

=====  ==========================================================================
code   meaning
=====  ==========================================================================
0      done
1      a failure at run time (:class:`RunError`: disk full, diverged), or a bug
2      bad input (:class:`InputError`)
130    interrupted (:class:`Interrupted`, or Ctrl-C)
=====  ==========================================================================

The command line turns an :class:`InputError` or a :class:`RunError` into one line on
stderr; anything else is a bug and keeps its traceback (exit 1). The modules that raise
these errors re-export them under their old homes (``focalsam.optim.errors``,
``focalsam.train.errors``, ``focalsam.data.errors``, ...), so both imports name one class.

A NaN takes one path out: the optimizer raises :class:`NonFiniteLossError` (a
:class:`TrainingDiverged`), the epoch loop records the step on it, the trainer the
epoch and the checkpoint it kept, and the command line prints it: one object, exit 1.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AccumulationError",
    "CaptureError",
    "CheckpointError",
    "CheckpointFieldError",
    "CheckpointWriteError",
    "ClassCountsError",
    "CompareError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "DownloadError",
    "FileLimitError",
    "FocalsamError",
    "ImageDecodeError",
    "InputError",
    "Interrupted",
    "InvalidHyperparameterError",
    "LabelError",
    "LossShapeError",
    "MethodPluginError",
    "NonFiniteLossError",
    "OptimizerInputError",
    "OutputPathError",
    "RunDirError",
    "RunError",
    "RunFolderHeldError",
    "StateDictError",
    "StepOrderError",
    "TrainingDiverged",
    "TrainingInterrupted",
    "UsageError",
    "exit_code",
]


class FocalsamError(Exception):
    """Base of every error focalsam raises on purpose."""


# --- exit code 2: bad input ------------------------------------------------------------


class InputError(FocalsamError, ValueError):
    """Something the user gave (a setting, a file, a tensor) is not what was expected."""


class ConfigError(InputError):
    """A configuration key or value is not valid."""


class CaptureError(ConfigError):
    """The step cannot be captured in (or replayed from) a CUDA graph."""


class RunDirError(InputError):
    """The run directory cannot be used: taken by another run, or not writable."""


class RunFolderHeldError(InputError):
    """A run folder is held by another live process (its pid is named)."""


class OutputPathError(InputError):
    """An output path lies inside a run folder, cannot be a folder at all, or cannot be
    created (no permission)."""


class UsageError(InputError):
    """The command line itself is malformed (an unknown flag, a missing value)."""


class FileLimitError(InputError):
    """A YAML or JSON file is too large, too deep, or uses aliases."""


class CheckpointError(InputError):
    """A checkpoint to read is missing, unreadable, or not one of ours."""


class CheckpointFieldError(CheckpointError):
    """A checkpoint field has the wrong type, is out of range, or holds NaN/inf weights."""


class CompareError(InputError):
    """A compare's command is not valid, or does not match its compare directory."""


class ClassCountsError(InputError):
    """Class counts that are empty, not 1-D, of the wrong length, not finite, not whole
    numbers, or below the minimum a method needs (optimizers, losses and metrics alike)."""


class MethodPluginError(InputError):
    """A method registered through the ``focalsam.methods`` entry points cannot be loaded,
    or clashes with a name already registered."""


class OptimizerInputError(InputError):
    """An optimizer was given something it cannot use."""


class InvalidHyperparameterError(OptimizerInputError):
    """A hyperparameter is out of its range (rho < 0, gamma < 0, ...) or a name is unknown."""


class LabelError(OptimizerInputError):
    """Labels are missing, not a 1-D signed integer tensor, or outside ``[0, num_classes)``."""


class LossShapeError(OptimizerInputError):
    """The forward pass did not return one loss value per sample."""


class StateDictError(OptimizerInputError):
    """A state dict that was not saved by this optimizer on these parameter groups."""


class AccumulationError(OptimizerInputError):
    """``step_accumulated`` was given something other than ``(closure, targets)`` pairs,
    lacks labels it needs, or the optimizer cannot accumulate micro-batches."""


class DataError(InputError):
    """A dataset, list file or image is missing, unreadable or inconsistent."""


_WORKER_MARK = "\nOriginal Traceback (most recent call last):"


class _WorkerSafeDataError(DataError):
    """A DataError that condenses torch's re-raised worker message to the original line.

    Each takes a single message string, so a DataLoader worker's error arrives in the main
    process with its type intact (torch rebuilds it as ``type(message)``). torch's message
    then holds the worker's traceback; the class keeps it in ``worker_traceback`` and reduces
    the message to the original line plus the worker it came from."""

    worker_traceback: str | None = None
    #: set by :func:`~focalsam.data.verify_images`: every missing / undecodable image
    missing: Sequence[str] = ()
    undecodable: Sequence[str] = ()

    def __init__(self, *args: object) -> None:
        text = args[0] if len(args) == 1 else None
        if isinstance(text, str) and text.startswith("Caught ") and _WORKER_MARK in text:
            condensed = self._condense(text)
            if condensed is not None:
                self.worker_traceback = text
                args = (condensed,)
        super().__init__(*args)

    @classmethod
    def _condense(cls, text: str) -> str | None:
        head = text.split("\n", 1)[0]  # "Caught X in DataLoader worker process 0."
        where = head.removeprefix(f"Caught {cls.__name__} ").rstrip(".")
        prefix = f"{cls.__module__}.{cls.__qualname__}: "
        lines = text.rstrip().splitlines()
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].startswith(prefix):
                original = "\n".join(lines[i:])[len(prefix) :]
                return f"{original} ({where})" if where != head else original
        return None


class DataNotFoundError(_WorkerSafeDataError, FileNotFoundError):
    """A data file or folder (list, image, CIFAR batch) does not exist."""


class ImageDecodeError(_WorkerSafeDataError, OSError):
    """An image file exists but cannot be read or decoded."""


class DownloadError(DataError, OSError):
    """A dataset download failed (network unreachable, HTTP error, timeout)."""


# --- exit code 1: a failure at run time -------------------------------------------------


class RunError(FocalsamError, RuntimeError):
    """A run failed while running, through no fault of its input (a full disk, a
    diverged loss): exit code 1 with one line."""


class CheckpointWriteError(RunError, OSError):
    """A checkpoint could not be written (disk full, no permission); the old file is kept."""


class TrainingDiverged(RunError, FloatingPointError):
    """A NaN/inf loss or weights; no step was taken on them.

    The layers it passes through say where it happened, on this one object: ``step``
    (0-based, set by the epoch loop), ``epoch`` (1-based) and ``kept`` (the checkpoint
    kept, both set by the trainer). ``str()`` is the whole line."""

    def __init__(
        self,
        detail: str,
        *,
        step: int | None = None,
        epoch: int | None = None,
        kept: str = "",
    ) -> None:
        super().__init__(detail)
        self.detail, self.step, self.epoch, self.kept = detail, step, epoch, kept

    def __str__(self) -> str:
        where = []
        if self.epoch is not None:
            where.append(f"epoch {self.epoch}")
        if self.step is not None:
            where.append(f"step {self.step + 1}")
        head = f"non-finite loss at {', '.join(where)}: " if where else ""
        return f"{head}{self.detail}" + (f". {self.kept}" if self.kept else "")


class NonFiniteLossError(TrainingDiverged):
    """The forward pass returned a NaN or infinite loss; the step was not taken."""


# --- exit code 130: interrupted ---------------------------------------------------------


class Interrupted(FocalsamError):
    """A run stopped on request (SIGINT/SIGTERM) after saving what it had: exit code 130."""


class TrainingInterrupted(Interrupted, RuntimeError):
    """SIGINT/SIGTERM (or :meth:`Trainer.request_stop`): a checkpoint was saved."""


# --- a bug in the caller's code: exit 1 with its traceback ------------------------------


class StepOrderError(FocalsamError, RuntimeError):
    """The explicit phases were called out of order (e.g. ``second_step`` first)."""


def exit_code(exc: BaseException) -> int:
    """The command line's exit code for ``exc``: 2 bad input, 130 interrupted, 1 otherwise.

    >>> exit_code(ConfigError("x")), exit_code(CheckpointWriteError("x"))
    (2, 1)
    """
    if isinstance(exc, InputError):
        return 2
    if isinstance(exc, Interrupted | KeyboardInterrupt):
        return 130
    return 1
