"""Kinds of :class:`~focalsam.errors.DataError` that stay catchable as the OS errors they
were (defined in :mod:`focalsam.errors`).

Each takes a single message string, so a DataLoader worker's error arrives in the main process
with its type intact; the message is reduced to the original line plus the worker it came from.
"""

from __future__ import annotations

from focalsam.errors import DataError, DataNotFoundError, DownloadError, ImageDecodeError

__all__ = ["DataError", "DataNotFoundError", "DownloadError", "ImageDecodeError"]
