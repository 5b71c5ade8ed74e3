"""Errors of the training layer's inputs."""

from __future__ import annotations

from focalsam.errors import InputError


class ConfigError(InputError):
    """A configuration key or value is not valid."""
