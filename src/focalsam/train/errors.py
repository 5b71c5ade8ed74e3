"""Errors of the training layer's inputs (defined in :mod:`focalsam.errors`)."""

from __future__ import annotations

from focalsam.errors import ConfigError

__all__ = ["ConfigError"]
