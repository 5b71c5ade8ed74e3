"""``corruptions.png``: error per corruption and against severity, per shot group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

GROUPS = ("overall", "many", "medium", "few")


def plot_corruptions(doc: dict[str, Any], path: Path) -> Path:
    """Left: mean error over severities per corruption, one bar per group. Right: mean
    error over corruptions against severity, one line per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in doc["cells"] if c["severity"] > 0]
    names = list(dict.fromkeys(c["corruption"] for c in cells))
    severities = sorted({c["severity"] for c in cells})
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(max(8.0, 0.7 * len(names) + 5), 4.2), gridspec_kw={"width_ratios": [3, 1]}
    )
    width = 0.8 / len(GROUPS)
    for k, group in enumerate(GROUPS):
        errors = [np.nanmean([1 - c[group] for c in cells if c["corruption"] == n]) for n in names]
        left.bar(
            np.arange(len(names)) + (k - 1.5) * width, [100 * e for e in errors], width, label=group
        )
        by_severity = [
            np.nanmean([1 - c[group] for c in cells if c["severity"] == s]) for s in severities
        ]
        right.plot(severities, [100 * e for e in by_severity], marker="o", label=group)
    clean = [c for c in doc["cells"] if c["severity"] == 0]
    if clean:
        left.axhline(100 * clean[0]["error"], color="k", lw=0.8, ls="--", label="clean (overall)")
    left.set_xticks(np.arange(len(names)), names, rotation=45, ha="right", fontsize=8)
    left.set_ylabel("test error (%), mean over severities")
    left.legend(fontsize=8)
    left.grid(axis="y", alpha=0.3)
    right.set_xlabel("severity")
    right.set_ylabel("mean error (%)")
    right.set_xticks(severities)
    right.grid(alpha=0.3)
    title = f"{doc['optimizer']} on {doc['dataset']}: corruption error by shot group"
    if doc.get("skipped"):
        title += f" ({len(doc['skipped'])} corruptions skipped, see corruptions.json)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
