"""The ``focalsam`` command: ``train``, ``eval``, ``presets``.

``focalsam train`` with no arguments runs the offline demo: the base
optimizer, SAM and Focal-SAM on long-tailed digits, side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from focalsam.train.config import FIELDS, ConfigError, TrainConfig, make_config

EPILOG = """examples:
  focalsam train                                   # offline demo: SGD vs SAM vs Focal-SAM
  focalsam train --preset cifar10-lt-r100 --data-root data
  focalsam train --preset cifar100-lt-r100 --optimizer sam --epochs 10
  focalsam train --config my.yaml lr=0.05 loss_options.tau=1.5
  focalsam train --resume runs/cifar10-lt-r100-focal_sam-20260101-120000
  torchrun --nproc_per_node 4 -m focalsam train --preset cifar10-lt-r100
"""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="focalsam",
        description="Focal-SAM and other sharpness-aware optimizers for long-tailed classification.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train a model (no arguments: the offline demo)",
        description="Train one experiment. Settings come from the schema defaults, then a "
        "--preset, then a --config YAML file, then the flags and key=value overrides below.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--preset", help="a published recipe (see `focalsam presets`)")
    train.add_argument("--config", metavar="YAML", help="a YAML file of settings")
    train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint"
    )
    train.add_argument(
        "--print-config", action="store_true", help="print the merged config and exit"
    )
    train.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="any setting, e.g. lr=0.05"
    )
    group = train.add_argument_group("settings (each is also a KEY=VALUE key)")
    for name, f in FIELDS.items():
        if name in ("preset", "loss_options"):
            continue
        default = f.default if f.default is not f.default_factory else None  # type: ignore[comparison-overlap]
        shown = f"default: {default}" if not isinstance(default, type(None)) else "default: none"
        group.add_argument(
            _flag(name), dest=f"set_{name}", metavar="V", default=argparse.SUPPRESS,
            help=f"{f.metadata.get('help', '')} ({shown})",
        )  # fmt: skip

    ev = sub.add_parser("eval", help="re-evaluate a run's checkpoint on its test set")
    ev.add_argument("run_dir", help="a run directory (holds config.yaml and last.pt)")
    ev.add_argument("--checkpoint", default="last", help="last | best | a .pt file")
    ev.add_argument("--device", default=None, help="override the run's device")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")

    sub.add_parser("presets", help="list the presets")
    return parser


def _overrides(args: argparse.Namespace) -> list[str]:
    out = [f"{k[4:]}={v}" for k, v in vars(args).items() if k.startswith("set_")]
    return out + list(args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from focalsam.train import Trainer, get_preset

    overrides = _overrides(args)
    if args.resume and not (args.preset or args.config or overrides):
        cfg = _config_of_run(Path(args.resume))
    elif not (args.preset or args.config or overrides or args.resume):
        return run_demo()
    else:
        base = (
            get_preset(args.preset)
            if args.preset
            else get_preset("demo")
            if not args.config
            else None
        )
        cfg = make_config(base, args.config, overrides)
    if args.print_config:
        import yaml

        from focalsam.train.config import config_to_dict

        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    with Trainer(cfg, resume=args.resume) as trainer:
        report = trainer.fit()
    if report.get("selected"):
        print(_summary_table({cfg.optimizer: report}, report["shot_preset"], cfg.select))
    return 0


def _config_of_run(run_dir: Path) -> TrainConfig:
    path = run_dir / "config.yaml" if run_dir.is_dir() else run_dir.parent / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} not found: is {run_dir} a focalsam run directory?")
    cfg = make_config(None, path)
    cfg.run_dir = str(path.parent)
    return cfg


def cmd_eval(args: argparse.Namespace) -> int:
    from focalsam.train import Trainer, load_checkpoint

    run_dir = Path(args.run_dir)
    cfg = _config_of_run(run_dir)
    if args.device:
        cfg.device = args.device
    ckpt = Path(args.checkpoint)
    if args.checkpoint in ("last", "best"):
        ckpt = run_dir / f"{args.checkpoint}.pt"
    with Trainer(cfg, log=lambda _m: None) as trainer:
        payload = load_checkpoint(ckpt, map_location=trainer.device)
        trainer.model.load_state_dict(payload["model"])
        result = trainer.evaluate()
    result = {"checkpoint": str(ckpt), "epoch": payload.get("epoch"), **result}
    if args.json:
        print(json.dumps(result))
    else:
        label = f"{ckpt.name}, epoch {payload.get('epoch')}"
        print(_summary_table({label: {"selected": result}}, trainer.data.shot_preset, "checkpoint"))
    return 0


def cmd_presets() -> int:
    from focalsam.train.presets import DESCRIPTIONS, list_presets

    width = max(len(n) for n in list_presets())
    for name in list_presets():
        print(f"{name:<{width}}  {DESCRIPTIONS.get(name, '')}")
    print("\nwith any of them: --optimizer sgd|sam|asam|imbsam|focal_sam (the comparison rows)")
    return 0


def _pct(v: Any) -> str:
    return "   n/a" if v is None or v != v else f"{100 * v:6.2f}"


def _summary_table(rows: dict[str, dict[str, Any]], preset: str, select: str) -> str:
    lines = [
        f"test accuracy (%), model: {select}; many/medium/few thresholds: preset {preset!r}",
        f"{'':<24}{'overall':>8}{'many':>8}{'medium':>8}{'few':>8}{'s/epoch':>9}",
    ]
    for name, rep in rows.items():
        r = rep["selected"]
        spe = rep.get("seconds_per_epoch")
        lines.append(
            f"{name:<24}{_pct(r['overall']):>8}{_pct(r['many']):>8}{_pct(r['medium']):>8}"
            f"{_pct(r['few']):>8}{'' if spe is None else f'{spe:9.2f}'}"
        )
    return "\n".join(lines)


def run_demo(epochs: int | None = None, root: Path | None = None) -> int:
    """The offline demo: plain SGD, SAM and Focal-SAM on long-tailed digits."""
    from focalsam.train import Trainer, get_preset

    root = root or Path("runs") / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    print(f"focalsam demo: SGD vs SAM vs Focal-SAM on long-tailed digits (offline), in {root}")
    reports: dict[str, dict[str, Any]] = {}
    labels = {"sgd": "SGD", "sam": "SAM", "focal_sam": "Focal-SAM"}
    t0 = time.perf_counter()
    for opt in labels:
        overrides: dict[str, Any] = {
            "optimizer": opt,
            "run_dir": str(root / opt),
            "progress": False,
        }
        if epochs is not None:
            overrides["epochs"] = epochs
        cfg = make_config(get_preset("demo"), overrides=overrides)
        with Trainer(cfg, log=lambda _m: None) as trainer:
            reports[labels[opt]] = trainer.fit()
        print(f"  {labels[opt]:<10} done ({reports[labels[opt]]['seconds_per_epoch']:.2f} s/epoch)")
    any_report = next(iter(reports.values()))
    print(_summary_table(reports, any_report["shot_preset"], "last epoch"))
    plot = plot_per_class(reports, root / "per_class_accuracy.png")
    print(f"per-class accuracy against class size: {plot}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


def plot_per_class(reports: dict[str, dict[str, Any]], path: Path) -> Path:
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


def main(argv: Sequence[str] | None = None) -> int:
    from focalsam.train import CheckpointError, TrainingDiverged, TrainingInterrupted

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "presets":
            return cmd_presets()
        parser.print_help()
        return 2
    except (ConfigError, CheckpointError, FileNotFoundError, ImportError) as exc:
        print(f"focalsam: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"focalsam: training stopped: {exc}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:
        print(f"focalsam: {exc}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
