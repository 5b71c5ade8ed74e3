"""Sync-free steps (strict_checks=False): no host-device sync, failed checks undo the
update on the device, and the skips are reported later."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    COUNTS,
    InfGrad,
    NoHostSync,
    build,
    patch_host_reads,
    per_sample_ce,
    tiny_batches,
    tiny_model,
)

from focalsam.optim import (
    CCSAM,
    InvalidHyperparameterError,
    LabelError,
    NonFiniteLossError,
    SkipReport,
    create_optimizer,
)
from focalsam.optim.policies.syncfree import host_state_reason


def snapshot(model, opt):
    """Parameters, buffers and optimizer state, cloned."""
    state = {
        i: {k: v.clone() for k, v in opt.state[p].items()}
        for i, p in enumerate(model.parameters())
        if p in opt.state
    }
    return {k: v.clone() for k, v in model.state_dict().items()}, state


def assert_same(a, b):
    (sd_a, st_a), (sd_b, st_b) = a, b
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), k
    assert st_a.keys() == st_b.keys()
    for i in st_a:
        assert st_a[i].keys() == st_b[i].keys()
        for k in st_a[i]:
            assert torch.equal(st_a[i][k], st_b[i][k]), (i, k)


@pytest.mark.parametrize("where", ["clean", "perturbed"])
def test_a_nan_loss_skips_the_step_on_the_device(where):
    model = tiny_model()  # with BatchNorm
    opt = build("focal_sam", model, model=model, strict_checks=False, max_grad_norm=1.0)
    batches = tiny_batches(6)
    calls = []

    def closure_for(step, x, y):
        def closure():
            calls.append(step)
            losses = F.cross_entropy(model(x), y, reduction="none")
            nth = calls.count(step)
            bad = step == 2 and (nth == 1) == (where == "clean")
            return losses * float("nan") if bad else losses

        return closure

    for step, (x, y) in enumerate(batches):
        if step == 2:
            before = snapshot(model, opt)
        opt.step(closure_for(step, x, y), y)
        if step == 2:
            assert_same(before, snapshot(model, opt))  # params, momentum, BN statistics
            after_skip = snapshot(model, opt)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(after_skip[0]["0.weight"], model.state_dict()["0.weight"])
    report = opt.take_skip_report()
    assert isinstance(report, SkipReport)
    assert (report.count, report.first_index) == (1, 2)
    assert "non-finite loss" in report.reason
    assert ("theta + eps" in report.reason) == (where == "perturbed")
    assert isinstance(report.error(), NonFiniteLossError)
    assert opt.take_skip_report() is None  # reset
    x, y = batches[0]
    for scale in (1.0, float("nan"), 1.0):  # counted from the last report: the bad one is 1
        opt.step(lambda s=scale: F.cross_entropy(model(x), y, reduction="none") * s, y)
    report = opt.take_skip_report()
    assert report is not None and (report.count, report.first_index) == (1, 1)


def test_a_skipped_first_step_leaves_no_state():
    """Skipped before any state existed: the run continues as if it never happened."""
    batches = tiny_batches(4)
    m1, m2 = tiny_model(), tiny_model()
    o1 = build("sam", m1, model=m1, strict_checks=False)
    o2 = build("sam", m2, model=m2, strict_checks=False)
    x, y = batches[0]
    o1.step(lambda: F.cross_entropy(m1(x), y, reduction="none") * float("nan"), y)
    for x, y in batches[1:]:
        o1.step(per_sample_ce(m1, x, y), y)
        o2.step(per_sample_ce(m2, x, y), y)
    assert_same(snapshot(m1, o1), snapshot(m2, o2))
    report = o1.take_skip_report()
    assert report is not None and (report.count, report.first_index) == (1, 0)


@pytest.mark.parametrize("name", ["plain", "sam", "asam", "imbsam", "focal_sam"])
def test_sync_free_equals_strict(name):
    m1, m2 = tiny_model(), tiny_model()
    o1, o2 = (
        build(name, m1, model=m1, strict_checks=True),
        build(name, m2, model=m2, strict_checks=False),
    )
    for x, y in tiny_batches(4):
        o1.step(per_sample_ce(m1, x, y), y)
        o2.step(per_sample_ce(m2, x, y), y)
    assert_same(snapshot(m1, o1), snapshot(m2, o2))
    assert o2.take_skip_report() is None


def test_imbsam_without_tail_samples_keeps_batchnorm_statistics_like_strict():
    """A batch with no tail class: strict skips the perturbed forward (all sharp weights
    zero); sync-free runs it (no host read to decide) and must put the statistics back."""
    m1, m2 = tiny_model(), tiny_model()
    o1, o2 = (
        build("imbsam", m1, model=m1, strict_checks=True),
        build("imbsam", m2, model=m2, strict_checks=False),
    )
    calls = {1: 0, 2: 0}
    m1.register_forward_hook(lambda *_: calls.__setitem__(1, calls[1] + 1))
    m2.register_forward_hook(lambda *_: calls.__setitem__(2, calls[2] + 1))
    for step, (x, y) in enumerate(tiny_batches(4)):
        if step % 2 == 0:
            y = y.clamp(max=1)  # classes 0 and 1 only: no tail sample (eta=10: tail 2, 3)
        o1.step(per_sample_ce(m1, x, y), y)
        o2.step(per_sample_ce(m2, x, y), y)
    assert calls[1] < calls[2]  # the sync-free step really ran the extra forwards
    assert_same(snapshot(m1, o1), snapshot(m2, o2))


@pytest.mark.parametrize("guard", ["dispatch", "patch"])
@pytest.mark.parametrize("name", ["sam", "focal_sam"])
def test_no_host_sync_in_a_sync_free_step(name, guard, monkeypatch):
    x, y = tiny_batches(1)[0]
    for strict in (False, True):
        model = tiny_model()
        opt = build(name, model, model=model, strict_checks=strict, max_grad_norm=1.0)
        opt.step(per_sample_ce(model, x, y), y)  # state exists: the steady-state step
        with monkeypatch.context() as m:
            if guard == "patch":
                patch_host_reads(m)
            ctx = NoHostSync() if guard == "dispatch" else contextlib.nullcontext()
            with ctx:
                if strict:
                    with pytest.raises(AssertionError, match="host"):
                        opt.step(per_sample_ce(model, x, y), y)
                else:
                    opt.step(per_sample_ce(model, x, y), y)
                    opt.step_accumulated(
                        [
                            (per_sample_ce(model, x[:5], y[:5]), y[:5]),
                            (per_sample_ce(model, x[5:], y[5:]), y[5:]),
                        ]
                    )


def test_labels_out_of_range_skip_the_step():
    model = tiny_model()
    opt = build("focal_sam", model, model=model, strict_checks=False)
    x, y = tiny_batches(1)[0]
    opt.step(per_sample_ce(model, x, y), y)
    bad = y.clone()
    bad[3] = 7
    before = snapshot(model, opt)
    # the closure's own loss must not index out of bounds: it clamps
    opt.step(lambda: F.cross_entropy(model(x), bad.clamp(max=3), reduction="none"), bad)
    assert_same(before, snapshot(model, opt))
    opt.step(per_sample_ce(model, x, y), y)
    report = opt.take_skip_report()
    assert report is not None and (report.count, report.first_index) == (1, 1)
    assert "label out of range [0, 4)" in report.reason and "[0, 7]" in report.reason
    assert isinstance(report.error(), LabelError)


def test_strict_default_on_the_cpu_raises_at_once():
    model = tiny_model()
    opt = build("focal_sam", model, model=model)  # strict_checks=None: strict on CPU parameters
    x, y = tiny_batches(1)[0]
    with pytest.raises(NonFiniteLossError):
        opt.step(lambda: F.cross_entropy(model(x), y, reduction="none") * float("nan"), y)
    assert opt.take_skip_report() is None


def test_scaler_overflow_is_the_scalers_to_skip():
    model = tiny_model().float()
    opt = build("focal_sam", model, model=model, strict_checks=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x, y = tiny_batches(1)[0]
    x = x.float()
    opt.step(lambda: F.cross_entropy(model(x), y, reduction="none"), y, scaler=scaler)
    before, scale = snapshot(model, opt), scaler.get_scale()
    opt.step(
        lambda: F.cross_entropy(InfGrad.apply(model(x)), y, reduction="none"), y, scaler=scaler
    )
    assert_same(before, snapshot(model, opt))  # BatchNorm statistics too
    assert scaler.get_scale() == scale * 0.5
    assert opt.take_skip_report() is None  # an fp16 overflow is no error
    opt.step(lambda: F.cross_entropy(model(x), y, reduction="none"), y, scaler=scaler)
    assert not torch.equal(before[0]["0.weight"], model.state_dict()["0.weight"])


def test_options_and_host_state():
    params = list(tiny_model().parameters())
    with pytest.raises(InvalidHyperparameterError, match="strict_checks"):
        create_optimizer("sam", params, "sgd", lr=0.1, strict_checks="yes")
    adam = torch.optim.Adam(params, lr=0.1)
    assert "capturable=True" in host_state_reason(adam, torch.device("cuda"))
    assert host_state_reason(adam, torch.device("cpu")) is None
    assert host_state_reason(torch.optim.SGD(params, lr=0.1), torch.device("cuda")) is None
    model = tiny_model()
    create_optimizer("sam", model.parameters(), "adamw", lr=0.1, strict_checks=False)  # CPU: fine


def test_ccsam_checks_strictly():
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 4))
    kw = {"class_counts": COUNTS, "classifier": model[2], "lr": 0.1}
    with pytest.raises(InvalidHyperparameterError, match="strictly"):
        CCSAM(model.parameters(), torch.optim.SGD, strict_checks=False, **kw)
    opt = CCSAM(model.parameters(), torch.optim.SGD, strict_checks=True, **kw)
    assert opt.take_skip_report() is None


@pytest.mark.parametrize("method", ["sam", "sse_sam"])
def test_sync_free_steps_are_refused_up_front_when_a_skip_could_not_be_rolled_back(method):
    """Adam without capturable=True keeps its step count on the host: off the CPU a
    skipped sync-free step could not undo it, so strict_checks=False is refused when the
    optimizer is built (parameters on the meta device stand in for an accelerator)."""
    from focalsam.optim import get_method

    params = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    with pytest.raises(InvalidHyperparameterError, match="cannot roll back a skipped step"):
        get_method(method).build(
            params, "adam", class_counts=COUNTS, settings={"strict_checks": False}
        )
