"""Step functions for the step-cost benchmark: one model and optimizer per (method, mode),
same initial weights and batch for all (``python benchmarks/<name>.py`` puts this folder
on ``sys.path``, so the benchmarks import it as ``_steps``).

Modes: ``eager``; ``compiled`` (the model under ``torch.compile``, mode default);
``captured`` (the whole step in one CUDA graph, :class:`focalsam.train.capture.CapturedStep`,
fused SGD reading lr from the device); ``reduce_overhead`` (the model under
``torch.compile(mode="reduce-overhead")``: inductor's CUDA graphs of the forward and
backward, the optimizer's own work eager). The last two need CUDA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focalsam.models import resnet32
from focalsam.optim import create_optimizer

MODES = ("eager", "compiled", "captured", "reduce_overhead")
CUDA_ONLY = {"captured", "reduce_overhead"}
SGD_KW = {"lr": 0.01, "momentum": 0.9, "weight_decay": 2e-4}

# CIFAR-10-LT / CIFAR-100-LT at imbalance ratio 100 (Cao et al.)
COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
COUNTS100 = [int(500 * 0.01 ** (i / 99)) for i in range(100)]


class Skip(Exception):
    """This (method, mode) cannot run here; the message says why."""


@dataclass
class Workload:
    """A model family, its batch and the per-method options."""

    name: str
    make_model: Callable[[], nn.Module]
    x: Tensor
    y: Tensor
    counts: list[int]
    autocast: torch.dtype | None = None
    methods: dict[str, dict[str, Any] | None] = field(default_factory=dict)


def long_tailed_batch(
    batch_size: int, counts: list[int], device: torch.device, seed: int, size: int = 32
) -> tuple[Tensor, Tensor]:
    """Random images; labels drawn with the long-tailed class frequencies."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, size, size, generator=gen).to(device)
    probs = torch.tensor(counts, dtype=torch.float64)
    y = torch.multinomial(probs, batch_size, replacement=True, generator=gen).to(device)
    return x, y


def resnet_workload(batch_size: int, device: torch.device, seed: int = 0) -> Workload:
    """ResNet-32 on CIFAR-10-LT-shaped batches: SGD, SAM, ImbSAM, Focal-SAM, CC-SAM."""
    x, y = long_tailed_batch(batch_size, COUNTS, device, seed)
    methods: dict[str, dict[str, Any] | None] = {
        "sgd": None,
        "sam": {"rho": 0.2},
        "imbsam": {"rho": 0.2, "class_counts": COUNTS, "eta": 200},
        "focal_sam": {"rho": 0.2, "class_counts": COUNTS, "gamma": 3.0, "lam": 0.5},
        "ccsam": {"rho": 1e-2, "class_counts": COUNTS, "mode": "classifier"},
    }
    return Workload(
        "resnet32", lambda: resnet32(num_classes=len(COUNTS)), x, y, COUNTS, None, methods
    )


def small_cnn_workload(batch_size: int, device: torch.device, seed: int = 0) -> Workload:
    """The two-layer demo CNN with BatchNorm at 16 px: smoke runs of every code path."""
    from focalsam.models import create_model

    wl = resnet_workload(batch_size, device, seed)
    x, y = long_tailed_batch(batch_size, COUNTS, device, seed, size=16)
    return Workload(
        "small_cnn", lambda: create_model("small_cnn", len(COUNTS)), x, y, COUNTS, None, wl.methods
    )


WORKLOADS: dict[str, Callable[[int, torch.device], Workload]] = {}


def vit_workload(batch_size: int, device: torch.device, seed: int = 0) -> Workload:
    """Random-weights CLIP ViT-B/16 + AdaptFormer at 224 px in bf16 autocast on CUDA; on a
    CPU the reduced ``clip_tiny`` (so it finishes in seconds). 100 classes."""
    try:
        from focalsam.models import ClipOptions, create_model  # type: ignore[attr-defined]
    except ImportError as exc:
        raise Skip(f"CLIP models are not available in focalsam.models ({exc})") from None
    cuda = device.type == "cuda"
    name = "clip_vit_b16" if cuda else "clip_tiny"
    options = ClipOptions(weights="random", tuning="adaptformer")
    names = [f"class {i}" for i in range(len(COUNTS100))]

    def make() -> nn.Module:
        try:
            return create_model(name, len(COUNTS100), clip=options, class_names=names)
        except ImportError as exc:
            raise Skip(f"{name} needs open_clip: {exc}") from None

    probe = make()
    visual = getattr(probe, "visual", None)
    size = getattr(visual, "image_size", 224 if cuda else 32)
    size = int(size if isinstance(size, int) else size[0])
    del probe
    x, y = long_tailed_batch(batch_size, COUNTS100, device, seed, size=size)
    methods: dict[str, dict[str, Any] | None] = {
        "sgd": None,
        "sam": {"rho": 0.05},
        "imbsam": {"rho": 0.05, "class_counts": COUNTS100, "eta": 20},
        "focal_sam": {"rho": 0.05, "class_counts": COUNTS100, "gamma": 1.5, "lam": 0.7},
    }
    autocast = torch.bfloat16 if cuda else None
    return Workload(name, make, x, y, COUNTS100, autocast, methods)


def per_sample_ce(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def build_optimizer(
    method: str, model: nn.Module, kw: dict[str, Any] | None, strict: bool | None
) -> torch.optim.Optimizer:
    """Plain torch SGD for ``sgd``; otherwise the registered method over SGD. ``strict``:
    the engine's ``strict_checks`` (None: its default)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if kw is None:
        return torch.optim.SGD(params, **SGD_KW)
    kw = dict(kw)
    if method == "ccsam":
        kw["classifier"] = model.fc
    if strict is not None:
        kw["strict_checks"] = strict
    try:
        return create_optimizer(method, params, "sgd", **kw, **SGD_KW)
    except TypeError as exc:
        if "strict_checks" in str(exc):
            raise Skip("this focalsam's optimizers have no strict_checks option yet") from None
        raise


def make_step(
    wl: Workload,
    method: str,
    mode: str,
    device: torch.device,
    strict: bool | None = None,
    seed: int = 0,
    backend: str = "inductor",
) -> tuple[Callable[[], object], nn.Module, torch.optim.Optimizer]:
    """One step function of ``method`` in ``mode`` on the workload's batch."""
    if mode in CUDA_ONLY and device.type != "cuda":
        raise Skip("no CUDA")
    if mode == "captured" and method == "ccsam":
        raise Skip("CC-SAM takes one pass per class present in the batch: not capturable")
    kw = wl.methods[method]
    torch.manual_seed(seed)
    model = wl.make_model().to(device)
    x, y, dtype = wl.x, wl.y, wl.autocast
    if mode == "captured":
        from focalsam.train.capture import CapturedStep

        opt = build_optimizer(method, model, kw, False if kw is not None else None)
        captured = CapturedStep(opt, model, per_sample_ce, x, y, autocast=dtype)
        return (lambda: captured(x, y)), model, opt
    run: nn.Module = model
    if mode in ("compiled", "reduce_overhead"):
        no_donated_buffers()
    if mode == "compiled":
        run = torch.compile(model, backend=backend)  # type: ignore[assignment]
    elif mode == "reduce_overhead":
        run = torch.compile(model, mode="reduce-overhead")  # type: ignore[assignment]
    opt = build_optimizer(method, model, kw, strict)
    mark = torch.compiler.cudagraph_mark_step_begin if mode == "reduce_overhead" else None

    def closure() -> Tensor:
        with _autocast(device, dtype):
            logits = run(x)
        return per_sample_ce(logits.float(), y)

    if kw is None:

        def sgd_step() -> None:
            if mark is not None:
                mark()
            opt.zero_grad(set_to_none=False)
            losses = closure()
            (losses.sum() / losses.shape[0]).backward()
            opt.step()

        return sgd_step, model, opt

    def sam_step() -> None:
        if mark is not None:
            mark()
        opt.step(closure, y)

    return sam_step, model, opt


def no_donated_buffers() -> None:
    """Turn off AOTAutograd's donated buffers: a compiled backward that donates its saved
    tensors refuses ``retain_graph=True``, which the two clean backward passes of a
    Focal-SAM / ImbSAM step need (it fails once a plain step, or a step whose sharp
    weights are all zero, compiled the backward first)."""
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False


def bare_passes(wl: Workload, device: torch.device) -> Callable[[], None]:
    """The passes of a Focal-SAM step with no optimizer work: 2 forward + 3 backward."""
    torch.manual_seed(0)
    bare = wl.make_model().to(device)
    weights = torch.rand(wl.x.shape[0], device=device)
    x, y = wl.x, wl.y

    def passes() -> None:
        for p in bare.parameters():
            p.grad = None
        with _autocast(device, wl.autocast):
            logits = bare(x)
        losses = per_sample_ce(logits.float(), y)
        (losses @ weights).backward(retain_graph=True)
        (losses @ (1 - weights)).backward()
        with _autocast(device, wl.autocast):
            logits = bare(x)
        (per_sample_ce(logits.float(), y) @ weights).backward()

    return passes


def buffer_megabytes(opt: torch.optim.Optimizer) -> float:
    """Memory the optimizer holds between steps: base state plus SAM buffers."""
    tensors = [t for s in opt.state.values() for t in s.values() if isinstance(t, Tensor)]
    for attr in ("_eps", "_backup"):
        pool = getattr(opt, attr, None)
        if pool is not None:
            tensors += list(pool.values())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


WORKLOADS.update(resnet32=resnet_workload, vit_b16=vit_workload, small_cnn=small_cnn_workload)
