"""Helpers of ``benchmarks/gpu_suite.sh``: the eval cost of a run, the training summaries
(seconds per epoch, projected 200-epoch wall time) and the final gpu_suite.json/.md.

    python benchmarks/suite_tools.py train-summary RUN_DIR WALL_S [--device cuda]
    python benchmarks/suite_tools.py compare-summary OUT_DIR WALL_S
    python benchmarks/suite_tools.py report DIR [--smoke]

Each part of the suite leaves ``DIR/parts/NAME.status`` (one line: ``ok``, ``failed
...``, ``timeout ...`` or ``skipped REASON``), ``NAME.json`` (its result) and
``NAME.log``; ``report`` gathers them into ``DIR/gpu_suite.json`` (every section with
``status``, ``seconds`` and ``result`` or ``reason``) and ``DIR/gpu_suite.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

SECTIONS = (
    ("checks", "equivalence checks: compiled / captured / sync-free vs eager"),
    ("step_cost_b64", "ResNet-32 step cost, batch 64"),
    ("step_cost_b512", "ResNet-32 step cost, batch 512"),
    ("vit_b16", "CLIP ViT-B/16 + AdaptFormer step cost (bf16, batch 128)"),
    ("loader", "CIFAR-10-LT loader: DeviceLoader vs DataLoader"),
    ("train", "5 epochs of cifar10-lt-r100 (Focal-SAM), projected 200 epochs"),
    ("compare", "focalsam compare, focal_sam x 4 seeds, --parallel 4, 5 epochs"),
)
FULL_EPOCHS = 200


def epoch_seconds(run_dir: Path) -> list[float]:
    """``epoch_seconds`` of every epoch in the run's ``metrics.jsonl``."""
    rows = [
        json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line
    ]
    return [float(r["epoch_seconds"]) for r in rows if r.get("epoch_seconds") is not None]


def steady(seconds: list[float]) -> float:
    """Median epoch time without the first epoch (allocator, cudnn autotune, compile)."""
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def eval_cost(run_dir: str, device: str | None) -> dict[str, Any]:
    """Seconds of one test-set evaluation of the run's last checkpoint (the second of
    two, in this process: no start-up or first-call cost)."""
    from focalsam.train.epoch import evaluate
    from focalsam.train.evaluation import load_run

    loaded = load_run(run_dir, "last", device)
    try:
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            result = evaluate(
                loaded.model, loaded.data.test, loaded.data.new_metric(), loaded.rt.autocast
            )
            times.append(time.perf_counter() - t0)
    finally:
        loaded.rt.close()
    return {
        "eval_seconds": round(times[-1], 3),
        "first_eval_seconds": round(times[0], 3),
        "test_overall": result.get("overall"),
    }


def train_summary(run_dir: Path, wall: float, device: str | None) -> dict[str, Any]:
    """Seconds per epoch and the projected wall time of the full 200-epoch run:
    ``steady epoch time x 200 + evaluations x eval time`` (eval every 10 epochs)."""
    seconds = epoch_seconds(run_dir)
    out: dict[str, Any] = {
        "epochs": len(seconds),
        "epoch_seconds": [round(s, 3) for s in seconds],
        "steady_epoch_seconds": round(steady(seconds), 3),
        "process_wall_seconds": round(wall, 1),
    }
    evals = FULL_EPOCHS // 10
    ev = eval_cost(str(run_dir), device)
    eval_s = float(ev.get("eval_seconds", 0.0))
    out.update(ev)
    out["evaluations_in_200_epochs"] = evals
    out["projected_200_epoch_seconds"] = round(steady(seconds) * FULL_EPOCHS + evals * eval_s, 1)
    out["projected_200_epoch_minutes"] = round(out["projected_200_epoch_seconds"] / 60, 2)
    return out


def compare_summary(out_dir: Path, wall: float) -> dict[str, Any]:
    """Per run: steady seconds per epoch; the whole compare's wall time; compare.json's
    summary keys when it was written."""
    runs = {}
    for metrics in sorted(out_dir.glob("*/metrics.jsonl")):
        seconds = epoch_seconds(metrics.parent)
        runs[metrics.parent.name] = {
            "epochs": len(seconds),
            "steady_epoch_seconds": round(steady(seconds), 3),
        }
    out: dict[str, Any] = {"compare_wall_seconds": round(wall, 1), "runs": runs}
    if runs:
        per = [r["steady_epoch_seconds"] for r in runs.values()]
        out["mean_steady_epoch_seconds"] = round(statistics.mean(per), 3)
        out["projected_200_epoch_minutes_per_run"] = round(
            statistics.mean(per) * FULL_EPOCHS / 60, 2
        )
    doc = out_dir / "compare.json"
    if doc.is_file():
        out["compare_json"] = str(doc)
    return out


def _part(parts: Path, name: str) -> dict[str, Any]:
    status_file = parts / f"{name}.status"
    if not status_file.is_file():
        return {"status": "skipped", "reason": "not run (the suite stopped before it)"}
    line = status_file.read_text().strip()
    word, _, rest = line.partition(" ")
    section: dict[str, Any] = {}
    seconds = parts / f"{name}.seconds"
    if seconds.is_file():
        section["seconds"] = float(seconds.read_text().strip() or 0)
    if word == "skipped":
        return {"status": "skipped", "reason": rest or "no reason given", **section}
    result_file = parts / f"{name}.json"
    result: Any = None
    if result_file.is_file() and result_file.stat().st_size:
        try:
            result = json.loads(result_file.read_text())
        except json.JSONDecodeError as exc:
            word, rest = "failed", f"unreadable result ({exc})"
    if (
        word == "ok"
        and isinstance(result, dict)
        and result.get("skipped")
        and not result.get("by_batch")
    ):
        return {"status": "skipped", "reason": str(result["skipped"]), **section}
    if word == "ok" and result is None:
        word, rest = "failed", "no result written"
    if word != "ok":
        log = parts / f"{name}.log"
        tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.is_file() else []
        failed = {"status": "failed", "reason": rest or word, "log_tail": tail, **section}
        if isinstance(result, dict):
            failed["result"] = result
        return failed
    return {"status": "ok", "result": result, **section}


def report(out: Path, smoke: bool) -> dict[str, Any]:
    parts = out / "parts"
    env = json.loads((parts / "env.json").read_text()) if (parts / "env.json").is_file() else {}
    doc: dict[str, Any] = {"smoke": smoke, **env, "sections": {}}
    for name, _ in SECTIONS:
        doc["sections"][name] = _part(parts, name)
    (out / "gpu_suite.json").write_text(json.dumps(doc, indent=2))
    (out / "gpu_suite.md").write_text(markdown(doc))
    return doc


def _headline(name: str, result: dict[str, Any]) -> str:
    """One line of the figures that matter most in a section."""
    if name == "checks":
        return "; ".join(
            f"{k}: {'skip' if 'skipped' in v else ('PASS' if v.get('ok') else 'FAIL')}"
            + (f" ({v['max_abs_diff']:.2g})" if "max_abs_diff" in v else "")
            for k, v in result.items()
            if isinstance(v, dict) and k.endswith(("_eager", "_strict"))
        )
    if name.startswith(("step_cost", "vit")):
        bits = []
        for size, b in result.get("by_batch", {}).items():
            ms = b.get("median_ms", {})
            for mode, row in ms.items():
                if "focal_sam" in row:
                    bits.append(
                        f"b{size} {mode}: Focal-SAM {row['focal_sam']:.2f} ms"
                        f" ({b.get('ratio_to_sgd', {}).get(mode, {}).get('focal_sam', float('nan')):.2f}x SGD,"
                        f" {b.get('focal_sam_over_sam', {}).get(mode, float('nan')):.2f}x SAM)"
                    )
            if "syncfree_over_strict" in b:
                bits.append(f"sync-free/strict {b['syncfree_over_strict']:.3f}")
        if "trainable" in result:
            bits.append(f"trainable {100 * result['trainable']['fraction']:.2f}%")
        return "; ".join(bits)
    if name == "loader":
        return f"{result.get('device_loader_images_per_s')} vs {result.get('baseline_images_per_s')} images/s ({result.get('speedup')}x)"
    if name == "train":
        return (
            f"{result.get('steady_epoch_seconds')} s/epoch, projected 200 epochs "
            f"{result.get('projected_200_epoch_minutes')} min"
        )
    if name == "compare":
        return (
            f"{len(result.get('runs', {}))} runs in {result.get('compare_wall_seconds')} s, "
            f"{result.get('mean_steady_epoch_seconds')} s/epoch each"
        )
    return ""


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"# GPU suite{' (smoke)' if doc.get('smoke') else ''}: {doc.get('card', 'unknown device')}",
        "",
        f"torch {doc.get('torch', '?')}, CUDA {doc.get('cuda', '?')}, {doc.get('date', '')}",
        "",
        "| section | status | seconds | figures |",
        "|---|---|---|---|",
    ]
    for name, title in SECTIONS:
        s = doc["sections"][name]
        figures = _headline(name, s["result"]) if s["status"] == "ok" else s.get("reason", "")
        lines.append(f"| {title} | {s['status']} | {s.get('seconds', '')} | {figures} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train-summary")
    t.add_argument("run_dir", type=Path)
    t.add_argument("wall", type=float)
    t.add_argument("--device", default=None, help="where to time the evaluation")
    c = sub.add_parser("compare-summary")
    c.add_argument("out_dir", type=Path)
    c.add_argument("wall", type=float)
    r = sub.add_parser("report")
    r.add_argument("out", type=Path)
    r.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "train-summary":
        json.dump(train_summary(args.run_dir, args.wall, args.device), sys.stdout)
    elif args.cmd == "compare-summary":
        json.dump(compare_summary(args.out_dir, args.wall), sys.stdout)
    else:
        doc = report(args.out, args.smoke)
        for name, s in doc["sections"].items():
            print(f"{name:<16} {s['status']:<8} {s.get('reason', '')}")


if __name__ == "__main__":
    main()
