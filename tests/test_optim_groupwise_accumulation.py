"""Gradient accumulation for the group-wise engine (SSE-SAM): ``K`` micro-batches make one
step equal to :meth:`step` on their concatenation, strict and sync-free, with an fp16
scaler, a failed sync-free check, BatchNorm, DDP and the trainer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    InfGrad,
    assert_states_close,
    count_all_reduces,
    demo_config,
    run_gloo,
    silent_trainer,
    three_group_batches,
    three_group_engine,
    tiny_batches,
    tiny_model,
    training_state,
)
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from focalsam.optim import CCSAM, AccumulationError, NonFiniteLossError, SkipReport
from focalsam.optim.ccsam import GroupwiseCCSAM
from focalsam.optim.sse_sam import SSESAM

COUNTS = [40, 20, 6, 2]
ETA = 10.0  # tail: classes 2 and 3
SGD = dict(lr=0.1, momentum=0.9, weight_decay=1e-3)
#: uneven splits of a batch of 12: two and three micro-batches
SPLITS = [(5, 7), (3, 4, 5)]


def sse(net: nn.Module, strict: bool, **kw) -> SSESAM:
    opts = dict(class_counts=COUNTS, eta=ETA, rho_head=0.2, rho_tail=0.5, gamma=0.5)
    return SSESAM(net.parameters(), torch.optim.SGD, strict_checks=strict, **opts, **SGD, **kw)


def ce(model: nn.Module, x: Tensor, y: Tensor):
    return lambda: F.cross_entropy(model(x), y, reduction="none")


def micro_of(model: nn.Module, x: Tensor, y: Tensor, split: tuple[int, ...]):
    return [(ce(model, xm, ym), ym) for xm, ym in zip(x.split(split), y.split(split))]


def batches_with_holes(seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    """Batches of 12: random; the first 5 samples without a tail class (the first
    micro-batch of a 5/7 split lacks the tail); no tail sample at all."""
    data = tiny_batches(3, batch=12, seed=seed)
    y = data[1][1].clone()
    y[:5] = y[:5] % 2
    data[1] = (data[1][0], y)
    data[2] = (data[2][0], data[2][1] % 2)
    return data


def run_sse(strict: bool, split: tuple[int, ...] | None, model=None, **kw):
    """Two epochs of the batches (the cut at epoch 1), accumulated over ``split`` or one
    step per batch (``None``)."""
    model = model if model is not None else tiny_model(batchnorm=False)
    opt = sse(model, strict, model=model, **kw)
    for epoch in range(2):
        opt.set_epoch(epoch, 2)
        for x, y in batches_with_holes():
            if split is None:
                opt.step(ce(model, x, y), y)
            else:
                outs = opt.step_accumulated(micro_of(model, x, y, split))
                assert [o.shape[0] for o in outs] == list(split)
    return model, opt


# ------------------------------------------------------------- equal to one step
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("strict", [True, False])
def test_sse_sam_accumulation_equals_one_step_on_the_whole_batch(strict, split):
    """Before and after the cut, with a micro-batch and a whole batch lacking the tail."""
    whole, opt_w = run_sse(strict, None)
    accum, opt_a = run_sse(strict, split)
    assert_states_close(training_state(whole, opt_w), training_state(accum, opt_a))
    assert opt_a.take_skip_report() is None
    # counted over the whole batch: the micro-batches make one pass together
    assert opt_a.pass_counts == opt_w.pass_counts
    assert opt_a.pass_counts["steps"] == opt_w.pass_counts["steps"] == 6
    # the last batch has no tail sample: strict perturbs nothing, sync-free the tail
    assert opt_a.last_radii.keys() == opt_w.last_radii.keys() == (set() if strict else {1})
    for k, r in opt_w.last_radii.items():
        torch.testing.assert_close(opt_a.last_radii[k], r, atol=0, rtol=0)


@pytest.mark.parametrize("strict", [True, False])
def test_clipping_applies_to_the_whole_accumulated_gradient(strict):
    whole, opt_w = run_sse(strict, None, max_grad_norm=0.05)
    accum, opt_a = run_sse(strict, (5, 7), max_grad_norm=0.05)
    unclipped, _ = run_sse(strict, (5, 7))
    assert_states_close(training_state(whole, opt_w), training_state(accum, opt_a))
    assert not torch.allclose(accum[0].weight, unclipped[0].weight)  # the clip was active


@pytest.mark.parametrize("strict", [True, False])
def test_one_micro_batch_is_step_bit_for_bit(strict):
    a, b = tiny_model(batchnorm=False), tiny_model(batchnorm=False)
    opt_a, opt_b = sse(a, strict, model=a), sse(b, strict, model=b)
    for x, y in batches_with_holes():
        out_a = opt_a.step(ce(a, x, y), y)
        (out_b,) = opt_b.step_accumulated([(ce(b, x, y), y)])
        assert torch.equal(out_a, out_b)
    sa, sb = training_state(a, opt_a), training_state(b, opt_b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("per_tensor", [False, True])
@pytest.mark.parametrize("strict", [True, False])
def test_the_engine_with_three_groups_accumulates_exactly(strict, per_tensor):
    """Three groups, one with radius 0 (folded into the clean pass), a clean weight,
    two parameter groups with their own rho, every other step plain (sam_every 2);
    batches missing groups."""
    data = three_group_batches()
    states = []
    for split in (None, (4, 8), (2, 5, 5)):
        model = tiny_model(batchnorm=False)
        opt = three_group_engine(model, per_tensor=per_tensor, strict_checks=strict)
        for x, y in data:
            if split is None:
                opt.step(ce(model, x, y), y)
            else:
                opt.step_accumulated(micro_of(model, x, y, split))
        assert opt.take_skip_report() is None
        states.append(training_state(model, opt))
    assert_states_close(states[0], states[1])
    assert_states_close(states[0], states[2])


# ------------------------------------------------------------- AMP, failed checks
@pytest.mark.parametrize("strict", [True, False])
def test_a_grad_scaler_accumulates_exactly_and_one_overflow_skips_the_whole_step(strict):
    x, y = batches_with_holes()[0]
    a, b = tiny_model(batchnorm=False), tiny_model(batchnorm=False)
    opt_a, opt_b = sse(a, strict), sse(b, strict)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for _ in range(2):
        opt_a.step_accumulated(micro_of(a, x, y, (5, 7)), scaler=scaler)
        opt_b.step(ce(b, x, y), y)
    assert_states_close(training_state(a, opt_a), training_state(b, opt_b))

    before = training_state(a, opt_a)
    calls: list[int] = []

    def overflowing() -> Tensor:  # an overflow in the backward passes at theta only
        calls.append(1)
        losses = ce(a, x[5:], y[5:])()
        return InfGrad.apply(losses) if len(calls) == 1 else losses

    micro = [(ce(a, x[:5], y[:5]), y[:5]), (overflowing, y[5:])]
    scale = scaler.get_scale()
    opt_a.step_accumulated(micro, scaler=scaler)
    assert_states_close(before, training_state(a, opt_a), atol=0)  # params and momentum unchanged
    assert scaler.get_scale() == scale / 2  # one update, backed off once
    assert opt_a.take_skip_report() is None  # the scaler's to skip, not reported


@pytest.mark.parametrize("where", ["theta", "perturbed"])
def test_a_sync_free_nan_in_one_micro_batch_rolls_the_step_back_and_is_reported(where):
    data = batches_with_holes()
    model = tiny_model()  # with BatchNorm: its statistics roll back too
    opt = sse(model, False, model=model, max_grad_norm=1.0)
    opt.set_epoch(0, 2)
    opt.step_accumulated(micro_of(model, *data[0], (5, 7)))
    before = training_state(model, opt)
    x, y = data[1]
    calls: list[int] = []
    nan_at = 1 if where == "theta" else 3  # micro-batch 2: call 1 at theta, 2 and 3 perturbed

    def bad() -> Tensor:
        calls.append(1)
        losses = ce(model, x[5:], y[5:])()
        return losses * float("nan") if len(calls) == nan_at else losses

    opt.step_accumulated([(ce(model, x[:5], y[:5]), y[:5]), (bad, y[5:])])  # no raise
    assert len(calls) == 3  # both groups perturbed: 1 + 2 calls
    assert_states_close(before, training_state(model, opt), atol=0)
    opt.step_accumulated(micro_of(model, *data[2], (5, 7)))  # the next step proceeds
    assert not torch.equal(training_state(model, opt)["0.weight"], before["0.weight"])
    report = opt.take_skip_report()
    assert isinstance(report, SkipReport)
    assert (report.count, report.first_index) == (1, 1)
    assert ("theta + eps" in report.reason) == (where == "perturbed")
    assert isinstance(report.error(), NonFiniteLossError)


def test_a_strict_nan_raises_and_takes_no_step():
    x, y = batches_with_holes()[0]
    model = tiny_model(batchnorm=False)
    opt = sse(model, True)
    before = training_state(model, opt)
    nan = lambda: ce(model, x[5:], y[5:])() * float("nan")  # noqa: E731
    with pytest.raises(NonFiniteLossError, match="returned 7 non-finite losses out of 7"):
        opt.step_accumulated([(ce(model, x[:5], y[:5]), y[:5]), (nan, y[5:])])
    assert_states_close(before, training_state(model, opt), atol=0)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_labels_are_checked_before_the_first_forward():
    x, y = batches_with_holes()[0]
    model = tiny_model(batchnorm=False)
    opt = sse(model, True)
    calls: list[int] = []

    def counted() -> Tensor:
        calls.append(1)
        return ce(model, x[:5], y[:5])()

    bad = y[5:].clone()
    bad[0] = 9
    with pytest.raises(Exception, match=r"\[0, 4\)"):
        opt.step_accumulated([(counted, y[:5]), (ce(model, x[5:], y[5:]), bad)])
    with pytest.raises(Exception, match="micro-batch 1 has targets=None"):
        opt.step_accumulated([(counted, y[:5]), (ce(model, x[5:], y[5:]), None)])
    assert calls == []


# ------------------------------------------------------------- BatchNorm
@pytest.mark.parametrize("bn_update", ["both", "clean"])
def test_sync_free_accumulation_keeps_batchnorm_as_strict(bn_update):
    """With BatchNorm the steps are not the one-batch step's, but sync-free equals strict:
    the perturbed forwards of a group absent from the whole batch are put back."""
    states = []
    for strict in (True, False):
        model, opt = run_sse(strict, (5, 7), model=tiny_model(), bn_update=bn_update)
        states.append(training_state(model, opt))
    assert_states_close(*states)


def test_bn_update_clean_keeps_the_statistics_of_the_clean_passes_only():
    x, y = batches_with_holes()[0]
    model, probe = tiny_model(), tiny_model()
    opt = sse(model, True, bn_update="clean", model=model)
    opt.step_accumulated(micro_of(model, x, y, (5, 7)))
    probe(x[:5])  # one forward in train mode per micro-batch: the clean passes
    probe(x[5:])
    torch.testing.assert_close(model[1].running_mean, probe[1].running_mean, atol=0, rtol=0)
    torch.testing.assert_close(model[1].running_var, probe[1].running_var, atol=0, rtol=0)
    assert int(model[1].num_batches_tracked) == 2


# ------------------------------------------------------------- CC-SAM keeps refusing
def test_ccsam_refuses_accumulation_in_both_modes():
    counts = [30, 10, 4]
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    micro = [(ce(net, x[:3], y[:3]), y[:3]), (ce(net, x[3:], y[3:]), y[3:])]
    classifier = CCSAM(
        net.parameters(), torch.optim.SGD, class_counts=counts, classifier=net[2], lr=0.1
    )
    network = CCSAM(net.parameters(), torch.optim.SGD, class_counts=counts, mode="network", lr=0.1)
    engine = GroupwiseCCSAM(net.parameters(), class_counts=counts, lr=0.1)
    for opt in (classifier, network, engine):
        with pytest.raises(AccumulationError, match="CC-SAM cannot accumulate"):
            opt.step_accumulated(micro)


# ------------------------------------------------------------- DDP
def _ddp_batches() -> list[tuple[Tensor, Tensor]]:
    """Global batches of 12 (6 per replica): random, one where replica 0 has no tail
    sample, one with no tail sample at all."""
    batches = tiny_batches(3, batch=12, seed=4)
    batches[1] = (batches[1][0], torch.tensor([0, 1, 0, 1, 1, 0, 2, 3, 0, 3, 1, 2]))
    batches[2] = (batches[2][0], torch.tensor([0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0]))
    return batches


def _ddp_worker(rank: int, world: int, out: str, strict: bool) -> None:
    model = DDP(tiny_model(batchnorm=False))
    calls = count_all_reduces(model)
    opt = sse(model.module, strict, model=model, ascent_all_reduce=True)
    per_step = []
    for epoch in range(2):  # the second epoch is after the cut
        opt.set_epoch(epoch, 2)
        for x, y in _ddp_batches():
            xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
            before = len(calls)
            micro = [
                (lambda xm=xm, ym=ym: F.cross_entropy(model(xm), ym, reduction="none"), ym)
                for xm, ym in zip(xs.split((2, 4)), ys.split((2, 4)))
            ]
            opt.step_accumulated(micro)
            per_step.append(len(calls) - before)
    assert opt.take_skip_report() is None
    torch.save(
        {"params": [p.detach() for p in model.module.parameters()], "hooked": per_step},
        f"{out}.{rank}",
    )


@pytest.mark.parametrize("strict", [True, False])
def test_ddp_accumulation_equals_one_process_and_all_reduces_once_per_step(tmp_path, strict):
    out = str(tmp_path / "result")
    run_gloo(_ddp_worker, 2, tmp_path / "store", out, strict)
    results = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    single = tiny_model(batchnorm=False)
    opt = sse(single, True)
    for epoch in range(2):
        opt.set_epoch(epoch, 2)
        for x, y in _ddp_batches():
            opt.step(ce(single, x, y), y)
    for r in results:
        for p, q in zip(r["params"], single.parameters()):
            torch.testing.assert_close(p, q.detach(), atol=1e-12, rtol=0)
        # one gradient all-reduce per step; after the cut, the batch with no tail sample
        # has no perturbed pass in a strict step and its clean gradient is averaged by
        # hand (the last step); a sync-free step runs the tail's passes whatever it holds
        assert r["hooked"] == [1, 1, 1, 1, 1, 0 if strict else 1]


# ------------------------------------------------------------- the trainer
def test_the_trainer_accumulates_sse_sam_like_the_whole_batch(tmp_path):
    """``focalsam train --preset demo optimizer=sse_sam model=mlp train.accum_steps=2``
    (the MLP has no BatchNorm): the same weights as one step per batch, up to float32
    summation order, across the cut."""
    kw = {"optimizer": "sse_sam", "model": "mlp", "optim.sse_sam.gamma": 0.5}
    weights, passes = [], []
    for accum in (1, 2):
        cfg = demo_config(tmp_path / f"a{accum}", accum_steps=accum, **kw)
        with silent_trainer(cfg) as t:
            report = t.fit()
            weights.append({k: v.clone() for k, v in t.model.state_dict().items()})
            passes.append(report["passes_per_step"])
    one, two = weights
    for k in one:  # measured: at most 3e-8 apart (weights up to 0.19), float32 round-off
        torch.testing.assert_close(one[k], two[k], atol=1e-6, rtol=0, msg=k)
    assert passes[1] == passes[0]  # passes over the whole batch, as the one-batch step
