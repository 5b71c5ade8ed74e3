"""Cost of one optimizer step: plain SGD, SAM, ImbSAM, Focal-SAM (and CC-SAM) on ResNet-32.

Every method runs on the same model, data and device, interleaved round by
round in one process (these machines are noisy), and the figures are medians
of per-step wall times. Printed: time per step, ratios to SGD and
Focal-SAM/SAM, and the optimizer's own share of a Focal-SAM step (its step
minus the same 2 forward + 3 backward passes run bare, over its step).

    python benchmarks/step_cost.py                 # CPU, batch 64
    python benchmarks/step_cost.py --device cuda --batch-size 512 --json
    python benchmarks/step_cost.py --ccsam     # + CC-SAM vs Focal-SAM, CIFAR-100 shape

With ``--ccsam`` a second section runs on CIFAR-100-LT-shaped batches (100
classes, counts 500 ... 5): SGD, Focal-SAM and CC-SAM in both modes (public
code: classifier-only perturbation; paper: whole network), with forward and
backward passes counted by hooks: through the network (its forward, the first
convolution's gradient) and through the classifier (its forward, its weight's
gradient; the network's own passes included).
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _timing import interleaved_medians, sync

from focalsam.models import resnet32
from focalsam.optim import create_optimizer

# CIFAR-10-LT / CIFAR-100-LT at imbalance ratio 100 (Cao et al.)
COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
COUNTS100 = [int(500 * 0.01 ** (i / 99)) for i in range(100)]


SGD_KW = {"lr": 0.01, "momentum": 0.9, "weight_decay": 2e-4}


def long_tailed_batch(
    batch_size: int, counts: list[int], device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-shaped random images; labels drawn with the long-tailed class frequencies."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, 32, 32, generator=gen).to(device)
    probs = torch.tensor(counts, dtype=torch.float64)
    y = torch.multinomial(probs, batch_size, replacement=True, generator=gen).to(device)
    return x, y


def build_steps(
    batch_size: int, device: torch.device, seed: int = 0
) -> tuple[
    dict[str, Callable[[], None]], dict[str, torch.nn.Module], dict[str, torch.optim.Optimizer]
]:
    """One model and one step function per method, same initial weights and data."""
    x, y = long_tailed_batch(batch_size, COUNTS, device, seed)
    methods = {
        "sgd": None,
        "sam": {"rho": 0.2},
        "imbsam": {"rho": 0.2, "class_counts": COUNTS, "eta": 200},
        "focal_sam": {"rho": 0.2, "class_counts": COUNTS, "gamma": 3.0, "lam": 0.5},
    }
    steps: dict[str, Callable[[], None]] = {}
    models: dict[str, torch.nn.Module] = {}
    optims: dict[str, torch.optim.Optimizer] = {}
    for name, kw in methods.items():
        torch.manual_seed(seed)
        model = resnet32(num_classes=len(COUNTS)).to(device)
        models[name] = model
        if kw is None:
            opt = torch.optim.SGD(model.parameters(), **SGD_KW)

            def sgd_step(model=model, opt=opt) -> None:
                opt.zero_grad(set_to_none=False)
                F.cross_entropy(model(x), y).backward()
                opt.step()

            steps[name] = sgd_step
        else:
            sam = create_optimizer(name, model.parameters(), "sgd", **kw, **SGD_KW)

            def sam_step(model=model, opt=sam) -> None:
                opt.step(lambda: F.cross_entropy(model(x), y, reduction="none"), y)

            steps[name] = sam_step
            opt = sam
        optims[name] = opt

    # The passes of a Focal-SAM step with no optimizer work: 2 forward + 3 backward.
    bare = resnet32(num_classes=len(COUNTS)).to(device)
    weights = torch.rand(batch_size, device=device)

    def bare_passes() -> None:
        for p in bare.parameters():
            p.grad = None
        losses = F.cross_entropy(bare(x), y, reduction="none")
        (losses @ weights).backward(retain_graph=True)
        (losses @ (1 - weights)).backward()
        (F.cross_entropy(bare(x), y, reduction="none") @ weights).backward()

    steps["bare_2f3b"] = bare_passes
    models["bare_2f3b"] = bare
    return steps, models, optims


def buffer_megabytes(opt: torch.optim.Optimizer) -> float:
    """Memory the optimizer holds between steps: base state plus SAM buffers."""
    tensors = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    for attr in ("_eps", "_backup"):
        tensors += list(getattr(opt, attr, {}).values())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


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
    steps, passes = {}, {}
    for label, (name, kw) in methods.items():
        torch.manual_seed(seed)
        model = resnet32(num_classes=100).to(device)
        if name == "ccsam":
            kw = {**kw, "classifier": model.fc}
        opt = create_optimizer(name, model.parameters(), "sgd", **kw, **SGD_KW)
        count = dict.fromkeys(
            ("forward", "backward", "classifier_forward", "classifier_backward"), 0
        )

        def counter(key: str, c: dict[str, int] = count) -> Callable[..., None]:
            return lambda *_: c.__setitem__(key, c[key] + 1)

        model.register_forward_hook(counter("forward"))
        model.conv1.weight.register_hook(counter("backward"))
        model.fc.register_forward_hook(counter("classifier_forward"))
        model.fc.weight.register_hook(counter("classifier_backward"))

        def step(model=model, opt=opt) -> None:
            opt.step(lambda: F.cross_entropy(model(x), y, reduction="none"), y)

        step()
        passes[label] = dict(count)
        steps[label] = step
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    med = interleaved_medians(steps, device, rounds)
    return {
        "classes": 100,
        "classes_in_batch": int(torch.unique(y).numel()),
        "median_ms": {k: round(v * 1e3, 3) for k, v in med.items()},
        "ratio_to_sgd": {k: round(v / med["sgd"], 3) for k, v in med.items()},
        "ratio_to_focal_sam": {k: round(v / med["focal_sam"], 3) for k, v in med.items()},
        "passes_per_step": passes,
    }


def measure(
    batch_size: int, device: torch.device, rounds: int, steps_per_round: int, warmup: int
) -> dict:
    steps, models, optims = build_steps(batch_size, device)
    peak: dict[str, float] = {}
    for name, fn in steps.items():
        for _ in range(warmup):
            fn()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            sync(device)
            peak[name] = torch.cuda.max_memory_allocated(device) / 2**20
    med = interleaved_medians(steps, device, rounds, steps_per_round)
    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "rounds": rounds,
        "steps_per_round": steps_per_round,
        "median_ms": {k: round(v * 1e3, 3) for k, v in med.items()},
        "ratio_to_sgd": {k: round(med[k] / med["sgd"], 3) for k in ("sam", "imbsam", "focal_sam")},
        "focal_sam_over_sam": round(med["focal_sam"] / med["sam"], 3),
        "focal_sam_optimizer_share": round(
            (med["focal_sam"] - med["bare_2f3b"]) / med["focal_sam"], 4
        ),
        "optimizer_buffers_mb": {k: round(buffer_megabytes(o), 3) for k, o in optims.items()},
    }
    if peak:
        result["peak_allocated_mb"] = {k: round(v, 1) for k, v in peak.items()}
    del models
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--ccsam", action="store_true", help="add the CC-SAM section (slow on a CPU)"
    )
    parser.add_argument("--ccsam-rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    r = measure(args.batch_size, device, args.rounds, args.steps_per_round, args.warmup)
    if args.ccsam:
        r["ccsam"] = ccsam_section(args.batch_size, device, args.ccsam_rounds, warmup=1)
    if args.json:
        print(json.dumps(r))
        return
    print(
        f"ResNet-32, batch {r['batch_size']}, {r['device']} ({r['threads']} threads), "
        f"medians of {r['rounds']} x {r['steps_per_round']} interleaved steps"
    )
    print(f"{'method':<12}{'ms/step':>10}{'x SGD':>8}{'buffers MB':>12}")
    for name, ms in r["median_ms"].items():
        ratio = ms / r["median_ms"]["sgd"]
        buf = r["optimizer_buffers_mb"].get(name, float("nan"))
        print(f"{name:<12}{ms:>10.1f}{ratio:>8.2f}{buf:>12.2f}")
    print(
        f"Focal-SAM / SAM: {r['focal_sam_over_sam']:.3f}  (target <= 1.40; 2f+3b vs 2f+2b ~ 1.33)"
    )
    print(
        f"optimizer's own share of a Focal-SAM step: {100 * r['focal_sam_optimizer_share']:.1f}%  (target < 5%)"
    )
    if "peak_allocated_mb" in r:
        print("peak allocated MB:", r["peak_allocated_mb"])
    if "ccsam" in r:
        c = r["ccsam"]
        print(f"\nCIFAR-100 shape: 100 classes, {c['classes_in_batch']} present in the batch")
        print(
            f"{'method':<18}{'ms/step':>10}{'x SGD':>8}{'x Focal':>9}  passes (network fwd/bwd; classifier fwd/bwd)"
        )
        for name, ms in c["median_ms"].items():
            p = c["passes_per_step"][name]
            extra = f"; {p['classifier_forward']}/{p['classifier_backward']}"
            print(
                f"{name:<18}{ms:>10.1f}{c['ratio_to_sgd'][name]:>8.2f}{c['ratio_to_focal_sam'][name]:>9.2f}  {p['forward']}/{p['backward']}{extra}"
            )


if __name__ == "__main__":
    main()
