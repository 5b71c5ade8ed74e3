"""The shape of a saved analysis document (``analysis.json``), checked before a resumed
``focalsam analyze`` keeps its measures: runs -> targets -> measures, and every field a
measure writes with its type, so a hand-edited or damaged file is refused in one line
instead of failing later in a table or a figure."""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

from focalsam.analysis.density import DensityResult
from focalsam.analysis.hessian import EigenResult, TraceResult


def _fields_of(result: type) -> dict[str, Any]:
    """The fields a result dataclass saves (``as_dict``: all but its ``_skip``)."""
    hints = get_type_hints(result)
    skip = getattr(result, "_skip", ())
    return {f.name: hints[f.name] for f in dataclasses.fields(result) if f.name not in skip}


#: measure -> the fields it saves and their types (``run_measure`` in analysis.measures)
MEASURE_FIELDS: dict[str, dict[str, Any]] = {
    "basic": {"loss": float, "grad_norm": float},
    "hessian": _fields_of(EigenResult),
    "trace": _fields_of(TraceResult),
    "density": _fields_of(DensityResult),
    "sharpness": {
        "rho": list[float],
        "own": list[float],
        "run": list[float] | None,
        "run_ascent": str,
    },
    "landscape": {
        "alphas_1d": list[float],
        "loss_1d": list[float],
        "alphas": list[float],
        "betas": list[float],
        "loss": list[list[float]],
        "directions": str,
    },
}
#: what every target's entry holds besides its measures
TARGET_FIELDS: dict[str, Any] = {"classes": list[int], "train_count": float}


def malformed(doc: Any) -> str | None:
    """What makes ``doc`` unlike an analysis document as focalsam writes it (the first
    problem, naming the field), or None."""
    if not isinstance(doc, dict):
        return "it is not a JSON object"
    missing = [k for k in ("settings", "run_dirs", "runs") if k not in doc]
    if missing:
        return f"it lacks {', '.join(missing)}"
    if not isinstance(doc["runs"], dict):
        return "runs is not a JSON object"
    for label, run in doc["runs"].items():
        if not isinstance(run, dict) or not isinstance(run.get("targets"), dict):
            return f"runs.{label} is not a JSON object with targets"
        for name, slot in run["targets"].items():
            where = f"runs.{label}.targets.{name}"
            if not isinstance(slot, dict):
                return f"{where} is not a JSON object"
            problem = _fields(slot, TARGET_FIELDS, where)
            if problem:
                return problem
            for measure, fields in MEASURE_FIELDS.items():
                if measure not in slot:
                    continue
                if not isinstance(slot[measure], dict):
                    return f"{where}.{measure} is not a JSON object"
                problem = _fields(slot[measure], fields, f"{where}.{measure}")
                if problem:
                    return problem
    return None


def _fields(obj: dict[str, Any], fields: dict[str, Any], where: str) -> str | None:
    for key, kind in fields.items():
        if key not in obj:
            return f"{where} lacks {key}"
        if not _is(obj[key], kind):
            return f"{where}.{key} is not {_describe(kind)} (got {_short(obj[key])})"
    return None


def _is(value: Any, kind: Any) -> bool:
    """Whether a JSON value fits ``kind`` (``float`` takes integers and NaN/inf as JSON
    writes them; ``bool`` is not a number)."""
    origin = get_origin(kind)
    if origin in (Union, types.UnionType):
        return any(_is(value, k) for k in get_args(kind))
    if kind is None or kind is type(None):
        return value is None
    if origin is list:
        (item,) = get_args(kind)
        return isinstance(value, list) and all(_is(v, item) for v in value)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    return True  # a type JSON cannot hold is not saved


def _describe(kind: Any) -> str:
    origin = get_origin(kind)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(k) for k in get_args(kind))
    if kind is None or kind is type(None):
        return "null"
    if origin is list:
        return f"a list of {_describe(get_args(kind)[0]).removeprefix('a ')}s"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return names.get(kind, str(kind))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = ["MEASURE_FIELDS", "TARGET_FIELDS", "malformed"]
