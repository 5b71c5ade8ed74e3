"""The ``focalsam`` command: ``train``, ``compare``, ``demo``, ``eval``, ``analyze``,
``presets``.

A bare ``focalsam train`` (or ``focalsam demo``) runs the offline demo, a small
compare. Bad
input of any kind is one line on stderr and exit code 2, with nothing written;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from focalsam.errors import InputError, Interrupted, RunError, TrainingDiverged, UsageError
from focalsam.train.config import SHORT_KEYS, leaf_fields

#: the settings that get a flag of their own (every key also works as KEY=VALUE)
FLAGS = (
    "dataset",
    "data_root",
    "download",
    "imbalance_ratio",
    "train_list",
    "test_list",
    "num_workers",
    "shot_preset",
    "model",
    "loss",
    "optimizer",
    "base_optimizer",
    "lr",
    "rho",
    "epochs",
    "batch_size",
    "eval_every",
    "select",
    "precision",
    "device",
    "seed",
    "run_dir",
    "progress",
    "tensorboard",
    "clip_weights",
    "tuning",
    "accum_steps",
    "compile",
)

EPILOG = """examples:
  focalsam train                                   # offline demo: SGD vs SAM vs Focal-SAM, 3 seeds
  focalsam train --preset cifar10-lt-r100 --data-root data
  focalsam train --preset cifar100-lt-r100 --optimizer sam --epochs 10
  focalsam train --config my.yaml lr=0.05 loss.tau=1.5 optim.focal_sam.gamma=2
  focalsam train --resume runs/cifar10-lt-r100-focal_sam-20260101-120000 --epochs 300
  torchrun --nproc_per_node 4 -m focalsam train --preset cifar10-lt-r100
  focalsam compare --preset cifar10-lt-r100 --optimizers sgd,sam,imbsam,ccsam,focal_sam --seeds 0,1,2

layering: schema defaults, then the preset (--preset, or the YAML's preset: key),
then the YAML file, then flags and KEY=VALUE. --resume takes the run's own config;
it may change only train.epochs, run.device, run.progress, run.tensorboard,
data.num_workers, data.root and data.verify_images.
"""


def _default(f: Any) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _keys_help() -> str:
    short = {v: k for k, v in SHORT_KEYS.items()}
    lines = ["every setting (KEY=VALUE; the short name in brackets works too):"]
    for key, f in leaf_fields().items():
        alias = f" [{short[key]}]" if key in short and short[key] != key else ""
        help_ = f.metadata.get("help", "")
        lines.append(f"  {key}{alias} = {_default(f)!r}" + (f"  {help_}" if help_ else ""))
    return "\n".join(lines)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (a :class:`UsageError`, exit code 2)
    instead of a usage block; ``--help`` still prints the whole help."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def looks_like_override(item: str) -> bool:
    """``KEY=VALUE`` with a key of letters, digits, ``_``, ``-`` and dots."""
    key, sep, _ = item.partition("=")
    return bool(sep) and bool(re.fullmatch(r"[A-Za-z_][\w.\-]*", key))


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> Any:
    """``parser.parse_args`` where ``KEY=VALUE`` overrides may come before or after flags:
    the ones argparse leaves over join ``args.overrides`` (in their order); anything else
    left over is a one-line usage error."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        overrides = [e for e in extra if looks_like_override(e)]
        if not hasattr(args, "overrides") or len(overrides) != len(extra):
            unknown = [e for e in extra if e not in overrides] or extra
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.overrides = [*args.overrides, *overrides]
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="focalsam",
        description="Focal-SAM and other sharpness-aware optimizers for long-tailed classification.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser(
        "train",
        help="train a model (no arguments: the offline demo)",
        description="Train one experiment.",
        epilog=EPILOG + "\n" + _keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--preset", help="a published recipe (see `focalsam presets`)")
    train.add_argument("--config", metavar="YAML", help="a YAML file of settings")
    train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint"
    )
    train.add_argument("--print-config", action="store_true", help="print the config and exit")
    train.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="any setting")
    group = train.add_argument_group("settings (each is also a KEY=VALUE key)")
    fields = leaf_fields()
    for name in FLAGS:
        key = SHORT_KEYS[name]
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=f"set_{name}",
            metavar="V",
            default=argparse.SUPPRESS,
            help=f"{fields[key].metadata.get('help', '')} ({key}, default {_default(fields[key])!r})",
        )

    _compare_parser(sub)
    sub.add_parser(
        "demo", help="the offline demo: SGD vs SAM vs Focal-SAM on long-tailed digits, 3 seeds"
    )
    ev = sub.add_parser("eval", help="evaluate a run's checkpoint on its test set (writes nothing)")
    ev.add_argument("run_dir", help="a run directory (holds config.yaml and last.pt)")
    ev.add_argument("--checkpoint", default="last", help="last | best | a .pt file")
    ev.add_argument("--device", default=None, help="where to evaluate (the run is not changed)")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    rob = ev.add_argument_group("corruptions (writes only into --out)")
    rob.add_argument(
        "--corruptions",
        metavar="generate|DIR",
        help="generate (in-memory test sets) or a CIFAR-10-C / ImageNet-C folder",
    )
    rob.add_argument("--out", help="folder for corruptions.json and corruptions.png")
    rob.add_argument("--severities", default="1-5", help="1-5, or a list like 0,3 (0: clean)")
    rob.add_argument("--corruption-list", help="comma list (default: the 15 standard ones)")
    rob.add_argument("--corruption-seed", type=int, default=0, help="seed of generated ones")
    rob.add_argument("--cache", help="cache of generated images (default: OUT/cache)")
    ev.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    sub.add_parser("presets", help="list the presets and the optimizers")
    _analyze_parser(sub)
    _own_data_parsers(sub)
    return parser


def _own_data_parsers(sub: Any) -> None:
    """``predict``, ``export`` and ``make-example``: using a run on your own images."""
    hidden_debug = {"action": "store_true", "default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
    pr = sub.add_parser(
        "predict",
        help="classify new images with a trained run (writes only --out)",
        description="One row per image: path, class, index, top-k classes and probabilities "
        "(CSV or JSONL by --out's extension). Unreadable files get an error row.",
    )
    pr.add_argument("run_dir", help="a run directory (focalsam train)")
    pr.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders or list files")
    pr.add_argument("--out", required=True, help="a .csv or .jsonl file (not inside the run)")
    pr.add_argument("--top-k", type=int, default=5, help="classes per row (default 5)")
    pr.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    pr.add_argument("--device", default=None, help="where to run the model (default: the run's)")
    pr.add_argument("--checkpoint", default="last", help="last | best | a .pt file")
    pr.add_argument("--force", action="store_true", help="replace an existing --out")
    pr.add_argument("--debug", **hidden_debug)
    ex = sub.add_parser(
        "export",
        help="write a run's model as TorchScript, ONNX or safetensors, with a sidecar JSON",
        description="A standalone model (LoRA merged) and FILE.json: class names, input size, "
        "mean/std and the run's config hash.",
    )
    ex.add_argument("run_dir", help="a run directory (focalsam train)")
    ex.add_argument("--format", required=True, choices=("torchscript", "onnx", "safetensors"))
    ex.add_argument("--out", required=True, help="the model file (its sidecar: OUT.json)")
    ex.add_argument("--checkpoint", default="last", help="last | best | a .pt file")
    ex.add_argument("--force", action="store_true", help="replace an existing --out")
    ex.add_argument("--debug", **hidden_debug)
    mk = sub.add_parser(
        "make-example",
        help="write a small long-tailed image folder (handwritten digits) to try your own data",
    )
    mk.add_argument("folder", help="a new folder (DIR/train/<class>/, DIR/test/<class>/)")
    mk.add_argument("--imbalance-ratio", type=float, default=20.0, help="n_max / n_min")
    mk.add_argument("--size", type=int, default=32, help="image side in px (default 32)")
    mk.add_argument("--test-per-class", type=int, default=20, help="test images per class")
    mk.add_argument("--no-test", action="store_true", help="no test folder (train splits one off)")
    mk.add_argument("--debug", **hidden_debug)


def cmd_predict(args: argparse.Namespace) -> int:
    from focalsam.predict import predict

    result = predict(
        args.run_dir,
        args.inputs,
        args.out,
        top_k=args.top_k,
        batch_size=args.batch_size,
        device=args.device,
        checkpoint=args.checkpoint,
        force=args.force,
    )
    read = len(result.rows) - result.errors
    note = f"; {result.errors} file(s) could not be read (see the error column)"
    print(f"predicted {read} image(s) into {args.out}" + (note if result.errors else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from focalsam.export import export_run, sidecar_path

    side = export_run(
        args.run_dir, args.format, args.out, checkpoint=args.checkpoint, force=args.force
    )
    print(
        f"wrote {args.out} ({args.format}, {side['num_classes']} classes, "
        f"{side['input']['image_size']} px) and {sidecar_path(Path(args.out))}"
    )
    return 0


def cmd_make_example(args: argparse.Namespace) -> int:
    from focalsam.data.own_example import make_example

    counts = make_example(
        args.folder,
        args.imbalance_ratio,
        args.test_per_class,
        size=args.size,
        with_test=not args.no_test,
    )
    print(
        f"wrote {args.folder}: train {counts['train']} images per class (ratio "
        f"{args.imbalance_ratio:g})" + ("" if args.no_test else f", test {counts['test'][0]} each")
    )
    print("next:")
    print(
        f"  focalsam train dataset=folder data_root={args.folder} model=small_cnn epochs=10 "
        "run_dir=runs/example"
    )
    print(f"  focalsam predict runs/example {args.folder}/test --out predictions.csv")
    print("  focalsam export runs/example --format onnx --out model.onnx")
    return 0


COMPARE_EPILOG = """examples:
  focalsam compare --preset cifar10-lt-r100 --optimizers sgd,sam,imbsam,ccsam,focal_sam --seeds 0,1,2
  focalsam compare --preset demo --optimizers sgd,sam,focal_sam --seeds 0,1,2 --parallel 2 epochs=10
  focalsam compare --preset demo --optimizers sgd,focal_sam --out runs/cmp   # again: resumes it

Each (optimizer, seed) is the run `focalsam train --preset P [--config YAML] KEY=VALUE...
optimizer=O seed=S run_dir=OUT/O-seedS` would make with OMP_NUM_THREADS=THREADS (the CPU
thread count changes results in the last bits, so every run uses --threads whatever
--parallel is). Re-running the same command with --out keeps finished runs, resumes
interrupted ones and starts missing ones; a different command there is refused.
Writes compare.json, compare.md, accuracy_vs_throughput.png and per_class.png: mean +- std
over seeds (sample std); |mean_a - mean_b| <= max(std_a, std_b) is marked within noise.
"""


def _compare_parser(sub: Any) -> None:
    cmp = sub.add_parser(
        "compare",
        help="several optimizers over seeds: mean +- std, differences within noise marked",
        description="Train every (optimizer, seed) pair and write the comparison table.",
        epilog=COMPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmp.add_argument("--preset", help="a published recipe (see `focalsam presets`)")
    cmp.add_argument("--config", metavar="YAML", help="a YAML file of settings")
    cmp.add_argument(
        "--optimizers",
        default="sgd,sam,imbsam,ccsam,focal_sam",
        help="comma list; the first is the baseline (default: %(default)s)",
    )
    cmp.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default: %(default)s)")
    cmp.add_argument("--parallel", type=int, default=1, help="runs at once (default 1)")
    cmp.add_argument("--threads", type=int, default=1, help="CPU threads of every run (default 1)")
    cmp.add_argument("--out", help="the compare folder (default runs/compare-PRESET-TIME)")
    cmp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="any setting, every run")
    cmp.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


def cmd_compare(args: argparse.Namespace) -> int:
    from focalsam.compare import CompareSpec, default_out, run_compare, terminal

    spec = CompareSpec.create(
        args.preset,
        args.optimizers,
        args.seeds,
        args.overrides,
        config_file=args.config,
        threads=args.threads,
        parallel=args.parallel,
    )
    out = Path(args.out) if args.out else default_out(f"compare-{args.preset or 'config'}")
    # errors about the folder name the flag only when the user gave it
    doc, failed = run_compare(spec, out, flag="--out" if args.out else "the compare folder")
    print(terminal(doc))
    print(f"wrote {out / 'compare.json'}, compare.md, accuracy_vs_throughput.png, per_class.png")
    if failed:
        print(f"focalsam: {failed} run(s) failed; run the same command to retry", file=sys.stderr)
    return 1 if failed else 0


def _analyze_parser(sub: Any) -> None:
    from focalsam.analysis.run import MEASURES, AnalysisSettings

    d = AnalysisSettings()
    an = sub.add_parser(
        "analyze",
        help="per-class Hessian, sharpness and loss landscapes of runs, side by side",
        description="Measure trained runs per class or shot group and write analysis.json and "
        "figures into --out (never into a run). Finished measures in --out are kept.",
    )
    an.add_argument("runs", nargs="+", metavar="RUN", help="run directories (focalsam train)")
    an.add_argument("--out", required=True, help="folder for analysis.json and the PNGs")
    an.add_argument(
        "--measure",
        default=",".join(d.measures),
        help=f"comma list of {', '.join(MEASURES)} (loss and gradient norm always)",
    )
    an.add_argument(
        "--classes",
        default=d.classes,
        help="head,tail | many,medium,few | class indices like 0,5,9",
    )
    an.add_argument("--split", default=d.split, choices=("train", "test"))
    an.add_argument("--samples-per-class", type=int, default=d.samples_per_class)
    an.add_argument("--seed", type=int, default=d.seed)
    an.add_argument("--checkpoint", default=d.checkpoint, help="last | best | a .pt file")
    an.add_argument("--device", default=None, help="where to compute (default: the run's)")
    an.add_argument("--top-k", type=int, default=d.top_k, help="top Hessian eigenvalues")
    an.add_argument("--max-iter", type=int, default=d.max_iter, help="power-iteration cap")
    an.add_argument("--tol", type=float, default=d.tol, help="relative tolerance")
    an.add_argument("--trace-probes", type=int, default=d.trace_probes)
    an.add_argument("--lanczos-steps", type=int, default=d.lanczos_steps)
    an.add_argument("--density-probes", type=int, default=d.density_probes)
    an.add_argument("--rho", default=",".join(f"{r:g}" for r in d.rhos), help="sharpness radii")
    an.add_argument("--grid", type=int, default=d.grid, help="landscape points per axis")
    an.add_argument("--span", type=float, default=d.span, help="landscape range [-span, span]")
    an.add_argument("--no-progress", action="store_true", help="no progress bar")
    an.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    return None


def cmd_analyze(args: argparse.Namespace) -> int:
    from focalsam.analysis.run import AnalysisSettings, analyze

    try:
        rhos = tuple(float(r) for r in args.rho.split(",") if r.strip())
    except ValueError:
        raise InputError(f"--rho must be a comma list of numbers, got {args.rho!r}") from None
    settings = AnalysisSettings(
        measures=tuple(m.strip() for m in args.measure.split(",") if m.strip()),
        classes=args.classes,
        split=args.split,
        samples_per_class=args.samples_per_class,
        seed=args.seed,
        checkpoint=args.checkpoint,
        top_k=args.top_k,
        max_iter=args.max_iter,
        tol=args.tol,
        trace_probes=args.trace_probes,
        lanczos_steps=args.lanczos_steps,
        density_probes=args.density_probes,
        rhos=rhos,
        grid=args.grid,
        span=args.span,
        device=args.device,
    )
    doc = analyze(args.runs, args.out, settings, progress=not args.no_progress)
    for label, run in doc["runs"].items():
        for name, slot in run["targets"].items():
            top = slot.get("hessian", {}).get("values", [None])[0]
            trace = slot.get("trace", {}).get("mean")
            parts = [f"loss {slot['basic']['loss']:.4f}"]
            parts += [f"top eigenvalue {top:.4g}"] if top is not None else []
            parts += [f"trace {trace:.4g}"] if trace is not None else []
            print(f"{label:<12} {name:<18} " + "  ".join(parts))
    print(f"analysis: {Path(args.out) / 'analysis.json'}")
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from focalsam.train.config import parse_overrides

    items = [f"{k[4:]}={v}" for k, v in vars(args).items() if k.startswith("set_")]
    return parse_overrides(items + list(args.overrides))


def cmd_train(args: argparse.Namespace) -> int:
    from focalsam.train import Trainer, make_config
    from focalsam.train.config import config_yaml
    from focalsam.train.report import summary_table
    from focalsam.train.resume import resume_config

    overrides = _overrides(args)
    bare = not (args.preset or args.config or overrides or args.resume)
    if bare and not args.print_config:
        return run_demo()
    if args.resume:
        if args.preset or args.config:
            raise InputError("--resume takes the run's own config: drop --preset/--config")
        cfg, changes = resume_config(Path(args.resume), overrides)
    else:
        cfg, changes = make_config("demo" if bare else args.preset, args.config, overrides), {}
    if args.print_config:
        print(config_yaml(cfg), end="")
        return 0
    with Trainer(cfg, resume=args.resume, resume_changes=changes) as trainer:
        report = trainer.fit()
    if report.get("selected"):
        print(
            summary_table({trainer.parts.method: report}, report["shot_preset"], cfg.train.select)
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from focalsam.train.evaluation import evaluate_run
    from focalsam.train.report import summary_table

    if args.corruptions or args.out:
        return cmd_eval_corruptions(args)
    result = evaluate_run(args.run_dir, args.checkpoint, args.device)
    if args.json:
        print(json.dumps(result))
    else:
        label = f"{Path(result['checkpoint']).name}, epoch {result['epoch']}"
        print(summary_table({label: {"selected": result}}, result["shot_preset"], "checkpoint"))
    return 0


def cmd_eval_corruptions(args: argparse.Namespace) -> int:
    from focalsam.robustness.run import evaluate_corruptions, parse_severities

    if not (args.corruptions and args.out):
        raise InputError("--corruptions and --out go together: eval writes only into --out")
    names = [n.strip() for n in (args.corruption_list or "").split(",") if n.strip()]
    doc = evaluate_corruptions(
        args.run_dir,
        args.corruptions,
        args.out,
        severities=parse_severities(args.severities),
        names=names or None,
        seed=args.corruption_seed,
        checkpoint=args.checkpoint,
        device=args.device,
        cache=args.cache,
        log=lambda m: None if args.json else print(m),
    )
    if args.json:
        print(json.dumps(doc["summary"]))
        return 0
    for name, reason in doc["skipped"].items():
        print(f"  skipped {name}: {reason}")
    summary = doc["summary"]
    if summary:
        groups = "  ".join(f"{g} {100 * v:.1f}%" for g, v in summary["mean_error_by_group"].items())
        print(f"mean corruption error {100 * summary['mean_error']:.1f}% ({groups})")
        if "mCE" in summary:
            print(f"mCE {100 * summary['mCE']:.1f} over {len(summary['mCE_over'])} corruptions")
    print(f"wrote {Path(args.out) / 'corruptions.json'} and corruptions.png")
    return 0


def cmd_presets() -> int:
    from focalsam.optim import get_method, list_optimizers, optimizer_aliases
    from focalsam.train.presets import DESCRIPTIONS, list_presets

    width = max(len(n) for n in list_presets())
    for name in list_presets():
        print(f"{name:<{width}}  {DESCRIPTIONS.get(name, '')}")
    print("\nwith any of them, --optimizer (the comparison rows):")
    aliases = optimizer_aliases()
    for name in list_optimizers():
        also = [a for a, n in aliases.items() if n == name]
        label = name + (f" ({', '.join(also)})" if also else "")
        print(f"  {label:<26}{get_method(name).description}")
    return 0


def run_demo(epochs: int | None = None, root: Path | None = None) -> int:
    """The offline demo: a compare of plain SGD, SAM and Focal-SAM on long-tailed digits
    over seeds 0, 1, 2 (``epochs``: the runs' length, default the preset's 30)."""
    from focalsam.train.demo import run_demo as demo

    return demo(epochs, root)


def _one_line_warnings() -> None:
    def show(message: Any, category: Any, *_a: Any, **_k: Any) -> None:
        print(f"focalsam: warning: {message}", file=sys.stderr)

    warnings.showwarning = show  # type: ignore[assignment]


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (as SIGINT does) while a command runs, so a stop
    outside a training loop ends with its one line and code 130, never silently."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _stdout_failed(exc: OSError) -> bool:
    return exc.filename is None and exc.errno in (errno.EPIPE, errno.ENOSPC, errno.EIO)


def _silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so the interpreter's final flush of what
    could not be printed fails no more."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code (0 done, 1 run-time failure, 2 bad input, 130
    interrupted), every failure as one line on stderr."""
    with _sigterm_as_interrupt():
        code = _main(argv)
    try:
        sys.stdout.flush()
    except OSError as exc:
        _silence_stdout()
        print(f"focalsam: failed: cannot write to standard output: {exc.strerror}", file=sys.stderr)
        return 1
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parse_command_line(parser, argv)
    except UsageError as exc:
        print(f"focalsam: error: {exc}", file=sys.stderr)
        return 2
    debug = getattr(args, "debug", False)
    _one_line_warnings()
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "demo":
            return run_demo()
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "presets":
            return cmd_presets()
        if args.command == "analyze":
            return cmd_analyze(args)
        if args.command == "predict":
            return cmd_predict(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "make-example":
            return cmd_make_example(args)
        parser.print_help()
        return 2
    except InputError as exc:
        if debug:
            raise
        print(f"focalsam: error: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        if debug:
            raise
        stopped = "training stopped" if isinstance(exc, TrainingDiverged) else "failed"
        print(f"focalsam: {stopped}: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"focalsam: {exc}", file=sys.stderr)
        return 130
    except OSError as exc:  # ENAMETOOLONG, EACCES, ENOTDIR, ENOSPC, a full stdout, ...
        if debug:
            raise
        if _stdout_failed(exc):
            _silence_stdout()
            reason = f"cannot write to standard output: {exc.strerror}"
        else:
            where = f": {exc.filename}" if exc.filename else ""
            reason = f"{exc.strerror or exc}{where}"
        print(f"focalsam: failed: {reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # outside a training loop (set-up, writing the outputs)
        if debug:
            raise
        print(
            f"focalsam: interrupted; what was finished is kept (run `focalsam {args.command}` "
            "again to continue where it can)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
