"""torch.compile and the captured step on the CPU.

Compiled: a few Focal-SAM steps of a small CNN with BatchNorm under ``torch.compile``
equal the same steps eager (aot_eager always; inductor, which compiles C++ with gcc,
marked slow). Captured: the CUDA graph itself needs a GPU (``benchmarks/gpu_checks.py``);
here its refusals, and the step program it captures (lr and rho read from device
tensors, fused SGD, state restored after warm-up) against the eager optimizer.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focalsam.models import create_model
from focalsam.optim import create_optimizer
from focalsam.train.capture import (
    CapturedStep,
    CaptureError,
    StepProgram,
    _Snapshot,
    check_capturable,
)

COUNTS = [50, 30, 12, 5]
FOCAL = {"class_counts": COUNTS, "rho": 0.2, "gamma": 2.0, "lam": 0.5}
SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}


def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def batches(n: int, dtype: torch.dtype = torch.float32) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(8, 3, 8, 8, generator=gen, dtype=dtype),
            torch.randint(0, len(COUNTS), (8,), generator=gen),
        )
        for _ in range(n)
    ]


def focal_sam_on_a_cnn(
    dtype: torch.dtype = torch.float32, **extra: object
) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = create_model("small_cnn", len(COUNTS), in_channels=3).to(dtype)
    opt = create_optimizer("focal_sam", model.parameters(), "sgd", **FOCAL, **SGD, **extra)
    return model, opt


def assert_same_state(a: nn.Module, b: nn.Module, atol: float, rtol: float) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol, msg=f"{name} differs")


def eager_steps(model: nn.Module, opt: torch.optim.Optimizer, data: list) -> None:
    for x, y in data:
        opt.step(lambda x=x, y=y: loss_fn(model(x), y), y)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_focal_sam_equals_eager(backend: str) -> None:
    data = batches(3)
    ref, ref_opt = focal_sam_on_a_cnn()
    model, opt = focal_sam_on_a_cnn()
    compiled = torch.compile(model, backend=backend)
    eager_steps(ref, ref_opt, data)
    for x, y in data:
        opt.step(lambda x=x, y=y: loss_fn(compiled(x), y), y)
    assert any(
        not torch.equal(p, q)
        for p, q in zip(ref.parameters(), focal_sam_on_a_cnn()[0].parameters())
    )
    assert_same_state(model, ref, atol=1e-5, rtol=1e-4)  # float32 tolerance


def test_compiled_backward_needs_donated_buffers_off_for_focal_sam() -> None:
    """Once a plain step compiled the backward (or a step whose sharp weights were all
    zero), AOTAutograd's donated buffers refuse the retained graph of Focal-SAM's two
    clean backward passes; with ``donated_buffer=False`` the step runs and equals eager."""
    import torch._functorch.config as functorch_config

    data = batches(2)
    x, y = data[0]
    with functorch_config.patch(donated_buffer=False):
        torch._dynamo.reset()
        ref, ref_opt = focal_sam_on_a_cnn()
        model, opt = focal_sam_on_a_cnn()
        compiled = torch.compile(model, backend="aot_eager")
        ref(x).logsumexp(1).mean().backward()  # a plain backward first, on both
        compiled(x).logsumexp(1).mean().backward()
        eager_steps(ref, ref_opt, data)
        for xb, yb in data:
            opt.step(lambda xb=xb, yb=yb: loss_fn(compiled(xb), yb), yb)
    torch._dynamo.reset()
    assert_same_state(model, ref, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------- captured step


def sync_free(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, torch.optim.Optimizer]:
    try:
        return focal_sam_on_a_cnn(dtype, strict_checks=False)
    except TypeError:
        pytest.skip("this focalsam's optimizers have no strict_checks option yet")


def test_capture_refuses_the_cpu_in_one_line() -> None:
    model, opt = sync_free()
    x, y = batches(1)[0]
    with pytest.raises(CaptureError, match="needs CUDA tensors") as info:
        CapturedStep(opt, model, loss_fn, x, y)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("strict", "strict_checks=True"),
        ("fp16", "GradScaler"),
        ("bn_cumulative", "momentum=None"),
        ("ccsam", "data-dependent"),
        ("adam", "not capturable"),
    ],
)
def test_capture_refuses_what_a_graph_cannot_hold(change: str, match: str) -> None:
    x, y = batches(1)[0]
    autocast = torch.float16 if change == "fp16" else None
    if change == "strict":
        model, opt = (
            focal_sam_on_a_cnn(strict_checks=True) if _has_strict() else pytest.skip("no strict")
        )
    elif change == "ccsam":
        model = create_model("small_cnn", len(COUNTS), in_channels=3)
        opt = create_optimizer(
            "ccsam", model.parameters(), "sgd", class_counts=COUNTS, classifier=model.fc, lr=0.1
        )
    elif change == "adam":
        model = create_model("small_cnn", len(COUNTS), in_channels=3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        model, opt = sync_free()
    if change == "bn_cumulative":
        model.bn1.momentum = None
    with pytest.raises(CaptureError, match=match):
        check_capturable(opt, model, x, autocast)


def _has_strict() -> bool:
    try:
        focal_sam_on_a_cnn(strict_checks=True)
    except TypeError:
        return False
    return True


def test_step_program_reads_lr_and_rho_from_device_tensors() -> None:
    """The program a graph captures (float64: fused SGD, tensor lr and rho) equals the
    eager optimizer with Python floats, while a scheduler and the rho schedule write new
    floats into the groups between steps."""
    data = batches(4, torch.float64)
    ref, ref_opt = focal_sam_on_a_cnn(torch.float64)
    model, opt = sync_free(torch.float64)
    program = StepProgram(opt, model, loss_fn, *data[0])
    group = opt.param_groups[0]
    assert isinstance(group["lr"], Tensor) and isinstance(group["rho"], Tensor)
    lr_tensor, rho_tensor = group["lr"], group["rho"]
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=1, gamma=0.5)
    for i, (x, y) in enumerate(data):
        rho = FOCAL["rho"] * (1.0 + i)
        ref_opt.param_groups[0]["rho"] = rho
        group["rho"] = rho  # a Python float, as RhoSchedule writes it
        program.options.sync()
        program.x.copy_(x)
        program.y.copy_(y)
        losses, _ = program.run()
        ref_opt.step(lambda x=x, y=y: loss_fn(ref(x), y), y)
        sched.step()
        ref_sched.step()
        assert losses.shape == (8,)
    assert group["lr"] is lr_tensor and group["rho"] is rho_tensor
    assert float(lr_tensor) == pytest.approx(SGD["lr"] * 0.5**4)
    assert_same_state(model, ref, atol=1e-12, rtol=1e-10)


def test_step_program_refuses_changed_baked_options_and_shapes() -> None:
    model, opt = sync_free()
    x, y = batches(1)[0]
    program = StepProgram(opt, model, loss_fn, x, y)
    with pytest.raises(CaptureError, match="eager"):
        program.check_batch(x[:5], y[:5])
    opt.param_groups[0]["momentum"] = 0.5
    with pytest.raises(CaptureError, match="momentum"):
        program.options.sync()


def test_snapshot_restores_weights_statistics_and_state_in_place() -> None:
    """Warm-up steps are undone: parameters, BatchNorm statistics and the momentum that
    existed are restored in place; momentum created meanwhile is zeroed (with dampening
    0 the next step then equals a first step)."""
    model, opt = focal_sam_on_a_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    addresses = [t.data_ptr() for t in model.state_dict().values()]
    snapshot = _Snapshot(model, opt)
    eager_steps(model, opt, batches(2))
    assert not torch.equal(model.bn1.running_mean, before["bn1.running_mean"])
    snapshot.restore()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [t.data_ptr() for t in model.state_dict().values()] == addresses
    assert all(float(s["momentum_buffer"].abs().sum()) == 0 for s in opt.state.values())
