"""Third-party methods: each entry point of the group ``focalsam.methods`` names a
:class:`~focalsam.optim.method_spec.MethodSpec` (or a function of no arguments that
returns one), registered like a built-in method.

A package declares one in its metadata, e.g. in ``pyproject.toml``::

    [project.entry-points."focalsam.methods"]
    my_sam = "my_package.methods:MY_SAM_SPEC"

The registry loads the group once, the first time it is listed or asked for a name.
A plugin that cannot be imported, is not a spec, or takes a name already registered
stops with one :class:`~focalsam.errors.MethodPluginError` line naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from focalsam.errors import MethodPluginError

__all__ = ["load_plugin_methods"]


def load_plugin_methods(group: str, register: Callable[[Any], Any], done: set[str]) -> None:
    """Register the spec of every entry point of ``group`` not yet in ``done`` (by
    ``name = value``), adding it to ``done``."""
    from focalsam.optim.method_spec import MethodSpec

    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        key = f"{ep.name} = {ep.value}"
        if key in done:
            continue
        spec = _load(ep)
        if callable(spec) and not isinstance(spec, MethodSpec):
            spec = _call(ep, spec)
        if not isinstance(spec, MethodSpec):
            raise MethodPluginError(
                f"method plugin {ep.name!r} ({ep.value}, entry point group {group}) must "
                f"name a focalsam.optim.MethodSpec, got {type(spec).__name__}"
            )
        try:
            register(spec)
        except ValueError as exc:
            raise MethodPluginError(
                f"method plugin {ep.name!r} ({ep.value}) cannot be registered: {exc}"
            ) from None
        done.add(key)


def _load(ep: EntryPoint) -> Any:
    try:
        return ep.load()
    except Exception as exc:  # any import-time failure of third-party code
        raise MethodPluginError(
            f"method plugin {ep.name!r} ({ep.value}) could not be loaded: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from exc


def _call(ep: EntryPoint, make: Callable[[], Any]) -> Any:
    try:
        return make()
    except Exception as exc:
        raise MethodPluginError(
            f"method plugin {ep.name!r} ({ep.value}) failed to make its spec: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"
