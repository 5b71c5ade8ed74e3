"""The offline demo: plain SGD, SAM and Focal-SAM on long-tailed digits, side by side."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from focalsam.train.config import make_config
from focalsam.train.report import summary_table
from focalsam.train.trainer import Trainer

LABELS = {"plain": "SGD", "sam": "SAM", "focal_sam": "Focal-SAM"}


def run_demo(epochs: int | None = None, root: Path | None = None) -> int:
    """Train the demo preset once per optimizer and print the table; a plot in ``root``."""
    root = root or Path("runs") / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    print(f"focalsam demo: SGD vs SAM vs Focal-SAM on long-tailed digits (offline), in {root}")
    reports: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for opt, label in LABELS.items():
        overrides: dict[str, Any] = {
            "optimizer": opt,
            "run_dir": str(root / opt),
            "progress": False,
        }
        if epochs is not None:
            overrides["epochs"] = epochs
        cfg = make_config("demo", overrides=overrides)
        with Trainer(cfg, log=lambda _m: None) as trainer:
            reports[label] = trainer.fit()
        print(f"  {label:<10} done ({reports[label]['seconds_per_epoch']:.2f} s/epoch)")
    any_report = next(iter(reports.values()))
    print(summary_table(reports, any_report["shot_preset"], "last epoch"))
    plot = plot_per_class(reports, root / "per_class_accuracy.png")
    print(f"per-class accuracy against class size: {plot}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


def plot_per_class(reports: dict[str, dict[str, Any]], path: Path) -> Path:
    """Per-class test accuracy against training images per class (log x, head to tail)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, rep in reports.items():
        counts = rep["class_counts"]
        acc = [100 * a for a in rep["selected"]["per_class"]]
        order = sorted(range(len(counts)), key=lambda i: -counts[i])
        ax.plot([counts[i] for i in order], [acc[i] for i in order], marker="o", label=name)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("training images of the class (log scale, head to tail)")
    ax.set_ylabel("test accuracy of the class (%)")
    ax.set_title("Per-class accuracy against class size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
