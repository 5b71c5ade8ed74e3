"""The comparison table: per optimizer, mean ± std over seeds, with the noise rule.

Spread: the sample standard deviation over seeds, ``std = sqrt(sum (x - mean)^2 / (n - 1))``.
Noise rule: two rows a and b differ *within noise* when
``|mean_a - mean_b| <= max(std_a, std_b)``; with fewer than two seeds in either row
there is no noise estimate and nothing is marked.
"""

from __future__ import annotations

import math
from typing import Any

GROUPS = ("overall", "many", "medium", "few")

NOISE_RULE = (
    "within noise: |mean_a - mean_b| <= max(std_a, std_b), std the sample standard "
    "deviation over seeds (ddof=1); with one seed there is no noise estimate"
)


def label(name: str, base: str = "sgd") -> str:
    """The display name of a registered method (:meth:`MethodSpec.label`; ``base``: the
    base optimizer's name); a name no longer registered is shown as it is."""
    from focalsam.errors import InputError
    from focalsam.optim import get_method

    try:
        spec = get_method(name)
    except InputError:
        return name
    return spec.label(base)


def stat(values: list[float | None]) -> dict[str, Any]:
    """``{"mean", "std", "n", "values"}`` over the values that are not None;
    ``std`` is the sample standard deviation (None when n < 2)."""
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    mean = sum(xs) / n if n else None
    std = None
    if n >= 2 and mean is not None:
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return {"mean": mean, "std": std, "n": n, "values": xs}


def within_noise(a: dict[str, Any], b: dict[str, Any]) -> bool | None:
    """``|mean_a - mean_b| <= max(std_a, std_b)``; None without a spread for both."""
    if a["std"] is None or b["std"] is None or a["mean"] is None or b["mean"] is None:
        return None
    return abs(a["mean"] - b["mean"]) <= max(a["std"], b["std"])


def _comparison(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    diff = None if a["mean"] is None or b["mean"] is None else a["mean"] - b["mean"]
    spread = None if a["std"] is None or b["std"] is None else max(a["std"], b["std"])
    return {"diff": diff, "spread": spread, "within_noise": within_noise(a, b)}


def _per_class(reports: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [r["last_epoch"]["per_class"] for r in reports if "last_epoch" in r]
    if not rows:
        return {}
    cols = list(zip(*rows))
    return {
        "mean": [sum(c) / len(c) for c in cols],
        "min": [min(c) for c in cols],
        "max": [max(c) for c in cols],
    }


def _row(name: str, reports: list[dict[str, Any]]) -> dict[str, Any]:
    last = [r.get("last_epoch") or {} for r in reports]
    # the same for every seed: the method's (forward, backward) passes, under sam_every
    passes = next((r["passes_per_step"] for r in reports if r.get("passes_per_step")), None)
    best = [r.get("best_test_epoch") or {} for r in reports]
    return {
        "optimizer": name,
        "n": len(reports),
        "seeds": [r["config"]["run"]["seed"] for r in reports],
        "last_epoch": {g: stat([x.get(g) for x in last]) for g in GROUPS},
        "best_test_epoch": {g: stat([x.get(g) for x in best]) for g in (*GROUPS, "epoch")},
        "images_per_second": stat([r.get("images_per_second") for r in reports]),
        "wall_seconds": stat([r.get("wall_seconds") for r in reports]),
        "peak_gpu_memory_mb": stat([r.get("peak_gpu_memory_mb") for r in reports]),
        "passes_per_step": passes,
        "per_class": _per_class(reports),
    }


def summarize(reports: dict[str, list[dict[str, Any]]], record: dict[str, Any]) -> dict[str, Any]:
    """The compare document (``compare.json``) from each optimizer's run reports, in the
    order given (the first is the baseline); ``record`` is the compare's own settings."""
    rows = {name: _row(name, reps) for name, reps in reports.items()}
    names = list(rows)
    baseline = names[0] if names else None
    best: dict[str, str | None] = {}
    for g in GROUPS:
        scored = [(rows[n]["last_epoch"][g]["mean"], n) for n in names]
        scored = [(m, n) for m, n in scored if m is not None]
        best[g] = max(scored, key=lambda t: t[0])[1] if scored else None
    for row in rows.values():
        acc = row["last_epoch"]
        row["vs_baseline"] = {
            g: _comparison(acc[g], rows[baseline]["last_epoch"][g]) if baseline else None
            for g in GROUPS
        }
        row["vs_best"] = {
            g: _comparison(acc[g], rows[b]["last_epoch"][g]) if (b := best[g]) else None
            for g in GROUPS
        }
    first = next((r for reps in reports.values() for r in reps), {})
    return {
        **record,
        "baseline": baseline,
        "shot_preset": first.get("shot_preset"),
        "class_counts": first.get("class_counts"),
        "class_names": first.get("class_names"),
        "accuracy": "test accuracy (fraction) at the last epoch; best_test_epoch is "
        "selected on the test set",
        "noise_rule": NOISE_RULE,
        "best": best,
        "rows": rows,
    }


# ------------------------------------------------------------------ rendering
def _pm(s: dict[str, Any], scale: float = 100.0, digits: int = 2) -> str:
    if s["mean"] is None:
        return "n/a"
    text = f"{scale * s['mean']:.{digits}f}"
    return text + (f" ± {scale * s['std']:.{digits}f}" if s["std"] is not None else "")


def _marks(doc: dict[str, Any], name: str, group: str) -> str:
    row, marks = doc["rows"][name], []
    if name != doc["baseline"] and row["vs_baseline"][group]["within_noise"]:
        marks.append("~b")
    if doc["best"][group] == name:
        marks.append("^")
    elif row["vs_best"][group] and row["vs_best"][group]["within_noise"]:
        marks.append("~^")
    return " ".join(marks)


def _cells(doc: dict[str, Any], name: str, base: str) -> list[str]:
    row = doc["rows"][name]
    acc = [f"{_pm(row['last_epoch'][g])} {_marks(doc, name, g)}".strip() for g in GROUPS]
    passes = row["passes_per_step"]
    return [
        label(name, base),
        str(row["n"]),
        *acc,
        _pm(row["best_test_epoch"]["overall"]),
        _pm(row["images_per_second"], 1.0, 0),
        f"{passes[0]:g} / {passes[1]:g}" if passes else "varies",
        _pm(row["wall_seconds"], 1.0, 1),
        _pm(row["peak_gpu_memory_mb"], 1.0, 0),
    ]


HEADER = [
    "optimizer",
    "n",
    "overall",
    "many",
    "medium",
    "few",
    "best epoch (selected on test): overall",
    "train img/s",
    "passes fwd / bwd",
    "train s",
    "peak GPU MB",
]


def _has_spread(doc: dict[str, Any]) -> bool:
    """Whether any row has a noise estimate (two seeds or more)."""
    return any(r["last_epoch"]["overall"]["n"] >= 2 for r in doc["rows"].values())


def _single_seed_rows(doc: dict[str, Any]) -> list[str]:
    base = doc.get("base_optimizer", "sgd")
    return [label(n, base) for n, r in doc["rows"].items() if r["last_epoch"]["overall"]["n"] < 2]


def verdicts(doc: dict[str, Any]) -> list[str]:
    """One sentence per comparison of overall accuracy: each row vs the baseline, and
    which rows are within noise of the best."""
    base, rows = doc.get("base_optimizer", "sgd"), doc["rows"]
    b = doc["baseline"]
    if b is None:
        return []
    if not _has_spread(doc):
        return [
            "one seed per optimizer (or fewer): no noise estimate exists, so no "
            "difference below can be told from seed-to-seed variation"
        ]
    out = []
    for name, row in rows.items():
        if name == b:
            continue
        c = row["vs_baseline"]["overall"]
        if c["diff"] is None:
            continue
        head = f"{label(name, base)} vs {label(b, base)}: {100 * c['diff']:+.2f} points overall, "
        if c["within_noise"] is None:  # one side has a single seed
            out.append(head + "no noise estimate (a row with one seed)")
            continue
        verdict = "within noise" if c["within_noise"] else "outside the spread"
        out.append(head + f"{verdict} (spread {100 * c['spread']:.2f})")
    top = doc["best"]["overall"]
    if top is not None:
        tied = [
            label(n, base)
            for n, r in rows.items()
            if n != top and r["vs_best"]["overall"]["within_noise"]
        ]
        out.append(
            f"best overall: {label(top, base)}; within noise of it: "
            + (", ".join(tied) if tied else "none")
        )
    single = _single_seed_rows(doc)
    if single:
        out.append(f"one seed only, so never marked ~: {', '.join(single)}")
    return out


def _footer(doc: dict[str, Any]) -> list[str]:
    base = label(doc["baseline"], doc.get("base_optimizer", "sgd")) if doc["baseline"] else ""
    lines = [
        f"test accuracy (%) at the last epoch, mean ± std over seeds (n seeds); many/medium/few "
        f"thresholds: preset {doc.get('shot_preset')!r}",
        f"~b: within noise of the baseline ({base}); ^: best mean of the column; "
        "~^: within noise of that best"
        if _has_spread(doc)
        else "^: best mean of the column; one seed: no noise estimate, nothing marked ~",
        NOISE_RULE,
        "best epoch (selected on test): the epoch with the highest test accuracy, as the "
        "published code reports; optimistic, not a held-out choice",
        f"train img/s: mean over epochs of the training throughput, with "
        f"{doc.get('parallel', 1)} run(s) at once; train s: training loop time per run; "
        f"{doc.get('threads')} CPU thread(s) per run",
    ]
    return lines


def markdown(doc: dict[str, Any]) -> str:
    """``compare.md``: the table, its footnotes and the verdicts."""
    base = doc.get("base_optimizer", "sgd")
    title = f"# focalsam compare: {doc.get('preset') or 'config'}, seeds {doc.get('seeds')}"
    lines = [title, "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for name in doc["rows"]:
        lines.append("| " + " | ".join(_cells(doc, name, base)) + " |")
    lines += [""] + [f"- {line}" for line in _footer(doc)] + [""]
    lines += [f"- {v}" for v in verdicts(doc)]
    return "\n".join(lines) + "\n"


def terminal(doc: dict[str, Any]) -> str:
    """The table for the terminal: the accuracy columns, throughput and passes."""
    base = doc.get("base_optimizer", "sgd")
    keep = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    header = ["optimizer", "n", *GROUPS, "best epoch*", "img/s", "passes", "train s"]
    table = [header] + [[_cells(doc, n, base)[i] for i in keep] for n in doc["rows"]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    text = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in table
    ]
    foot = _footer(doc)
    foot[3] = foot[3].replace(
        "best epoch (selected on test)", "best epoch*: overall at the best epoch (selected on test)"
    )
    return "\n".join([foot[0], *text, *foot[1:], *verdicts(doc)])
