"""Sync-free steps of the group-wise engine (SSE-SAM with ``strict_checks=False``): no host
read, every group whose radius is active gets its passes whether the batch holds a sample
of it or not, and the result equals the strict step's (parameters, momentum, BatchNorm
statistics); failed checks roll the step back on the device and are reported later.
CC-SAM's network mode, whose radius needs the counts, refuses it."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    InfGrad,
    NoHostSync,
    assert_states_close,
    checkpoint_roundtrip,
    demo_config,
    patch_host_reads,
    run_gloo,
    silent_trainer,
    three_group_batches,
    three_group_engine,
    training_state,
)
from conftest import tiny_batches as make_batches
from conftest import tiny_model as make_model
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from focalsam.optim import (
    CCSAM,
    InvalidHyperparameterError,
    LabelError,
    NonFiniteLossError,
    SkipReport,
    get_method,
)
from focalsam.optim.ccsam import GroupwiseCCSAM
from focalsam.optim.groupwise import GroupwiseSAM
from focalsam.optim.sse_sam import SSESAM

COUNTS = [40, 20, 6, 2]  # eta 10: head classes 0, 1; tail classes 2, 3
SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}
EPOCHS, STEPS = 2, 4  # gamma 0.5: the head's radius is 0 from epoch 1


def sse(net: nn.Module, strict: bool | None, **kw) -> SSESAM:
    opts = {"class_counts": COUNTS, "eta": 10.0, "rho_head": 0.2, "rho_tail": 0.5, "gamma": 0.5}
    return SSESAM(net.parameters(), torch.optim.SGD, strict_checks=strict, **{**opts, **SGD, **kw})


def ce(model: nn.Module, x: Tensor, y: Tensor):
    return lambda: F.cross_entropy(model(x), y, reduction="none")


def batches(seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    """Two epochs of 4 batches of 12; in each epoch one batch has no tail sample and one
    no head sample."""
    out = make_batches(EPOCHS * STEPS, batch=12, seed=seed)
    for i in (1, 1 + STEPS):
        out[i] = (out[i][0], out[i][1].clamp(max=1))  # classes 0, 1: no tail sample
    for i in (2, 2 + STEPS):
        out[i] = (out[i][0], out[i][1].clamp(min=2))  # classes 2, 3: no head sample
    return out


def assert_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def train(model: nn.Module, opt: SSESAM, data: list[tuple[Tensor, Tensor]], start: int = 0):
    for i, (x, y) in enumerate(data[start:], start):
        opt.set_epoch(i // STEPS, EPOCHS)
        opt.step(ce(model, x, y), y)


# ------------------------------------------------------------- equal to strict
@pytest.mark.parametrize("bn_update", ["both", "clean"])
def test_sync_free_equals_strict_with_absent_groups_and_the_cut(bn_update):
    strict_model, free_model = make_model(), make_model()
    kw = {"bn_update": bn_update, "max_grad_norm": 1.0}
    strict = sse(strict_model, True, model=strict_model, **kw)
    free = sse(free_model, False, model=free_model, **kw)
    calls = {"strict": 0, "free": 0}
    strict_model.register_forward_hook(lambda *_: calls.__setitem__("strict", calls["strict"] + 1))
    free_model.register_forward_hook(lambda *_: calls.__setitem__("free", calls["free"] + 1))
    data = batches()
    train(strict_model, strict, data)
    train(free_model, free, data)
    assert_states_close(training_state(strict_model, strict), training_state(free_model, free))
    assert free.take_skip_report() is None
    # the sync-free step really ran the absent groups' passes: 1 + 2 forward passes per
    # step before the cut, 1 + 1 after it; strict skips the tail-less and head-less ones
    assert calls["free"] == STEPS * 3 + STEPS * 2 == free.pass_counts["forward"]
    assert calls["strict"] == calls["free"] - 3 == strict.pass_counts["forward"]
    start = make_model().state_dict()
    assert all(not torch.equal(v, start[k]) for k, v in free_model.state_dict().items())


@pytest.mark.parametrize("per_tensor", [False, True])
def test_the_engine_sync_free_equals_strict_with_three_groups(per_tensor):
    """The generic engine: three groups, one with radius 0 (folded into the clean pass),
    a clean weight, two parameter groups with their own rho, every other step plain
    (sam_every 2); batches missing each group in turn."""
    data = three_group_batches()
    states = []
    for strict in (True, False):
        model = make_model()
        opt = three_group_engine(model, per_tensor=per_tensor, strict_checks=strict)
        for x, y in data:
            opt.step(ce(model, x, y), y)
        assert opt.take_skip_report() is None
        states.append(training_state(model, opt))
    assert_states_close(*states)


def test_a_group_without_a_class_gets_no_pass():
    """eta 2: no class has fewer than 2 images, so there is no tail; the host knows it
    and a sync-free step runs SAM's 2 + 2 passes, as strict (then plain SGD's 1 + 1)."""
    x, y = make_batches(1)[0]
    states = []
    for strict in (True, False):
        model = make_model()
        opt = sse(model, strict, model=model, eta=2.0)
        for epoch in (0, 1):
            opt.set_epoch(epoch, EPOCHS)
            opt.step(ce(model, x, y), y)
        assert opt.tail_classes == [] and opt.passes_per_step() == (1.5, 1.5)
        states.append(training_state(model, opt))
    assert_states_close(*states)


def test_no_host_read_in_a_sync_free_step(monkeypatch):
    """Before and after the cut, with a batch lacking the tail: a dispatch mode that fails
    on any op reading a value on the host, and patched host reads (``item``, ``tolist``,
    ``bool``...), let the sync-free step through; the strict step trips the patch."""
    data = batches()
    for strict in (False, True):
        model = make_model()
        opt = sse(model, strict, model=model, max_grad_norm=1.0)
        train(model, opt, data[:1])  # the base optimizer's state exists: a steady step
        guards = ["patch"] if strict else ["dispatch", "patch"]
        for guard in guards:
            with monkeypatch.context() as m:
                if guard == "patch":
                    patch_host_reads(m)
                with NoHostSync() if guard == "dispatch" else contextlib.nullcontext():
                    for epoch in (0, 1):
                        opt.set_epoch(epoch, EPOCHS)
                        x, y = data[1]  # no tail sample
                        if strict:
                            with pytest.raises(AssertionError, match="host"):
                                opt.step(ce(model, x, y), y)
                        else:
                            opt.step(ce(model, x, y), y)
        if not strict:
            assert opt.pass_counts["steps"] == 5 and opt.take_skip_report() is None


def test_a_grad_scaler_step_and_its_overflow_equal_strict():
    """With an fp16 GradScaler (not sync-free: the scaler reads its flag): the same steps,
    and an overflow in grad L_k makes the scaler skip the step and back off, as strict."""
    x, y = make_batches(1)[0]
    results = []
    for strict in (True, False):
        model = make_model()
        opt = sse(model, strict, model=model)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        opt.step(ce(model, x, y), y, scaler=scaler)
        before = training_state(model, opt)
        overflow = lambda m=model: F.cross_entropy(InfGrad.apply(m(x)), y, reduction="none")  # noqa: E731
        opt.step(overflow, y, scaler=scaler)
        after = training_state(model, opt)
        names = [n for n, _ in model.named_parameters()]
        names += [k for k in after if k.startswith("state.")]  # momentum
        assert len(names) == 12 and all(torch.equal(before[k], after[k]) for k in names)
        opt.step(ce(model, x, y), y, scaler=scaler)
        results.append((training_state(model, opt), scaler.get_scale(), opt.take_skip_report()))
    (strict_state, strict_scale, _), (free_state, free_scale, report) = results
    assert strict_scale == free_scale == 2.0**9
    assert report is None  # an fp16 overflow is the scaler's to skip, not an error
    assert_states_close(strict_state, free_state)


# ------------------------------------------------------------- failed checks
def _bad_closure(model, x, y, where, calls):
    """The losses of the step's calls: call 1 at theta, 2 at theta + eps_head, 3 at
    theta + eps_tail; one of them NaN."""
    nan_at = {"theta": 1, "head": 2, "tail": 3}[where]

    def closure():
        calls.append(1)
        losses = F.cross_entropy(model(x), y, reduction="none")
        return losses * float("nan") if len(calls) == nan_at else losses

    return closure


@pytest.mark.parametrize(
    ("where", "reason", "error"),
    [
        ("theta", "non-finite loss at theta", NonFiniteLossError),
        ("head", "non-finite loss at theta + eps", NonFiniteLossError),
        ("tail", "non-finite loss at theta + eps", NonFiniteLossError),
        ("label", "label out of range [0, 4): got labels in [0, 7]", LabelError),
    ],
)
def test_a_failed_check_rolls_the_step_back_and_is_reported(where, reason, error):
    model = make_model()  # with BatchNorm
    opt = sse(model, False, model=model, max_grad_norm=1.0)
    data = make_batches(4)
    train(model, opt, data[:2])
    x, y = data[2]
    before = training_state(model, opt)
    if where == "label":
        bad = y.clone()
        bad[3] = 7  # the closure clamps, so only the check sees it
        opt.step(lambda: F.cross_entropy(model(x), bad.clamp(max=3), reduction="none"), bad)
    else:
        calls: list[int] = []
        opt.step(_bad_closure(model, x, y, where, calls), y)  # no raise
        assert len(calls) == 3
    assert_equal(before, training_state(model, opt))  # params, momentum, BatchNorm statistics
    train(model, opt, data[3:])  # the next good step proceeds
    after = training_state(model, opt)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert not torch.equal(after["0.weight"], before["0.weight"])
    report = opt.take_skip_report()
    assert isinstance(report, SkipReport)
    assert (report.count, report.first_index) == (1, 2)
    assert report.reason.startswith(reason)
    if where in ("head", "tail"):
        assert "theta + eps" in report.reason
    assert isinstance(report.error(), error)
    assert opt.take_skip_report() is None  # reset


def test_the_strict_default_on_the_cpu_still_raises():
    model = make_model()
    opt = sse(model, None, model=model)  # None: strict on CPU parameters
    x, y = make_batches(1)[0]
    with pytest.raises(NonFiniteLossError):
        opt.step(lambda: F.cross_entropy(model(x), y, reduction="none") * float("nan"), y)
    assert opt.take_skip_report() is None


# ------------------------------------------------------------- resume
def test_resume_equals_uninterrupted_in_sync_free_mode():
    data = batches()
    full = make_model()
    full_opt = sse(full, False, model=full)
    train(full, full_opt, data)

    first = make_model()
    opt = sse(first, False, model=first)
    train(first, opt, data[: STEPS - 1])  # stop mid-epoch, before the cut
    saved = checkpoint_roundtrip({"model": first.state_dict(), "opt": opt.state_dict()})
    resumed = make_model(seed=7)
    resumed.load_state_dict(saved["model"])
    opt2 = sse(resumed, False, model=resumed)
    opt2.load_state_dict(saved["opt"])
    train(resumed, opt2, data, start=STEPS - 1)
    assert_equal(training_state(full, full_opt), training_state(resumed, opt2))
    assert opt2.pass_counts == full_opt.pass_counts


# ------------------------------------------------------------- DDP
def _ddp_batches() -> list[tuple[Tensor, Tensor]]:
    """Global batches of 12 (6 per replica) over two epochs: replica 0 has no tail sample
    (steps 1 and 5), no tail sample anywhere (steps 2 and 6)."""
    out = make_batches(EPOCHS * STEPS, batch=12, seed=4)
    partial = torch.tensor([0, 1, 0, 1, 1, 0, 2, 3, 0, 3, 1, 2])
    head_only = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0])
    for i in (1, 1 + STEPS):
        out[i] = (out[i][0], partial)
    for i in (2, 2 + STEPS):
        out[i] = (out[i][0], head_only)
    return out


#: (broadcast_buffers, ascent_all_reduce) of the DDP runs
DDP_CASES = [(True, False), (True, True), (False, False)]


def _ddp_worker(rank: int, world: int, out: str) -> None:
    results = {}
    for broadcast, ascent_all_reduce in DDP_CASES:
        for strict in (True, False):
            model = DDP(make_model(), broadcast_buffers=broadcast)  # with BatchNorm
            opt = sse(model.module, strict, model=model, ascent_all_reduce=ascent_all_reduce)
            for step, (x, y) in enumerate(_ddp_batches()):
                opt.set_epoch(step // STEPS, EPOCHS)
                xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
                opt.step(ce(model, xs, ys), ys)
            results[(broadcast, ascent_all_reduce, strict)] = training_state(model.module, opt)
    # a label out of range on replica 1 only: both replicas skip the step
    model = DDP(make_model())
    opt = sse(model.module, False, model=model)
    x, y = _ddp_batches()[0]
    xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
    opt.step(ce(model, xs, ys), ys)
    before = training_state(model.module, opt)
    bad = ys.clone()
    if rank == 1:
        bad[0] = 9  # the closure keeps the true labels: only the check sees it
    opt.step(ce(model, xs, ys), bad)
    skipped = training_state(model.module, opt)
    report = opt.take_skip_report()
    torch.save(
        {
            "results": results,
            "unchanged": all(torch.equal(before[k], skipped[k]) for k in before),
            "reason": None if report is None else report.reason,
        },
        f"{out}.{rank}",
    )


def test_ddp_sync_free_equals_strict_ddp_and_a_failed_replica_skips_everywhere(tmp_path: Path):
    """Parameters and momentum on every replica, and BatchNorm statistics on replica 0 (the
    one DDP broadcasts buffers from), equal strict DDP. Replica 1's statistics equal too
    without the broadcast; with it, DDP broadcasts at a forward that follows a synced one,
    and a strict step without perturbed pass (no tail sample anywhere, after the cut)
    syncs none, so replica 1's statistics differ until the next broadcast."""
    out = str(tmp_path / "result")
    run_gloo(_ddp_worker, 2, tmp_path / "store", out)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    for rank, r in enumerate(ranks):
        for broadcast, ascent_all_reduce in DDP_CASES:
            strict = r["results"][(broadcast, ascent_all_reduce, True)]
            free = r["results"][(broadcast, ascent_all_reduce, False)]
            if rank == 1 and broadcast:
                strict = {k: v for k, v in strict.items() if "running" not in k}
                free = {k: v for k, v in free.items() if "running" not in k}
            assert_states_close(strict, free)
        assert r["unchanged"]
    assert ranks[0]["reason"] == "a check failed on another replica"
    assert ranks[1]["reason"].startswith("label out of range [0, 4)")


# ------------------------------------------------------------- CC-SAM, other radii
def test_ccsam_network_mode_refuses_sync_free_steps_and_says_why():
    model = make_model(batchnorm=False)
    counts = [50, 20, 6, 3]
    for build in (
        lambda: GroupwiseCCSAM(model.parameters(), class_counts=counts, strict_checks=False),
        lambda: CCSAM(
            model.parameters(), class_counts=counts, mode="network", strict_checks=False, lr=0.1
        ),
    ):
        with pytest.raises(InvalidHyperparameterError) as info:
            build()
        message = str(info.value)
        assert "strict_checks=False is refused" in message
        assert "every class of the dataset" in message and "100 per step on CIFAR-100" in message
    opt = GroupwiseCCSAM(model.parameters(), class_counts=counts, lr=0.1)  # None: strict
    x, y = make_batches(1)[0]
    opt.step(ce(model, x, y), y)
    assert opt.take_skip_report() is None


class _CountedRadius:
    """A radius that takes the group's count: not sync-free."""

    sync_free = False

    def active(self, group: int) -> bool:
        return True

    def radius(self, group, grad_norm, size, batch, params):
        return 0.1 * size / batch


def test_a_radius_that_needs_the_counts_refuses_sync_free_steps():
    model = make_model(batchnorm=False)
    with pytest.raises(InvalidHyperparameterError, match="_CountedRadius.*sample count"):
        GroupwiseSAM(
            model.parameters(),
            group_of=[0, 0, 1, 1],
            radius=_CountedRadius(),
            strict_checks=False,
            lr=0.1,
        )
    assert get_method("sse_sam").sync_free


# ------------------------------------------------------------- the trainer
def test_the_trainer_trains_sse_sam_sync_free_as_strict(tmp_path):
    """``focalsam train --optimizer sse_sam optim.strict_checks=false``: the same weights
    and BatchNorm statistics as the strict run, across the cut."""
    kw = {"optimizer": "sse_sam", "optim.sse_sam.gamma": 0.5}
    weights = []
    for strict in (True, False):
        cfg = demo_config(tmp_path / f"strict-{strict}", strict_checks=strict, **kw)
        with silent_trainer(cfg) as t:
            t.fit()
            weights.append({k: v.clone() for k, v in t.model.state_dict().items()})
    assert_equal(*weights)
