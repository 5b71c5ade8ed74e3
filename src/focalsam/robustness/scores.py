"""Corruption error (CE), mean corruption error (mCE) and per-shot-group error summaries.

Hendrycks & Dietterich (ICLR 2019): with ``E_{s,c}`` the top-1 error at severity ``s`` of
corruption ``c``,

    CE_c = sum_{s=1..5} E_{s,c} / sum_{s=1..5} E^{AlexNet}_{s,c},    mCE = mean_c CE_c.

Errors and CEs are fractions here (CE 1.0 = AlexNet's error); papers print ``100 * mCE``.
The AlexNet normalisation is only meaningful on ImageNet-C itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from focalsam.errors import InputError
from focalsam.robustness.corruptions import CORRUPTIONS

__all__ = [
    "ALEXNET_ERRORS",
    "GROUPS",
    "corruption_error",
    "mean_corruption_error",
    "summarize",
]

#: AlexNet's top-1 error on ImageNet-C per corruption, averaged over severities 1..5
#: (Hendrycks & Dietterich 2019). Same numbers as ``ALEXNET_ERR`` in google-research/augmix
#: ``imagenet.py`` ("Raw AlexNet errors taken from https://github.com/hendrycks/robustness").
ALEXNET_ERRORS: dict[str, float] = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
}
SEVERITIES = (1, 2, 3, 4, 5)
GROUPS = ("many", "medium", "few")


def _fraction(value: Any, what: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= x <= 1.0:  # also rejects NaN
        raise InputError(f"{what} must be in [0, 1], got {value!r}")
    return x


def corruption_error(errors_by_severity: Mapping[int, float], corruption: str) -> float:
    """``CE_c = mean_s E_{s,c} / ALEXNET_ERRORS[c]`` over severities 1..5 (all five needed).

    With all five severities, ``sum_s E_s / sum_s E^A_s = mean_s E_s / mean_s E^A_s``; a
    subset would be divided by AlexNet's five-severity mean and is refused (``InputError``).

    >>> round(corruption_error({s: 0.443214 for s in range(1, 6)}, "gaussian_noise"), 6)
    0.5
    """
    if corruption not in ALEXNET_ERRORS:
        raise InputError(
            f"no AlexNet reference error for {corruption!r}; CE is defined for the 15 "
            f"ImageNet-C corruptions: {', '.join(ALEXNET_ERRORS)}"
        )
    given = sorted(errors_by_severity)
    if given != list(SEVERITIES):
        raise InputError(
            f"CE of {corruption} needs the error at all five severities 1..5 (AlexNet's "
            f"reference is their mean), got severities {given}"
        )
    errors = [
        _fraction(errors_by_severity[s], f"{corruption} error at severity {s}") for s in given
    ]
    return math.fsum(errors) / len(errors) / ALEXNET_ERRORS[corruption]


def mean_corruption_error(ce_by_corruption: Mapping[str, float]) -> float:
    """``mCE = mean_c CE_c`` over the corruptions given (the caller records which).

    >>> mean_corruption_error({"fog": 0.5, "snow": 0.7})
    0.6
    """
    if not ce_by_corruption:
        raise InputError("mCE needs the CE of at least one corruption")
    values = []
    for name, ce in ce_by_corruption.items():
        x = float(ce)
        if not math.isfinite(x) or x < 0:
            raise InputError(f"CE of {name} must be a finite number >= 0, got {ce!r}")
        values.append(x)
    return math.fsum(values) / len(values)


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _group_error(cell: Mapping[str, Any], group: str, where: str) -> float | None:
    """``1 - accuracy`` of a group, or None when the cell has none (absent, None or NaN)."""
    value = cell.get(group)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return 1.0 - _fraction(value, f"{where} {group} accuracy")


def summarize(per_cell: Mapping[tuple[str, int], Mapping[str, Any]]) -> dict[str, Any]:
    """Mean error (``1 - accuracy``) over the cells given, overall and per shot group.

    ``per_cell[(corruption, severity)]`` holds accuracies ``overall`` (required) and
    ``many``/``medium``/``few`` (each optional; None or NaN for a group without test classes;
    a group's mean is None if no cell has it). Returns a JSON-ready dict::

        {"cells": n, "mean_error": e, "mean_error_by_group": {"many": e, ...},
         "by_corruption": {c: {"mean_error": e, "mean_error_by_group": {...},
                               "error_by_severity": {"1": e, ...}}}}

    Corruptions are in the standard order, then others sorted; severities ascending.

    >>> s = summarize({("fog", 1): {"overall": 0.75, "many": 0.9, "medium": 0.7, "few": 0.5}})
    >>> s["mean_error"], s["mean_error_by_group"]["few"]
    (0.25, 0.5)
    """
    if not per_cell:
        raise InputError("summarize needs at least one (corruption, severity) cell")
    order = {c: i for i, c in enumerate(CORRUPTIONS)}
    keys = sorted(per_cell, key=lambda k: (order.get(k[0], len(order)), k[0], k[1]))
    overall: list[float] = []
    groups: dict[str, list[float]] = {g: [] for g in GROUPS}
    by_corruption: dict[str, dict[str, Any]] = {}
    for corruption, severity in keys:
        cell, where = per_cell[(corruption, severity)], f"{corruption} severity {severity}:"
        if "overall" not in cell:
            raise InputError(f"{where} no 'overall' accuracy")
        error = 1.0 - _fraction(cell["overall"], f"{where} overall accuracy")
        entry = by_corruption.setdefault(
            corruption, {"errors": [], "groups": {g: [] for g in GROUPS}, "by_severity": {}}
        )
        overall.append(error)
        entry["errors"].append(error)
        entry["by_severity"][str(severity)] = error
        for g in GROUPS:
            e = _group_error(cell, g, where)
            if e is not None:
                groups[g].append(e)
                entry["groups"][g].append(e)
    return {
        "cells": len(keys),
        "mean_error": _mean(overall),
        "mean_error_by_group": {g: _mean(v) for g, v in groups.items()},
        "by_corruption": {
            c: {
                "mean_error": _mean(e["errors"]),
                "mean_error_by_group": {g: _mean(v) for g, v in e["groups"].items()},
                "error_by_severity": e["by_severity"],
            }
            for c, e in by_corruption.items()
        },
    }
