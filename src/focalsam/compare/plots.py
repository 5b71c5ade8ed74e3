"""The compare's figures, drawn from ``compare.json`` alone (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from focalsam.compare.table import label


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path


def accuracy_vs_throughput(doc: dict[str, Any], path: Path) -> Path:
    """The paper's Figure 1(b): overall test accuracy (last epoch) against training
    images per second, one point per optimizer, error bars = std over seeds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    base = doc.get("base_optimizer", "sgd")
    for name, row in doc["rows"].items():
        x, y = row["images_per_second"], row["last_epoch"]["overall"]
        if x["mean"] is None or y["mean"] is None:
            continue
        ax.errorbar(
            x["mean"],
            100 * y["mean"],
            xerr=x["std"] or 0.0,
            yerr=100 * (y["std"] or 0.0),
            fmt="o",
            capsize=4,
        )
        ax.annotate(
            f"{label(name, base)} (n={row['n']})",
            (x["mean"], 100 * y["mean"]),
            textcoords="offset points",
            xytext=(6, 6),
        )
    ax.set_xlabel("training images per second")
    ax.set_ylabel("overall test accuracy, last epoch (%)")
    ax.set_title("Accuracy against training throughput (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


#: classes up to which the per-class plot names each class on its axis
MAX_NAMED_CLASSES = 30


def per_class(doc: dict[str, Any], path: Path) -> Path:
    """Per-class test accuracy (last epoch) against training images of the class, log x
    from head to tail; a line per optimizer = the mean over seeds, the band = min..max."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    counts = doc.get("class_counts") or []
    order = sorted(range(len(counts)), key=lambda i: -counts[i])
    xs = [counts[i] for i in order]
    base = doc.get("base_optimizer", "sgd")
    for name, row in doc["rows"].items():
        pc = row["per_class"]
        if not pc:
            continue
        mean = [100 * pc["mean"][i] for i in order]
        (line,) = ax.plot(xs, mean, marker="o", label=f"{label(name, base)} (n={row['n']})")
        low = [100 * pc["min"][i] for i in order]
        high = [100 * pc["max"][i] for i in order]
        ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    ax.invert_xaxis()
    names = doc.get("class_names") or []
    if names and len(names) == len(counts) and len(names) <= MAX_NAMED_CLASSES:
        ax.set_xticks(xs, [f"{names[i]} ({counts[i]})" for i in order], rotation=60, fontsize=7)
        ax.minorticks_off()
    ax.set_xlabel("training images of the class (log scale, head to tail)")
    ax.set_ylabel("test accuracy of the class (%)")
    ax.set_title("Per-class accuracy: mean over seeds, band = min..max")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)
