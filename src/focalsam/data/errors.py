"""Kinds of :class:`~focalsam.errors.DataError` that stay catchable as the OS errors they were.

Each takes a single message string, so a DataLoader worker's error arrives in the main process
with its type intact (torch rebuilds it as ``type(message)``). torch's message then holds the
worker's traceback; these classes keep it in ``worker_traceback`` and reduce the message to the
original line plus the worker it came from, so the command line still prints one line.
"""

from __future__ import annotations

from collections.abc import Sequence

from focalsam.errors import DataError

__all__ = ["DataError", "DataNotFoundError", "DownloadError", "ImageDecodeError"]

_WORKER_MARK = "\nOriginal Traceback (most recent call last):"


class _WorkerSafeDataError(DataError):
    """A DataError that condenses torch's re-raised worker message to the original line."""

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
