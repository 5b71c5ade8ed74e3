"""The ``report.json`` of a finished run as a compare reads it: the fields the table, the
figures and the verdicts use, checked for type before anything is written, so a damaged
report is one line naming it instead of a traceback halfway through the outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from focalsam.errors import CompareError
from focalsam.train.limits import read_json

#: the accuracy groups of ``last_epoch`` and ``best_test_epoch`` (fractions, or null)
GROUPS = ("overall", "many", "medium", "few")
#: the run-level numbers the table shows (numbers, or null)
NUMBERS = ("images_per_second", "wall_seconds", "peak_gpu_memory_mb")


class _Malformed(Exception):
    """One field that is not what a compare reads; ``str()`` says which and why."""


def read_report(path: Path, seed: int) -> dict[str, Any]:
    """``path`` (a run's ``report.json``) when it holds what a compare reads from the run
    of ``seed``; a :class:`CompareError` naming the file and the field otherwise."""
    report = read_json(path, "report")
    try:
        _check(report, seed)
    except _Malformed as exc:
        raise CompareError(
            f"report {path} is not a run report as focalsam writes it: {exc}; delete "
            f"{path.parent} to run it again, or choose another --out"
        ) from None
    return report  # type: ignore[no-any-return]


def _check(report: Any, seed: int) -> None:
    _need(isinstance(report, dict), "it is not a JSON object")
    _need("config" in report, "it lacks config")
    run = _mapping(_mapping(report["config"], "config").get("run"), "config.run")
    _need(
        _is_int(run.get("seed")) and run["seed"] == seed,
        f"config.run.seed is {run.get('seed')!r}, expected {seed}",
    )
    counts = report.get("class_counts")
    _need(counts is None or _numbers(counts), "class_counts is not a list of numbers")
    names = report.get("class_names")
    _need(
        names is None or (isinstance(names, list) and all(isinstance(n, str) for n in names)),
        "class_names is not a list of strings",
    )
    for key in ("last_epoch", "best_test_epoch"):  # absent when no epoch was evaluated
        if key not in report:
            continue
        epoch = _mapping(report[key], key)
        for field in (*GROUPS, "epoch"):
            _need(_optional_number(epoch.get(field)), f"{key}.{field} is not a number")
        per_class: Any = epoch.get("per_class")
        if key == "last_epoch" or per_class is not None:
            _need(_numbers(per_class), f"{key}.per_class is not a list of numbers")
            _need(
                counts is None or len(per_class) == len(counts),
                f"{key}.per_class has {len(per_class)} classes, class_counts {len(counts or [])}",
            )
    for key in NUMBERS:
        _need(_optional_number(report.get(key)), f"{key} is not a number")
    passes = report.get("passes_per_step")
    _need(
        passes is None or (_numbers(passes) and len(passes) == 2),
        "passes_per_step is not a pair of numbers (forward, backward)",
    )
    preset = report.get("shot_preset")
    _need(preset is None or isinstance(preset, str), "shot_preset is not a string")


def _need(ok: bool, reason: str) -> None:
    if not ok:
        raise _Malformed(reason)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    _need(isinstance(value, dict), f"{where} is not a JSON object")
    return value  # type: ignore[no-any-return]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _numbers(values: Any) -> bool:
    return isinstance(values, list) and all(_optional_number(v) and v is not None for v in values)
