"""The final figures of a run, and their one-table summary."""

from __future__ import annotations

import contextlib
import math
from typing import Any

GROUPS = ("overall", "many", "medium", "few")


def build_report(
    history: list[dict[str, Any]],
    best: dict[str, Any] | None,
    *,
    run_dir: str,
    method: str,
    shot_preset: str,
    select: str,
    class_counts: list[int],
    config: dict[str, Any],
    class_names: list[str] | None = None,
    passes_per_step: tuple[float, float] | None = None,
    peak_gpu_memory_mb: float | None = None,
) -> dict[str, Any]:
    """Last epoch and best test epoch, each labelled; ``selected`` is the one ``select`` names.

    Costs: ``wall_seconds`` = sum of the epochs' training-loop seconds (evaluation and
    checkpoints excluded), ``images_per_second`` = mean over epochs of each epoch's
    training throughput, ``passes_per_step`` = (forward, backward) passes of the method
    (None where it depends on the batch), ``peak_gpu_memory_mb`` (None off the GPU).
    """
    evaluated = [r for r in history if "test_overall" in r]
    last = evaluated[-1] if evaluated else None
    throughputs = [r["images_per_second"] for r in history if "images_per_second" in r]
    out: dict[str, Any] = {
        "run_dir": run_dir,
        "optimizer": method,
        "shot_preset": shot_preset,
        "select": select,
        "class_counts": class_counts,
        "class_names": class_names,
        "seconds_per_epoch": sum(r["epoch_seconds"] for r in history) / max(1, len(history)),
        "wall_seconds": sum(r["epoch_seconds"] for r in history),
        "images_per_second": sum(throughputs) / len(throughputs) if throughputs else None,
        "passes_per_step": list(passes_per_step) if passes_per_step is not None else None,
        "peak_gpu_memory_mb": peak_gpu_memory_mb,
        "config": config,
    }
    if last is not None:
        out["last_epoch"] = {
            "epoch": last["epoch"],
            **{k: last[f"test_{k}"] for k in GROUPS},
            "per_class": last["test_per_class"],
        }
    if best is not None:
        out["best_test_epoch"] = {k: v for k, v in best.items() if k != "preset"}
    out["selected"] = out.get("best_test_epoch" if select == "best" else "last_epoch")
    return out


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def pct(value: Any, width: int = 6) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a".rjust(width)
    return f"{100 * value:{width}.2f}"


def summary_table(rows: dict[str, dict[str, Any]], shot_preset: str, select: str) -> str:
    """Test accuracy per group, one row per named report."""
    from focalsam.metrics import shot_thresholds

    counts = next((r["class_counts"] for r in rows.values() if r.get("class_counts")), None)
    named = f"preset {shot_preset!r}"
    with contextlib.suppress(ValueError):  # a relative preset without counts to scale it
        named += f" ({shot_thresholds(shot_preset, counts).describe().split(': ', 1)[1]})"
    empty = sorted(
        {g for rep in rows.values() for g in GROUPS[1:] if _is_missing(rep["selected"].get(g))}
    )
    note = f" (no {', '.join(empty)}-shot classes: n/a)" if empty else ""
    lines = [
        f"test accuracy (%), model: {select}; many/medium/few thresholds: {named}{note}",
        f"{'':<24}{'overall':>8}{'many':>8}{'medium':>8}{'few':>8}{'s/epoch':>9}",
    ]
    for name, rep in rows.items():
        r = rep["selected"]
        spe = rep.get("seconds_per_epoch")
        cells = "".join(f"{pct(r[k]):>8}" for k in GROUPS)
        lines.append(f"{name:<24}{cells}{'' if spe is None else f'{spe:9.2f}'}")
    return "\n".join(lines)


def epoch_line(row: dict[str, Any], total_epochs: int) -> str:
    msg = (
        f"epoch {row['epoch']:>4}/{total_epochs}  loss {row['train_loss']:.4f}  "
        f"acc {row['train_acc']:.3f}  lr {row['lr']:.4g}  {row['images_per_second']:.0f} img/s"
    )
    if "test_overall" in row:
        msg += "  test " + "  ".join(f"{k} {pct(row[f'test_{k}'], 5)}" for k in GROUPS)
    return msg
