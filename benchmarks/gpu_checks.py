"""Equivalence checks of the GPU paths, each printed as PASS/FAIL with its max difference.

- ``compiled_vs_eager``: a few Focal-SAM steps with the model under ``torch.compile``
  against the same steps eager (parameters and BatchNorm buffers);
- ``captured_vs_eager``: the same steps through :class:`focalsam.train.capture.CapturedStep`
  (one CUDA graph per step; fused SGD, lr and rho read from the device), with lr and rho
  changed between steps, against eager steps with Python floats (CUDA only);
- ``syncfree_vs_strict``: Focal-SAM with ``strict_checks=False`` against ``True``; then a
  batch with a NaN input, which the sync-free step must skip on the device (parameters
  unchanged) and the strict one refuse.

Tolerance: float32 (|a - b| <= atol + rtol |b|, atol 1e-5, rtol 1e-4; TF32 off).

    python benchmarks/gpu_checks.py --device cuda --json
    python benchmarks/gpu_checks.py --device cpu --backend aot_eager   # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focalsam.models import create_model
from focalsam.optim import create_optimizer

COUNTS = [500, 300, 180, 100, 60, 40, 25, 15, 9, 5]
ATOL, RTOL = 1e-5, 1e-4
FOCAL = {"class_counts": COUNTS, "rho": 0.2, "gamma": 3.0, "lam": 0.5}
SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}


def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def batches(n: int, batch: int, size: int, device: torch.device) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(batch, 3, size, size, generator=gen).to(device),
            torch.randint(0, len(COUNTS), (batch,), generator=gen).to(device),
        )
        for _ in range(n)
    ]


def build(
    model_name: str, device: torch.device, **extra: Any
) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = create_model(model_name, len(COUNTS)).to(device)
    opt = create_optimizer("focal_sam", model.parameters(), "sgd", **FOCAL, **SGD, **extra)
    return model, opt


def max_difference(a: nn.Module, b: nn.Module) -> tuple[float, bool]:
    """Largest |a - b| over parameters and floating buffers; whether all are within tolerance."""
    worst, ok = 0.0, True
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        if not x.is_floating_point():
            ok = ok and bool(torch.equal(x, y))
            continue
        worst = max(worst, float((x - y).abs().max()))
        ok = ok and bool(torch.allclose(x, y, atol=ATOL, rtol=RTOL))
    return worst, ok


def eager_steps(model: nn.Module, opt: torch.optim.Optimizer, data: list, lrs: list) -> None:
    for (x, y), (lr, rho) in zip(data, lrs):
        for g in opt.param_groups:
            g["lr"], g["rho"] = lr, rho
        opt.step(lambda x=x, y=y: loss_fn(model(x), y), y)


def schedule(n: int) -> list[tuple[float, float]]:
    """(lr, rho) per step: changed midway, so a baked value would show."""
    return [
        (SGD["lr"] * (0.5 if i >= n // 2 else 1.0), FOCAL["rho"] * (1.5 if i % 2 else 1.0))
        for i in range(n)
    ]


def check_compiled(
    device: torch.device, model_name: str, data: list, backend: str
) -> dict[str, Any]:
    ref, ref_opt = build(model_name, device)
    model, opt = build(model_name, device)
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False  # see _steps.no_donated_buffers
    compiled = torch.compile(model, backend=backend)
    lrs = schedule(len(data))
    eager_steps(ref, ref_opt, data, lrs)
    for (x, y), (lr, rho) in zip(data, lrs):
        for g in opt.param_groups:
            g["lr"], g["rho"] = lr, rho
        opt.step(lambda x=x, y=y: loss_fn(compiled(x), y), y)
    worst, ok = max_difference(model, ref)
    return {"ok": ok, "max_abs_diff": worst, "backend": backend}


def check_captured(device: torch.device, model_name: str, data: list) -> dict[str, Any]:
    if device.type != "cuda":
        return {"skipped": "no CUDA"}
    from focalsam.train.capture import CapturedStep

    ref, ref_opt = build(model_name, device)
    try:
        model, opt = build(model_name, device, strict_checks=False)
    except TypeError:
        return {"skipped": "this focalsam's optimizers have no strict_checks option yet"}
    lrs = schedule(len(data))
    eager_steps(ref, ref_opt, data, lrs)
    step = CapturedStep(opt, model, loss_fn, *data[0])
    for (x, y), (lr, rho) in zip(data, lrs):
        for g in opt.param_groups:
            g["lr"], g["rho"] = lr, rho  # Python floats, as a scheduler writes them
        step(x, y)
    torch.cuda.synchronize(device)
    worst, ok = max_difference(model, ref)
    return {"ok": ok, "max_abs_diff": worst, "steps": len(data)}


def check_syncfree(device: torch.device, model_name: str, data: list) -> dict[str, Any]:
    try:
        strict, strict_opt = build(model_name, device, strict_checks=True)
        free, free_opt = build(model_name, device, strict_checks=False)
    except TypeError:
        return {"skipped": "this focalsam's optimizers have no strict_checks option yet"}
    lrs = schedule(len(data))
    eager_steps(strict, strict_opt, data, lrs)
    eager_steps(free, free_opt, data, lrs)
    worst, ok = max_difference(free, strict)
    # A NaN batch: sync-free skips the update on the device, strict refuses the step.
    x, y = data[0]
    bad = x.clone()
    bad[0] = float("nan")
    before = {k: v.clone() for k, v in free.named_parameters()}
    free_opt.step(lambda: loss_fn(free(bad), y), y)
    unchanged = all(torch.equal(before[k], v) for k, v in free.named_parameters())
    try:
        strict_opt.step(lambda: loss_fn(strict(bad), y), y)
        refused = False
    except Exception:  # the engine's NonFiniteLossError family
        refused = True
    return {
        "ok": ok and unchanged and refused,
        "max_abs_diff": worst,
        "nan_batch_skipped_by_syncfree": unchanged,
        "nan_batch_refused_by_strict": refused,
    }


def run_check(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        out = fn()
    except Exception as exc:  # recorded as a failure; the other checks go on
        lines = str(exc).strip().splitlines()
        out = {"ok": False, "error": f"{type(exc).__name__}: {lines[0] if lines else ''}"}
    if "skipped" in out:
        print(f"SKIP {name}: {out['skipped']}")
    else:
        verdict = "PASS" if out["ok"] else "FAIL"
        print(
            f"{verdict} {name}: max |diff| {out.get('max_abs_diff', float('nan')):.3g} "
            f"{out.get('error', '')}".rstrip()
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default=None, help="default: resnet32 on CUDA, small_cnn on CPU")
    p.add_argument("--backend", default="inductor", help="torch.compile backend")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model_name = args.model or ("resnet32" if device.type == "cuda" else "small_cnn")
    size = 32 if model_name == "resnet32" else 16
    data = batches(args.steps, args.batch_size, size, device)
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": model_name,
        "tolerance": {"atol": ATOL, "rtol": RTOL},
        "compiled_vs_eager": run_check(
            "compiled_vs_eager", lambda: check_compiled(device, model_name, data, args.backend)
        ),
        "captured_vs_eager": run_check(
            "captured_vs_eager", lambda: check_captured(device, model_name, data)
        ),
        "syncfree_vs_strict": run_check(
            "syncfree_vs_strict", lambda: check_syncfree(device, model_name, data)
        ),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


def failed(results: dict[str, Any]) -> bool:
    """Whether a check ran and failed (skipped ones do not count)."""
    return any(isinstance(v, dict) and v.get("ok") is False for v in results.values())


if __name__ == "__main__":
    sys.exit(1 if failed(main()) else 0)
