"""The two-weight rule (``docs/design.md``): special cases, and agreement with an independent reference."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import hand_class_weights, per_sample_ce, reference_run, tiny_batches, tiny_model

from focalsam.optim import SAM, FocalSAM, ImbSAM, PlainOptimizer

COUNTS = [40, 20, 6, 2]
SGD_KW = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}


def run(model, opt, batches, scaler=None):
    for x, y in batches:
        opt.step(per_sample_ce(model, x, y), y, scaler=scaler)
    return model


def assert_same_params(m1, m2, atol=1e-12):
    for (n, p), q in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, atol=atol, rtol=0, msg=n)


def assert_matches_reference(named, reference, atol=1e-11):
    """Each named tensor equals the reference run's tensor of that name, to ``atol``."""
    for name, t in named:
        torch.testing.assert_close(t, reference[name], atol=atol, rtol=0, msg=name)


def test_focal_sam_lam0_is_the_base_optimizer():
    batches = tiny_batches(5)
    m1, m2 = tiny_model(), tiny_model()
    run(
        m1,
        FocalSAM(
            m1.parameters(),
            torch.optim.SGD,
            class_counts=COUNTS,
            lam=0.0,
            gamma=2.0,
            rho=0.5,
            **SGD_KW,
        ),
        batches,
    )
    bare = torch.optim.SGD(m2.parameters(), **SGD_KW)
    for x, y in batches:
        bare.zero_grad()
        per_sample_ce(m2, x, y)().mean().backward()
        bare.step()
    assert_same_params(m1, m2)
    for b1, b2 in zip(m1.buffers(), m2.buffers()):
        torch.testing.assert_close(b1, b2, atol=1e-12, rtol=0)


def test_focal_sam_lam1_gamma0_is_sam():
    batches = tiny_batches(5)
    m1, m2 = tiny_model(), tiny_model()
    run(
        m1,
        FocalSAM(
            m1.parameters(),
            torch.optim.SGD,
            class_counts=COUNTS,
            lam=1.0,
            gamma=0.0,
            rho=0.3,
            **SGD_KW,
        ),
        batches,
    )
    run(m2, SAM(m2.parameters(), torch.optim.SGD, rho=0.3, **SGD_KW), batches)
    assert_same_params(m1, m2)
    # and the perturbation mattered: plain SGD lands elsewhere
    m3 = tiny_model()
    run(m3, PlainOptimizer(m3.parameters(), torch.optim.SGD, **SGD_KW), batches)
    assert not torch.allclose(next(m1.parameters()), next(m3.parameters()))


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_matches_reference(adaptive):
    batches = tiny_batches(4)
    model = tiny_model()
    ref_params, ref_buffers = reference_run(
        model,
        batches,
        torch.zeros(4, dtype=torch.float64),
        torch.ones(4, dtype=torch.float64),
        rho=0.2,
        adaptive=adaptive,
        **SGD_KW,
    )
    run(
        model,
        SAM(model.parameters(), torch.optim.SGD, rho=0.2, adaptive=adaptive, **SGD_KW),
        batches,
    )
    assert_matches_reference(model.named_parameters(), ref_params)


@pytest.mark.parametrize("gamma,lam", [(2.0, 0.5), (3.2, 0.8), (0.5, 1.5)])
def test_focal_sam_matches_the_formula_with_batchnorm(gamma, lam):
    batches = tiny_batches(4)
    model = tiny_model()
    a, b = hand_class_weights("focal_sam", COUNTS, gamma=gamma, lam=lam)
    ref_params, ref_buffers = reference_run(model, batches, a, b, rho=0.25, **SGD_KW)
    run(
        model,
        FocalSAM(
            model.parameters(),
            torch.optim.SGD,
            class_counts=COUNTS,
            gamma=gamma,
            lam=lam,
            rho=0.25,
            **SGD_KW,
        ),
        batches,
    )
    assert_matches_reference(model.named_parameters(), ref_params)
    # BatchNorm statistics were updated in both forward passes, as in the reference
    assert_matches_reference(model.named_buffers(), ref_buffers)


@pytest.mark.parametrize("kappa", [1.0, 2.0])
def test_imbsam_is_the_two_weight_rule_with_its_weights(kappa):
    batches = tiny_batches(4)
    model = tiny_model()
    a, b = hand_class_weights("imbsam", COUNTS, eta=10, kappa=kappa)
    assert a.tolist() == [1, 1, 0, 0] and b.tolist() == [0, 0, kappa, kappa]
    ref_params, _ = reference_run(model, batches, a, b, rho=0.25, **SGD_KW)
    run(
        model,
        ImbSAM(
            model.parameters(),
            torch.optim.SGD,
            class_counts=COUNTS,
            eta=10,
            kappa=kappa,
            rho=0.25,
            **SGD_KW,
        ),
        batches,
    )
    assert_matches_reference(model.named_parameters(), ref_params)


def test_explicit_phases_equal_step():
    batches = tiny_batches(3)
    m1, m2 = tiny_model(), tiny_model()
    kw = dict(class_counts=COUNTS, gamma=2.0, lam=0.7, rho=0.2, **SGD_KW)
    run(m1, FocalSAM(m1.parameters(), torch.optim.SGD, **kw), batches)
    opt = FocalSAM(m2.parameters(), torch.optim.SGD, **kw)
    for x, y in batches:
        with opt.clean_context():
            losses = per_sample_ce(m2, x, y)()
            needs_second = opt.first_step(losses, y)
        assert needs_second
        opt.second_step(per_sample_ce(m2, x, y)())
    assert_same_params(m1, m2, atol=0)


def test_lr_scheduler_drives_the_base_optimizer():
    model = tiny_model()
    opt = FocalSAM(model.parameters(), torch.optim.SGD, class_counts=COUNTS, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = tiny_batches(1)[0]
    opt.step(per_sample_ce(model, x, y), y)
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    # The next update uses the scheduled lr: with lr 0 the parameters do not move.
    for group in opt.param_groups:
        group["lr"] = 0.0
    before = [p.clone() for p in model.parameters()]
    opt.step(per_sample_ce(model, x, y), y)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_param_groups_keep_their_own_lr_and_rho():
    batches = tiny_batches(3)
    m1, m2 = tiny_model(), tiny_model()
    head1, body1 = list(m1[-1].parameters()), [p for m in list(m1)[:-1] for p in m.parameters()]
    opt = SAM(
        [{"params": body1}, {"params": head1, "lr": 0.01, "rho": 0.0}],
        torch.optim.SGD,
        rho=0.2,
        lr=0.1,
    )
    head_before = [p.clone() for p in head1]
    run(m1, opt, batches)
    assert opt.param_groups[1]["rho"] == 0.0 and opt.param_groups[0]["rho"] == 0.2
    # The head moved with its own small lr
    moved = max((p - q).abs().max().item() for p, q in zip(head1, head_before))
    assert moved > 0
    # rho = 0 on every group is plain SGD
    opt2 = SAM(m2.parameters(), torch.optim.SGD, rho=0.0, lr=0.1)
    m3 = tiny_model()
    run(m2, opt2, batches)
    run(m3, PlainOptimizer(m3.parameters(), torch.optim.SGD, lr=0.1), batches)
    # (BatchNorm statistics differ: SAM takes a second forward; the parameters do not)
    assert_same_params(m2, m3)


def test_adamw_base_and_constructed_instance_agree():
    batches = tiny_batches(3)
    m1, m2 = tiny_model(), tiny_model()
    run(
        m1,
        FocalSAM(
            m1.parameters(), torch.optim.AdamW, class_counts=COUNTS, lr=1e-2, weight_decay=0.05
        ),
        batches,
    )
    base = torch.optim.AdamW(m2.parameters(), lr=1e-2, weight_decay=0.05)
    run(m2, FocalSAM(None, base, class_counts=COUNTS), batches)
    assert_same_params(m1, m2, atol=0)


def test_gradient_clipping_applies_to_the_final_gradient():
    x, y = tiny_batches(1)[0]
    m1, m2 = tiny_model(), tiny_model()
    opt1 = SAM(m1.parameters(), torch.optim.SGD, rho=0.1, lr=1.0, max_grad_norm=0.01)
    opt1.step(per_sample_ce(m1, x, y), y)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in m1.parameters()]))
    assert total == pytest.approx(0.01, rel=1e-3)  # torch clips to max/(norm + 1e-6)
    # The same as SGD on the clipped SAM gradient: compare with an unclipped run scaled down
    opt2 = SAM(m2.parameters(), torch.optim.SGD, rho=0.1, lr=0.0)
    opt2.step(per_sample_ce(m2, x, y), y)
    raw = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in m2.parameters()]))
    for p1, p2, p0 in zip(m1.parameters(), m2.parameters(), tiny_model().parameters()):
        torch.testing.assert_close(p1, p0 - p2.grad * (0.01 / (raw + 1e-6)), atol=1e-12, rtol=0)


def test_batchnorm_frozen_in_the_perturbed_pass_on_request():
    x, y = tiny_batches(1)[0]
    m1, m2 = tiny_model(), tiny_model()
    opt = SAM(m1.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, model=m1, bn_update="clean")
    opt.step(per_sample_ce(m1, x, y), y)
    m2(x)  # one clean forward: the statistics the frozen run must hold
    for (name, b1), b2 in zip(m1.named_buffers(), m2.buffers()):
        torch.testing.assert_close(b1, b2, atol=1e-14, rtol=0, msg=name)
    assert m1[1].momentum == 0.1  # restored
    # default: both passes update them
    m3 = tiny_model()
    SAM(m3.parameters(), torch.optim.SGD, rho=0.1, lr=0.1).step(per_sample_ce(m3, x, y), y)
    assert m3[1].num_batches_tracked.item() == 2
    assert not torch.allclose(m3[1].running_mean, m2[1].running_mean)


def test_closure_may_return_extra_outputs():
    model = tiny_model()
    x, y = tiny_batches(1)[0]
    opt = FocalSAM(model.parameters(), torch.optim.SGD, class_counts=COUNTS, lr=0.1)

    def closure():
        logits = model(x)
        return torch.nn.functional.cross_entropy(logits, y, reduction="none"), logits

    losses, logits = opt.step(closure, y)
    assert losses.shape == (12,) and not losses.requires_grad and logits.shape == (12, 4)


def test_state_dict_holds_no_transient_buffers():
    model = tiny_model()
    x, y = tiny_batches(1)[0]
    opt = FocalSAM(model.parameters(), torch.optim.SGD, class_counts=COUNTS, lr=0.1, momentum=0.9)
    opt.step(per_sample_ce(model, x, y), y)
    sd = opt.state_dict()
    assert sd == opt.base_optimizer.state_dict()
    assert all(set(s) == {"momentum_buffer"} for s in sd["state"].values())
    assert sd["param_groups"][0]["rho"] == 0.05
    copy.deepcopy(sd)
