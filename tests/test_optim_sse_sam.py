"""SSE-SAM and the group-wise engine: an independent reference from the paper's equations,
the stage switch (and across a resume), batches without a tail sample, AMP, clipping,
BatchNorm, DDP, the trainer and the compare command; CC-SAM's network mode, which steps
through the group-wise engine, equals a reference of its per-class loop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    InfGrad,
    checkpoint_roundtrip,
    count_all_reduces,
    demo_config,
    run_gloo,
    silent_trainer,
    tiny_batches,
    tiny_model,
)
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.parallel import DistributedDataParallel as DDP

from focalsam.optim import CCSAM, SAM, ImbSAM, InvalidHyperparameterError, get_method
from focalsam.optim.ccsam import GroupwiseCCSAM
from focalsam.optim.sse_sam import SSESAM, cut_epoch, sse_sam_groups
from focalsam.train import ConfigError, TrainingInterrupted

COUNTS = [40, 20, 6, 2]
ETA = 10.0  # tail: the classes with 6 and 2 images
RHO_HEAD, RHO_TAIL = 0.2, 0.5
SGD = dict(lr=0.1, momentum=0.9, weight_decay=1e-3)


def sse(net: nn.Module, **kw) -> SSESAM:
    opts = dict(class_counts=COUNTS, eta=ETA, rho_head=RHO_HEAD, rho_tail=RHO_TAIL, gamma=0.5)
    return SSESAM(net.parameters(), torch.optim.SGD, **{**opts, **SGD, **kw})


def ce(model: nn.Module, x: Tensor, y: Tensor):
    return lambda: F.cross_entropy(model(x), y, reduction="none")


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


# ------------------------------------------------------------- the reference
def _group_loss(
    model: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor, member: Tensor
) -> Tensor:
    """``L_k = (1/B) sum_{i in group k} l_i`` at ``params``."""
    losses = F.cross_entropy(functional_call(model, params, (x,)), y, reduction="none")
    return losses[member].sum() / len(y)


def reference_sse_sam(
    model: nn.Module,
    epochs: list[list[tuple[Tensor, Tensor]]],
    gamma: float,
    max_grad_norm: float | None = None,
) -> dict[str, Tensor]:
    """SSE-SAM from the paper's equations on a copy of ``model``'s parameters:
    ``g = sum_k grad L_k(theta + rho_k grad L_k / ||grad L_k||)``, ``L_k`` the group's
    summed loss over ``B``; tail ``n_c < eta``; rho_head = 0 from epoch ceil(gamma * E);
    then SGD with momentum and coupled weight decay (clipping ``g`` first)."""
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    buf = {k: torch.zeros_like(v) for k, v in theta.items()}
    tail = torch.tensor([n < ETA for n in COUNTS])
    total = len(epochs)
    for e, batches in enumerate(epochs):
        radii = {False: RHO_HEAD if e < math.ceil(gamma * total) else 0.0, True: RHO_TAIL}
        for x, y in batches:
            g = {k: torch.zeros_like(v) for k, v in theta.items()}
            for is_tail in (False, True):
                at = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
                member = tail[y] == is_tail
                grads = torch.autograd.grad(_group_loss(model, at, x, y, member), list(at.values()))
                norm = torch.sqrt(sum((gr**2).sum() for gr in grads))
                rho = radii[is_tail]
                if rho > 0 and norm > 0:
                    shifted = {
                        k: (v + rho * gr / norm).detach().requires_grad_(True)
                        for (k, v), gr in zip(theta.items(), grads)
                    }
                    grads = torch.autograd.grad(
                        _group_loss(model, shifted, x, y, member), list(shifted.values())
                    )
                for k, gr in zip(theta, grads):
                    g[k] += gr
            if max_grad_norm is not None:
                norm = torch.sqrt(sum((v**2).sum() for v in g.values()))
                factor = min(1.0, max_grad_norm / (float(norm) + 1e-6))
                g = {k: v * factor for k, v in g.items()}
            for k in theta:
                d = g[k] + SGD["weight_decay"] * theta[k]
                buf[k] = SGD["momentum"] * buf[k] + d
                theta[k] = theta[k] - SGD["lr"] * buf[k]
    return theta


def epochs_of(
    n_epochs: int = 3, steps: int = 2, seed: int = 1
) -> list[list[tuple[Tensor, Tensor]]]:
    batches = tiny_batches(n_epochs * steps, batch=12, seed=seed)
    return [batches[e * steps : (e + 1) * steps] for e in range(n_epochs)]


def train_sse(model: nn.Module, epochs, gamma: float = 0.5, **kw) -> SSESAM:
    opt = sse(model, gamma=gamma, **kw)
    for e, batches in enumerate(epochs):
        opt.set_epoch(e, len(epochs))
        for x, y in batches:
            opt.step(ce(model, x, y), y)
    return opt


@pytest.mark.parametrize("max_grad_norm", [None, 0.05])
def test_equals_the_paper_reference_with_both_radii_and_the_cut(max_grad_norm):
    epochs = epochs_of(3)  # gamma 0.5 of 3 epochs: both radii in epochs 0, 1; tail only in 2
    model = tiny_model(batchnorm=False)
    expected = reference_sse_sam(tiny_model(batchnorm=False), epochs, 0.5, max_grad_norm)
    train_sse(model, epochs, max_grad_norm=max_grad_norm)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], atol=1e-10, rtol=0)
    # the reference tells the two stages apart: without the cut it ends elsewhere
    no_cut = reference_sse_sam(tiny_model(batchnorm=False), epochs, 1.0, max_grad_norm)
    assert any((no_cut[k] - expected[k]).abs().max() > 1e-6 for k in expected)


def test_tail_is_fewer_than_eta_images():
    # the public code: tail = classes whose training count is strictly below eta
    assert sse_sam_groups([500, 100, 99, 5], 100).tolist() == [0, 0, 1, 1]
    assert sse(tiny_model()).tail_classes == [2, 3]


def test_after_the_cut_it_is_imbsam_with_kappa_1():
    a, b = tiny_model(batchnorm=False), tiny_model(batchnorm=False)
    opt_a = sse(a)
    opt_a.set_epoch(5, 6)
    opt_b = ImbSAM(
        b.parameters(),
        torch.optim.SGD,
        class_counts=COUNTS,
        eta=ETA,
        kappa=1.0,
        rho=RHO_TAIL,
        **SGD,
    )
    for x, y in tiny_batches(4):
        opt_a.step(ce(a, x, y), y)
        opt_b.step(ce(b, x, y), y)
    assert max_diff(a, b) < 1e-12


# ------------------------------------------------------------- the stage switch
def public_code_first_cut(gamma: float, epochs: int) -> int:
    """The public code's schedule: after each training epoch ``count += 1``, and the
    head radius is 0 once ``count >= gamma * epochs``; the first epoch run without it."""
    for count in range(1, epochs + 1):  # the count after epoch count - 1
        if count >= gamma * epochs:
            return count
    return epochs


@pytest.mark.parametrize("epochs", [3, 7, 10, 200])
@pytest.mark.parametrize("gamma", [0.1, 0.25, 0.5, 0.7, 0.95])
def test_cut_epoch_is_the_public_codes(gamma, epochs):
    assert cut_epoch(gamma, epochs) == public_code_first_cut(gamma, epochs)
    opt = sse(tiny_model(), gamma=gamma)
    cut = cut_epoch(gamma, epochs)
    if cut > 0:
        assert opt.set_epoch(cut - 1, epochs)["rho_head"] == RHO_HEAD
    if cut < epochs:
        assert opt.set_epoch(cut, epochs)["rho_head"] == 0.0


def test_gamma_bounds():
    assert sse(tiny_model(), gamma=1.0).set_epoch(9, 10)["rho_head"] == RHO_HEAD
    assert sse(tiny_model(), gamma=0.0).set_epoch(0, 10)["rho_head"] == 0.0
    with pytest.raises(InvalidHyperparameterError, match=r"gamma must lie in \[0, 1\]"):
        sse(tiny_model(), gamma=1.5)
    with pytest.raises(InvalidHyperparameterError, match="rho_tail"):
        sse(tiny_model(), rho_tail=-0.1)
    with pytest.raises(InvalidHyperparameterError, match="strict_checks"):
        sse(tiny_model(), strict_checks="no")


def test_the_cut_survives_a_resume_mid_epoch():
    epochs = epochs_of(4, steps=2)  # gamma 0.5 of 4: the cut at epoch 2
    full = tiny_model()
    train_sse(full, epochs)

    first = tiny_model()
    opt = sse(first)
    opt.set_epoch(0, 4)
    for x, y in epochs[0]:
        opt.step(ce(first, x, y), y)
    opt.set_epoch(1, 4)
    x, y = epochs[1][0]
    opt.step(ce(first, x, y), y)
    saved = checkpoint_roundtrip({"model": first.state_dict(), "opt": opt.state_dict()})

    resumed = tiny_model(seed=5)
    resumed.load_state_dict(saved["model"])
    opt2 = sse(resumed)  # knows no epoch count: only the state dict can tell it
    opt2.load_state_dict(saved["opt"])
    assert (opt2.epoch, opt2.epochs, opt2.radii.values) == (1, 4, [RHO_HEAD, RHO_TAIL])
    x, y = epochs[1][1]
    opt2.step(ce(resumed, x, y), y)
    for e in (2, 3):
        assert opt2.set_epoch(e)["rho_head"] == 0.0  # the run's length came from the state
        for x, y in epochs[e]:
            opt2.step(ce(resumed, x, y), y)
    for (k, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), k


def test_trainer_switches_at_the_cut_and_resumes_across_it(tmp_path):
    kw = {"optimizer": "sse_sam", "optim.sse_sam.gamma": 0.5}  # 2 epochs: the cut at epoch 1
    full = silent_trainer(demo_config(tmp_path / "full", **kw))
    full.fit()
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").open()]
    assert [r["rho_head"] for r in rows] == [0.05, 0.0]

    def stop_at(trainer, epoch, step):
        if (epoch, step) == (1, 1):
            trainer.request_stop("SIGINT")

    part = silent_trainer(demo_config(tmp_path / "run", **kw), on_step=stop_at)
    with pytest.raises(TrainingInterrupted):
        part.fit()
    resumed = silent_trainer(demo_config(tmp_path / "run", **kw), resume=tmp_path / "run")
    report = resumed.fit()
    for (k, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), k
    forward, backward = report["passes_per_step"]
    assert 1 <= forward <= 3 and 1 <= backward <= 4


def test_accumulation_is_accepted_for_sse_sam_and_refused_for_ccsam(tmp_path):
    assert demo_config(tmp_path / "r", optimizer="sse_sam", accum_steps=2).train.accum_steps == 2
    with pytest.raises(ConfigError, match="accum_steps=2: ccsam does not accumulate"):
        demo_config(tmp_path / "r", optimizer="ccsam", accum_steps=2)


# ------------------------------------------------------------- batches
def test_a_batch_with_no_tail_sample_is_sam_then_plain():
    x = torch.randn(10, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 0, 0])  # head classes only
    a, b = tiny_model(batchnorm=False), tiny_model(batchnorm=False)
    opt_a, opt_b = sse(a), SAM(b.parameters(), torch.optim.SGD, rho=RHO_HEAD, **SGD)
    opt_a.set_epoch(0, 2)
    opt_a.step(ce(a, x, y), y)
    opt_b.step(ce(b, x, y), y)
    assert max_diff(a, b) < 1e-12
    assert opt_a.passes_per_step() == (2.0, 2.0)  # the tail's passes were skipped

    c, d = tiny_model(batchnorm=False), tiny_model(batchnorm=False)
    opt_c, opt_d = sse(c), torch.optim.SGD(d.parameters(), **SGD)
    opt_c.set_epoch(1, 2)  # after the cut: no group is perturbed
    opt_c.step(ce(c, x, y), y)
    F.cross_entropy(d(x), y).backward()
    opt_d.step()
    assert max_diff(c, d) < 1e-12
    assert opt_c.passes_per_step() == (1.0, 1.0)


def test_passes_with_both_groups():
    model = tiny_model()
    opt = sse(model)
    x = torch.randn(8, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    opt.set_epoch(0, 2)
    opt.step(ce(model, x, y), y)
    opt.set_epoch(1, 2)
    opt.step(ce(model, x, y), y)
    # before the cut 3 forward + 4 backward, after it 2 + 3
    assert opt.passes_per_step() == (2.5, 3.5)


# ------------------------------------------------------------- AMP, BatchNorm
def test_a_grad_scaler_gives_the_same_step_and_skips_an_overflow_whole():
    x, y = tiny_batches(1)[0]
    a, b = tiny_model(batchnorm=False), tiny_model(batchnorm=False)
    opt_a, opt_b = sse(a), sse(b)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for _ in range(2):
        opt_a.step(ce(a, x, y), y, scaler=scaler)
        opt_b.step(ce(b, x, y), y)
    assert max_diff(a, b) < 1e-12

    c = tiny_model(batchnorm=False)
    opt_c = sse(c)
    before = [p.detach().clone() for p in c.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt_c.step(lambda: InfGrad.apply(ce(c, x, y)()), y, scaler=scaler)
    assert all(torch.equal(p, q) for p, q in zip(c.parameters(), before))
    assert not opt_c.state  # the base optimizer never stepped
    assert scaler.get_scale() == 2.0**9  # one update, backed off once


def test_bn_update_clean_keeps_statistics_of_the_clean_pass_only():
    x, y = tiny_batches(1)[0]
    model, probe = tiny_model(), tiny_model()
    opt = sse(model, bn_update="clean", model=model)
    opt.step(ce(model, x, y), y)
    probe(x)  # one forward pass in train mode: the statistics of the clean pass
    bn, bn_probe = model[1], probe[1]
    torch.testing.assert_close(bn.running_mean, bn_probe.running_mean, atol=0, rtol=0)
    assert int(bn.num_batches_tracked) == 1


# ------------------------------------------------------------- DDP
DDP_COUNTS_STEPS = 4


def _ddp_batches() -> list[tuple[Tensor, Tensor]]:
    """Global batches of 12 (6 per replica): random, one where replica 0 has no tail
    sample, one with no tail sample at all."""
    batches = tiny_batches(DDP_COUNTS_STEPS, batch=12, seed=4)
    batches[1] = (batches[1][0], torch.tensor([0, 1, 0, 1, 1, 0, 2, 3, 0, 3, 1, 2]))
    batches[2] = (batches[2][0], torch.tensor([0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0]))
    return batches


def _ddp_worker(rank: int, world: int, out: str, ascent_all_reduce: bool) -> None:
    model = DDP(tiny_model(batchnorm=False))
    calls = count_all_reduces(model)
    opt = sse(model.module, model=model, ascent_all_reduce=ascent_all_reduce)
    per_step = []
    for step, (x, y) in enumerate(_ddp_batches() * 2):
        opt.set_epoch(step // DDP_COUNTS_STEPS, 2)  # the second pass is after the cut
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        before = len(calls)
        opt.step(lambda xs=xs, ys=ys: F.cross_entropy(model(xs), ys, reduction="none"), ys)
        per_step.append(len(calls) - before)
    torch.save(
        {"params": [p.detach() for p in model.module.parameters()], "hooked": per_step},
        f"{out}.{rank}",
    )


def _ddp_run(tmp_path: Path, ascent_all_reduce: bool) -> list[dict]:
    out = str(tmp_path / "result")
    run_gloo(_ddp_worker, 2, tmp_path / "store", out, ascent_all_reduce)
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]


def _one_process() -> nn.Module:
    single = tiny_model(batchnorm=False)
    opt = sse(single)
    for step, (x, y) in enumerate(_ddp_batches() * 2):
        opt.set_epoch(step // DDP_COUNTS_STEPS, 2)
        opt.step(ce(single, x, y), y)
    return single


def test_ddp_with_the_ascent_all_reduce_equals_one_process(tmp_path):
    results = _ddp_run(tmp_path, ascent_all_reduce=True)
    single = _one_process()
    for r in results:
        for p, q in zip(r["params"], single.parameters()):
            torch.testing.assert_close(p, q.detach(), atol=1e-12, rtol=0)


def test_ddp_default_all_reduces_the_gradient_once_per_step(tmp_path):
    results = _ddp_run(tmp_path, ascent_all_reduce=False)
    # the DDP hook all-reduces once per step; after the cut, a batch with no tail sample
    # anywhere has no perturbed pass and its clean gradient is averaged by hand (step 6)
    expected = [1] * DDP_COUNTS_STEPS + [1, 1, 0, 1]
    for r in results:
        assert r["hooked"] == expected
    for p, q in zip(results[0]["params"], results[1]["params"]):
        assert torch.equal(p, q)


# ------------------------------------------------------------- CC-SAM network mode
def reference_ccsam_network(
    model: nn.Module,
    batches: list[tuple[Tensor, Tensor]],
    counts: list[int],
    rhos: list[float],
    split: int,
    flat_ratio: float,
) -> None:
    """CC-SAM's network mode as a per-class loop, in place on ``model`` (BatchNorm
    statistics update in every forward): per class ``c`` present, in label order,
    ``g_c`` = gradient of the class's mean loss, ``rho_t * sqrt(||w|| / ||g_c||) P^(1/4) /
    (sqrt(2) (n_c - 1)^(1/4))`` along ``g_c / ||g_c||`` (tensor ``t``'s ``rho``: ``rhos[0]``
    for the first ``split`` tensors), the class's perturbed losses times ``f / B``, then
    the clean mean times ``1 - f``; SGD with momentum and coupled weight decay."""
    params = list(model.parameters())
    rho_of = [rhos[0] if i < split else rhos[1] for i in range(len(params))]
    num = sum(p.numel() for p in params)
    momentum = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        losses = F.cross_entropy(model(x), y, reduction="none")
        grad = [torch.zeros_like(p) for p in params]
        w_norm = torch.sqrt(sum(p.detach().square().sum() for p in params))
        for c in torch.unique(y).tolist():
            if flat_ratio == 0:
                break
            member = y == c
            g_c = torch.autograd.grad(losses[member].mean(), params, retain_graph=True)
            g_norm = torch.sqrt(sum(g.square().sum() for g in g_c))
            scale = num**0.25 / (math.sqrt(2) * (counts[c] - 1) ** 0.25)
            radius = torch.sqrt(w_norm / g_norm) * scale
            theta = [p.detach().clone() for p in params]
            for p, g, rho in zip(params, g_c, rho_of):  # .data: the clean graph stays valid
                p.data.add_(rho * radius * g / g_norm)
            shifted = F.cross_entropy(model(x), y, reduction="none")
            g_shift = torch.autograd.grad(shifted[member].sum() * flat_ratio / len(y), params)
            for p, t in zip(params, theta):
                p.data.copy_(t)
            grad = [a + b for a, b in zip(grad, g_shift)]
        clean = torch.autograd.grad(losses.mean() * (1 - flat_ratio), params)
        with torch.no_grad():
            for p, m, a, b in zip(params, momentum, grad, clean):
                m.mul_(SGD["momentum"]).add_(a + b + SGD["weight_decay"] * p)
                p.sub_(SGD["lr"] * m)


@pytest.mark.parametrize("flat_ratio", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_ccsam_network_mode_equals_its_per_class_loop(flat_ratio, batchnorm):
    counts = [50, 20, 6, 3]
    ours, ref = tiny_model(batchnorm=batchnorm), tiny_model(batchnorm=batchnorm)
    params = list(ours.parameters())
    groups = [{"params": params[:2], "rho": 0.3}, {"params": params[2:], "rho": 0.1}]
    opt = CCSAM(
        groups,
        torch.optim.SGD,
        mode="network",
        model=ours,
        class_counts=counts,
        flat_ratio=flat_ratio,
        **SGD,
    )
    assert isinstance(opt._network, GroupwiseCCSAM)  # it steps through the engine
    batches = tiny_batches(4, batch=12, seed=2)
    batches[1] = (batches[1][0], torch.tensor([0, 1, 0, 1, 1, 0, 2, 1, 0, 2, 1, 2]))  # no class 3
    for x, y in batches:
        opt.step(ce(ours, x, y), y)
    reference_ccsam_network(ref, batches, counts, [0.3, 0.1], 2, flat_ratio)
    for (k, p), q in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=0, msg=k)
    if flat_ratio > 0:
        assert max_diff(ours, tiny_model(batchnorm=batchnorm)) > 1e-3  # it did move
        assert sorted(opt.last_radii) == torch.unique(batches[-1][1]).tolist()


def _ccsam_ddp_worker(rank: int, world: int, out: str) -> None:
    model = DDP(tiny_model(batchnorm=False))
    opt = CCSAM(
        model.module.parameters(),
        torch.optim.SGD,
        mode="network",
        model=model,
        ascent_all_reduce=True,
        class_counts=[50, 20, 6, 3],
        flat_ratio=0.6,
        rho=0.3,
        **SGD,
    )
    for x, y in _ddp_batches():
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        opt.step(lambda xs=xs, ys=ys: F.cross_entropy(model(xs), ys, reduction="none"), ys)
    torch.save([p.detach() for p in model.module.parameters()], f"{out}.{rank}")


def test_ccsam_network_mode_under_ddp_with_the_ascent_all_reduce_equals_one_process(tmp_path):
    """Each class's radius takes its mean gradient over the global batch: class counts
    and batch sizes are all-reduced with the plan (replica 0 lacks classes 2 and 3 in the
    second batch)."""
    out = str(tmp_path / "result")
    run_gloo(_ccsam_ddp_worker, 2, tmp_path / "store", out)
    single = tiny_model(batchnorm=False)
    opt = CCSAM(
        single.parameters(),
        torch.optim.SGD,
        mode="network",
        class_counts=[50, 20, 6, 3],
        flat_ratio=0.6,
        rho=0.3,
        **SGD,
    )
    for x, y in _ddp_batches():
        opt.step(ce(single, x, y), y)
    for rank in range(2):
        for p, q in zip(torch.load(f"{out}.{rank}", weights_only=True), single.parameters()):
            torch.testing.assert_close(p, q.detach(), atol=1e-12, rtol=0)
    assert max_diff(single, tiny_model(batchnorm=False)) > 1e-3


# ------------------------------------------------------------- registry and compare
def test_registered_with_its_options():
    spec = get_method("ssesam")
    assert spec.name == "sse_sam" and spec.needs_class_counts and spec.accumulates
    model = tiny_model()
    opt = spec.build(model.parameters(), "sgd", class_counts=COUNTS, settings={"model": model})
    assert isinstance(opt, SSESAM) and (opt.eta, opt.rho_head, opt.rho_tail, opt.gamma) == (
        100.0,
        0.05,
        0.1,
        0.7,
    )


def test_cifar_presets_carry_the_published_settings():
    from focalsam.train import get_preset

    for name in ("cifar100-lt-r100", "cifar10-lt-r100"):
        assert get_preset(name)["optim"]["sse_sam"] == {
            "eta": 100.0,
            "rho_head": 0.05,
            "rho_tail": 0.1,
            "gamma": 0.7,
        }


def test_compare_smoke_with_sse_sam(tmp_path):
    from focalsam.cli import main

    # the comparison, on the demo preset: the same optimizers, one command
    out = tmp_path / "cmp"
    optimizers = "sgd,sam,imbsam,sse_sam,focal_sam"
    argv = ["compare", "--preset", "demo", "--optimizers", optimizers, "--seeds", "0"]
    argv += ["--out", str(out), "epochs=1", "eval_every=1", "tensorboard=false"]
    assert main(argv) == 0
    for name in ("plain", "sam", "imbsam", "sse_sam", "focal_sam"):
        assert (out / f"{name}-seed0" / "report.json").is_file(), name
    report = json.loads((out / "sse_sam-seed0" / "report.json").read_text())
    forward, backward = report["passes_per_step"]
    assert 1 <= forward <= 3 and 1 <= backward <= 4 and backward >= forward
    table = (out / "compare.md").read_text()
    for label in ("SAM", "ImbSAM", "SSE-SAM", "Focal-SAM"):
        assert f"| {label}" in table, label


def test_a_captured_step_is_refused_up_front(tmp_path):
    # its passes depend on the classes of each batch, read on the host
    with pytest.raises(ConfigError, match="cannot capture a step with sse_sam"):
        demo_config(tmp_path / "r", optimizer="sse_sam", cuda_graph=True, device="cuda")


def test_the_cifar100_comparison_is_one_valid_command():
    from focalsam.compare import CompareSpec

    spec = CompareSpec.create(
        "cifar100-lt-r100", "sgd,sam,imbsam,sse_sam,focal_sam", "0", ["loss=ce"]
    )
    assert spec.optimizers == ("plain", "sam", "imbsam", "sse_sam", "focal_sam")
    cfg = spec.run_config("sse_sam", 0, Path("unused"))
    assert (cfg.loss.name, cfg.optim.sse_sam.eta, cfg.optim.sse_sam.gamma) == ("ce", 100.0, 0.7)


def test_sam_every_off_steps_are_plain_and_the_count_is_saved():
    x, y = tiny_batches(1)[0]
    a, b = tiny_model(batchnorm=False), tiny_model(batchnorm=False)
    opt_a = sse(a, sam_every=2)
    opt_a.step(ce(a, x, y), y)  # step 0: sharpness-aware
    saved = checkpoint_roundtrip({"o": opt_a.state_dict()})["o"]
    b.load_state_dict(a.state_dict())
    opt_b = sse(b, sam_every=2)
    opt_b.load_state_dict(checkpoint_roundtrip({"o": saved})["o"])  # its own tensors
    before = [p.detach().clone() for p in b.parameters()]
    opt_b.step(ce(b, x, y), y)  # step 1: one pass with eps = 0, as SGD would take
    plain = tiny_model(batchnorm=False)
    with torch.no_grad():
        for p, q in zip(plain.parameters(), before):
            p.copy_(q)
    sgd = torch.optim.SGD(plain.parameters(), **SGD)
    sgd.load_state_dict({"state": saved["state"], "param_groups": [{**saved["param_groups"][0]}]})
    F.cross_entropy(plain(x), y).backward()
    sgd.step()
    assert max_diff(b, plain) < 1e-12
    assert opt_b.pass_counts == {"steps": 2, "forward": 4, "backward": 5}
