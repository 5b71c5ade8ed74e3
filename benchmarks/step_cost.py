"""Cost of one optimizer step: SGD, SAM, ImbSAM, Focal-SAM, CC-SAM and SSE-SAM, eager, compiled
and captured, on ResNet-32 (CIFAR shape) or CLIP ViT-B/16 + AdaptFormer.

Every (method, mode) runs on its own model with the same initial weights and batch,
interleaved round by round in one process (these machines are noisy); figures are
medians of per-step wall times. Printed per mode: ms/step, ratios to SGD, Focal-SAM/SAM,
peak memory on CUDA (``torch.cuda.max_memory_allocated`` over one step, reset before
each), and the optimizer's own share of an eager Focal-SAM step (its step minus the same
2 forward + 3 backward passes run bare, over its step). ``--strict`` adds eager
Focal-SAM with ``strict_checks=True`` (host syncs for its checks) against ``False``
(sync-free, checks on the device).

Modes (``--mode``, comma list): ``eager``; ``compiled`` (model under torch.compile,
mode default); ``captured`` (the whole step in one CUDA graph, focalsam.train.capture);
``reduce_overhead`` (model under torch.compile mode "reduce-overhead": CUDA graphs of
forward and backward only). The last two need CUDA and are reported as skipped elsewhere.

    python benchmarks/step_cost.py                                   # CPU, batch 64, eager
    python benchmarks/step_cost.py --device cuda --batch-size 64,512 \\
        --mode eager,compiled,captured,reduce_overhead --strict --json
    python benchmarks/step_cost.py --model vit_b16 --device cuda     # bf16, batch 128
    python benchmarks/step_cost.py --ccsam     # + CC-SAM vs Focal-SAM, CIFAR-100 shape
    python benchmarks/step_cost.py --sse-sam   # + SSE-SAM before/after its cut vs SGD, SAM

``--model small_cnn``: the two-layer demo CNN at 16 px (smoke runs).
``--model vit_b16``: random-weights CLIP ViT-B/16 with AdaptFormer at 224 px, bf16
autocast, batch 128 on CUDA; on a CPU the reduced ``clip_tiny`` at batch 8. SGD, SAM,
ImbSAM, Focal-SAM; the trainable fraction of the parameters is reported.

With ``--ccsam`` a second section runs on CIFAR-100-LT-shaped batches (100
classes, counts 500 ... 5): SGD, Focal-SAM and CC-SAM in both modes (public
code: classifier-only perturbation; paper: whole network), with forward and
backward passes counted by hooks.

With ``--sse-sam`` a section on the same CIFAR-100-LT-shaped batches times SGD, SAM,
ImbSAM and SSE-SAM (eta 100, radii 0.05 / 0.10) before and after its cut, strict and
sync-free (``strict_checks=False``), with ratios to SGD and to SAM and the passes
counted by hooks.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from _steps import (
    COUNTS100,
    MODES,
    SGD_KW,
    WORKLOADS,
    Skip,
    Workload,
    bare_passes,
    buffer_megabytes,
    long_tailed_batch,
    make_step,
)
from _timing import interleaved_medians, sync
from torch import Tensor, nn

from focalsam.models import resnet32
from focalsam.optim import create_optimizer


def time_counted_steps(
    built: dict[str, tuple[nn.Module, Any]],
    x: Tensor,
    y: Tensor,
    device: torch.device,
    rounds: int,
    warmup: int,
    classifier: bool,
) -> tuple[dict[str, float], dict[str, dict[str, int]]]:
    """Median seconds per step of each ``(ResNet-32, optimizer)`` on one batch, timed
    interleaved, and the passes of its first step counted by hooks: forward and backward
    passes of the network (and of its classifier ``fc`` alone when ``classifier``)."""
    keys = ["forward", "backward"]
    if classifier:
        keys += ["classifier_forward", "classifier_backward"]
    steps, passes = {}, {}
    for label, (model, opt) in built.items():
        count = dict.fromkeys(keys, 0)

        def counter(key: str, c: dict[str, int] = count) -> Callable[..., None]:
            return lambda *_: c.__setitem__(key, c[key] + 1)

        model.register_forward_hook(counter("forward"))
        model.conv1.weight.register_hook(counter("backward"))
        if classifier:
            model.fc.register_forward_hook(counter("classifier_forward"))
            model.fc.weight.register_hook(counter("classifier_backward"))

        def step(model: nn.Module = model, opt: Any = opt) -> None:
            opt.step(lambda: F.cross_entropy(model(x), y, reduction="none"), y)

        step()
        passes[label] = dict(count)
        steps[label] = step
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    return interleaved_medians(steps, device, rounds), passes


def ccsam_section(
    batch_size: int, device: torch.device, rounds: int, warmup: int, seed: int = 0
) -> dict:
    """SGD, Focal-SAM and CC-SAM (both modes) on 100-class long-tailed batches."""
    x, y = long_tailed_batch(batch_size, COUNTS100, device, seed)
    methods = {
        "sgd": ("plain", {}),
        "focal_sam": (
            "focal_sam",
            {"rho": 0.3, "class_counts": COUNTS100, "gamma": 3.2, "lam": 0.8},
        ),
        "ccsam_classifier": (
            "ccsam",
            {"rho": 1e-6, "class_counts": COUNTS100, "mode": "classifier"},
        ),
        "ccsam_network": ("ccsam", {"rho": 1e-6, "class_counts": COUNTS100, "mode": "network"}),
    }
    built = {}
    for label, (name, kw) in methods.items():
        torch.manual_seed(seed)
        model = resnet32(num_classes=100).to(device)
        if name == "ccsam":
            kw = {**kw, "classifier": model.fc}
        built[label] = (model, create_optimizer(name, model.parameters(), "sgd", **kw, **SGD_KW))
    med, passes = time_counted_steps(built, x, y, device, rounds, warmup, classifier=True)
    return {
        "classes": 100,
        "classes_in_batch": int(torch.unique(y).numel()),
        "median_ms": {k: round(v * 1e3, 3) for k, v in med.items()},
        "ratio_to_sgd": {k: round(v / med["sgd"], 3) for k, v in med.items()},
        "ratio_to_focal_sam": {k: round(v / med["focal_sam"], 3) for k, v in med.items()},
        "passes_per_step": passes,
    }


#: a sync-free step (with ``model=`` for its buffers, set per run)
SYNC_FREE = {"strict_checks": False}


def sse_sam_section(
    batch_size: int, device: torch.device, rounds: int, warmup: int, seed: int = 0
) -> dict:
    """SGD, SAM, ImbSAM and SSE-SAM before and after its cut (CIFAR-100-LT r100 settings:
    eta 100, rho_head 0.05, rho_tail 0.10) on one 100-class long-tailed batch, with the
    forward and backward passes of one step counted by hooks."""
    x, y = long_tailed_batch(batch_size, COUNTS100, device, seed)
    sse = {"class_counts": COUNTS100, "eta": 100.0, "rho_head": 0.05, "rho_tail": 0.1}
    methods: dict[str, tuple[str, dict[str, Any], int | None]] = {
        "sgd": ("plain", {}, None),
        "sam": ("sam", {"rho": 0.05}, None),
        "imbsam": ("imbsam", {"rho": 0.1, "class_counts": COUNTS100, "eta": 100.0}, None),
        # set_epoch(epoch, 10) with gamma 0.7: epoch 0 before the cut, epoch 7 after it
        "sse_sam_before_cut": ("sse_sam", {**sse, "gamma": 0.7}, 0),
        "sse_sam_after_cut": ("sse_sam", {**sse, "gamma": 0.7}, 7),
        # sync-free steps: checks on the device, every active group's passes run
        "sse_sam_before_syncfree": ("sse_sam", {**sse, "gamma": 0.7, **SYNC_FREE}, 0),
        "sse_sam_after_syncfree": ("sse_sam", {**sse, "gamma": 0.7, **SYNC_FREE}, 7),
    }
    built = {}
    for label, (name, kw, epoch) in methods.items():
        torch.manual_seed(seed)
        model = resnet32(num_classes=100).to(device)
        if kw.get("strict_checks") is False:
            kw = {**kw, "model": model}  # its buffers are rolled back with a skipped step
        opt: Any = create_optimizer(name, model.parameters(), "sgd", **kw, **SGD_KW)
        if epoch is not None:
            opt.set_epoch(epoch, 10)
        built[label] = (model, opt)
    med, passes = time_counted_steps(built, x, y, device, rounds, warmup, classifier=False)
    tail = sum(1 for n in COUNTS100 if n < 100)
    return {
        "classes": 100,
        "tail_classes": tail,
        "tail_samples_in_batch": int(sum(int(COUNTS100[c] < 100) for c in y.tolist())),
        "median_ms": {k: round(v * 1e3, 3) for k, v in med.items()},
        "ratio_to_sgd": {k: round(v / med["sgd"], 3) for k, v in med.items()},
        "ratio_to_sam": {k: round(v / med["sam"], 3) for k, v in med.items()},
        "passes_per_step": passes,
    }


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"error: {type(exc).__name__}: {text[0] if text else ''}"[:300]


def build(
    wl: Workload, modes: list[str], device: torch.device, warmup: int, strict: bool, backend: str
) -> tuple[dict[str, Callable[[], object]], dict[str, torch.optim.Optimizer], dict[str, str]]:
    """Warmed-up step functions labelled ``method/mode``; what could not run, and why."""
    steps: dict[str, Callable[[], object]] = {}
    optims: dict[str, torch.optim.Optimizer] = {}
    skipped: dict[str, str] = {}
    plan = [(m, mode, None, f"{m}/{mode}") for mode in modes for m in wl.methods]
    if strict and "focal_sam" in wl.methods:
        plan += [
            ("focal_sam", "eager", s, f"focal_sam_{n}/eager")
            for s, n in ((True, "strict"), (False, "syncfree"))
        ]
    keep: list[Any] = []  # models stay alive as long as their steps
    for method, mode, strict_checks, label in plan:
        try:
            fn, model, opt = make_step(wl, method, mode, device, strict_checks, backend=backend)
            for _ in range(warmup):
                fn()
            sync(device)
        except Skip as exc:
            skipped[label] = str(exc)
            continue
        except Exception as exc:  # recorded; the benchmark goes on
            skipped[label] = _error(exc)
            continue
        keep.append(model)
        steps[label], optims[label] = fn, opt
    if "eager" in modes and "focal_sam" in wl.methods:
        steps["bare_2f3b/eager"] = bare_passes(wl, device)
        steps["bare_2f3b/eager"]()
    return steps, optims, skipped


def peak_memory(steps: dict[str, Callable[[], object]], device: torch.device) -> dict[str, float]:
    """MB: the most allocated during one step of each (statistics reset before each)."""
    peak: dict[str, float] = {}
    if device.type != "cuda":
        return peak
    for label, fn in steps.items():
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        peak[label] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


def summarize(med: dict[str, float], modes: list[str]) -> dict[str, Any]:
    """Per mode: ms/step, ratios to SGD, Focal-SAM/SAM; per non-eager mode: speed-up."""
    by_mode: dict[str, dict[str, float]] = {}
    for label, seconds in med.items():
        method, mode = label.split("/")
        by_mode.setdefault(mode, {})[method] = round(seconds * 1e3, 3)
    out: dict[str, Any] = {"median_ms": by_mode, "ratio_to_sgd": {}, "focal_sam_over_sam": {}}
    for mode, ms in by_mode.items():
        if "sgd" in ms:
            out["ratio_to_sgd"][mode] = {k: round(v / ms["sgd"], 3) for k, v in ms.items()}
        if "focal_sam" in ms and "sam" in ms:
            out["focal_sam_over_sam"][mode] = round(ms["focal_sam"] / ms["sam"], 3)
    eager = by_mode.get("eager", {})
    out["speedup_over_eager"] = {
        mode: {k: round(eager[k] / v, 3) for k, v in ms.items() if k in eager}
        for mode, ms in by_mode.items()
        if mode != "eager"
    }
    if "focal_sam" in eager and "bare_2f3b" in eager:
        out["focal_sam_optimizer_share"] = round(
            (eager["focal_sam"] - eager["bare_2f3b"]) / eager["focal_sam"], 4
        )
    if "focal_sam_strict" in eager and "focal_sam_syncfree" in eager:
        out["syncfree_over_strict"] = round(
            eager["focal_sam_syncfree"] / eager["focal_sam_strict"], 3
        )
    return out


def measure(
    wl: Workload,
    modes: list[str],
    device: torch.device,
    rounds: int,
    steps_per_round: int,
    warmup: int,
    strict: bool,
    backend: str = "inductor",
) -> dict[str, Any]:
    """Time every (method, mode) of the workload at its batch size."""
    steps, optims, skipped = build(wl, modes, device, warmup, strict, backend)
    peak = peak_memory(steps, device)
    med = interleaved_medians(steps, device, rounds, steps_per_round) if steps else {}
    result: dict[str, Any] = {
        "batch_size": int(wl.x.shape[0]),
        "input_shape": list(wl.x.shape[1:]),
        **summarize(med, modes),
        "skipped": skipped,
        "optimizer_buffers_mb": {k: round(buffer_megabytes(o), 3) for k, o in optims.items()},
    }
    if peak:
        result["peak_allocated_mb"] = peak
    return result


def trainable_fraction(wl: Workload) -> dict[str, Any]:
    """Trainable and total parameters of the workload's model."""
    model = wl.make_model()
    count = getattr(model, "trainable_parameter_count", None)
    total = getattr(model, "total_parameter_count", None)
    trainable = (
        int(count())
        if callable(count)
        else sum(p.numel() for p in model.parameters() if p.requires_grad)
    )
    every = int(total()) if callable(total) else sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": every, "fraction": round(trainable / every, 5)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="resnet32", choices=tuple(WORKLOADS))
    p.add_argument(
        "--batch-size", default=None, help="comma list (default 64; vit_b16: 128 on CUDA, 8 on CPU)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", default="eager", help=f"comma list of {', '.join(MODES)}")
    p.add_argument(
        "--methods", default=None, help="comma list (default: every method of the model)"
    )
    p.add_argument(
        "--strict", action="store_true", help="add Focal-SAM strict_checks True vs False"
    )
    p.add_argument("--backend", default="inductor", help="torch.compile backend of 'compiled'")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-per-round", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--ccsam", action="store_true", help="add the CC-SAM section (slow on a CPU)")
    p.add_argument("--ccsam-rounds", type=int, default=3)
    p.add_argument(
        "--sse-sam",
        action="store_true",
        help="add the SSE-SAM section (before and after its cut, vs SGD, SAM, ImbSAM)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    bad = [m for m in args.mode.split(",") if m not in MODES]
    if bad:
        p.error(f"--mode: unknown {bad}; valid: {', '.join(MODES)}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    modes = args.mode.split(",")
    default = "64" if args.model != "vit_b16" else ("128" if device.type == "cuda" else "8")
    sizes = [int(b) for b in (args.batch_size or default).split(",")]
    out: dict[str, Any] = {
        "model": args.model,
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "modes": modes,
        "rounds": args.rounds,
        "steps_per_round": args.steps_per_round,
        "by_batch": {},
    }
    for size in sizes:
        try:
            wl = WORKLOADS[args.model](size, device)
        except Skip as exc:
            out["skipped"] = str(exc)
            return out
        if args.methods:
            wl.methods = {k: v for k, v in wl.methods.items() if k in args.methods.split(",")}
        out["workload"], out["autocast"] = wl.name, str(wl.autocast) if wl.autocast else None
        if args.model == "vit_b16" and "trainable" not in out:
            out["trainable"] = trainable_fraction(wl)
        out["by_batch"][str(size)] = measure(
            wl,
            modes,
            device,
            args.rounds,
            args.steps_per_round,
            args.warmup,
            args.strict,
            args.backend,
        )
    if args.ccsam:
        out["ccsam"] = ccsam_section(sizes[0], device, args.ccsam_rounds, warmup=1)
    if args.sse_sam:
        out["sse_sam"] = sse_sam_section(sizes[0], device, args.rounds, warmup=1)
    return out


def print_report(r: dict[str, Any]) -> None:
    print(
        f"{r.get('workload', r['model'])} on {r['device']} ({r['threads']} threads), torch "
        f"{r['torch']}, medians of {r['rounds']} x {r['steps_per_round']} interleaved steps"
    )
    if "skipped" in r:
        print("skipped:", r["skipped"])
    if "trainable" in r:
        t = r["trainable"]
        print(
            f"trainable parameters: {t['trainable']:,} of {t['total']:,} ({100 * t['fraction']:.2f}%)"
        )
    for size, b in r["by_batch"].items():
        print(f"\nbatch {size}, input {b['input_shape']}")
        peak = b.get("peak_allocated_mb", {})
        print(f"{'method':<20}{'mode':<17}{'ms/step':>10}{'x SGD':>8}{'peak MB':>10}")
        for mode, ms in b["median_ms"].items():
            for name, v in ms.items():
                ratio = b["ratio_to_sgd"].get(mode, {}).get(name)
                mem = peak.get(f"{name}/{mode}")
                shown = "n/a" if ratio is None else f"{ratio:.2f}"
                memory = "n/a" if mem is None else f"{mem:.1f}"  # CUDA only
                print(f"{name:<20}{mode:<17}{v:>10.2f}{shown:>8}{memory:>10}")
        for mode, v in b["focal_sam_over_sam"].items():
            print(f"Focal-SAM / SAM ({mode}): {v:.3f}")
        if "focal_sam_optimizer_share" in b:
            print(
                f"optimizer's own share of an eager Focal-SAM step: "
                f"{100 * b['focal_sam_optimizer_share']:.1f}%"
            )
        if "syncfree_over_strict" in b:
            print(f"Focal-SAM sync-free / strict: {b['syncfree_over_strict']:.3f}")
        for label, why in b["skipped"].items():
            print(f"skipped {label}: {why}")
    if "sse_sam" in r:
        print_sse_sam(r["sse_sam"])
    if "ccsam" in r:
        c = r["ccsam"]
        print(f"\nCIFAR-100 shape: 100 classes, {c['classes_in_batch']} present in the batch")
        print(
            f"{'method':<18}{'ms/step':>10}{'x SGD':>8}{'x Focal':>9}  passes (network fwd/bwd; classifier fwd/bwd)"
        )
        for name, ms in c["median_ms"].items():
            p = c["passes_per_step"][name]
            print(
                f"{name:<18}{ms:>10.1f}{c['ratio_to_sgd'][name]:>8.2f}{c['ratio_to_focal_sam'][name]:>9.2f}"
                f"  {p['forward']}/{p['backward']}; {p['classifier_forward']}/{p['classifier_backward']}"
            )


def print_sse_sam(c: dict[str, Any]) -> None:
    print(
        f"\nSSE-SAM, CIFAR-100 shape: {c['tail_classes']} of 100 classes are tail (n < 100), "
        f"{c['tail_samples_in_batch']} tail samples in the batch"
    )
    print(f"{'method':<24}{'ms/step':>10}{'x SGD':>8}{'x SAM':>8}  passes fwd/bwd")
    for name, ms in c["median_ms"].items():
        p = c["passes_per_step"][name]
        print(
            f"{name:<24}{ms:>10.1f}{c['ratio_to_sgd'][name]:>8.2f}{c['ratio_to_sam'][name]:>8.2f}"
            f"  {p['forward']}/{p['backward']}"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    r = run(args)
    if args.json:
        print(json.dumps(r))
    else:
        print_report(r)
    return r


if __name__ == "__main__":
    main()
