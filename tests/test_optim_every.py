"""Every-k sharpness-aware steps (sam_every=k): off steps are one weighted pass at theta."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    COUNTS,
    RHO,
    SGD,
    ascent,
    build,
    checkpoint_roundtrip,
    hand_class_weights,
    per_sample_ce,
    sgd_update,
    tiny_batches,
    tiny_model,
)
from torch import Tensor, nn
from torch.func import functional_call

from focalsam.optim import (
    CCSAM,
    FocalSAMOptions,
    ImbSAMOptions,
    InvalidHyperparameterError,
    StateDictError,
    create_optimizer,
    get_method,
)

C = len(COUNTS)


def reference(model: nn.Module, batches, name: str, every: int) -> dict[str, Tensor]:
    """float64 torch.func reference: step i is the full rule when i % every == 0, else
    plain SGD on grad (1/B) sum (a_n + b_n) l_n(theta). No BatchNorm."""
    a_cls, b_cls = hand_class_weights(name, COUNTS)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    names = list(params)
    buf = {k: torch.zeros_like(v) for k, v in params.items()}

    def grad(theta, x, y, w):
        losses = F.cross_entropy(functional_call(model, theta, (x,)), y, reduction="none")
        return torch.autograd.grad((w * losses).sum() / y.shape[0], [theta[k] for k in names])

    for i, (x, y) in enumerate(batches):
        theta = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        if i % every:
            g = grad(theta, x, y, a_cls[y] + b_cls[y])
        else:
            g_b = list(grad(theta, x, y, b_cls[y]))
            eps = ascent([params[k] for k in names], g_b, RHO, adaptive=False)
            shifted = {k: (params[k] + e).requires_grad_(True) for k, e in zip(names, eps)}
            g_a = grad(theta, x, y, a_cls[y])
            g = [ga + gs for ga, gs in zip(g_a, grad(shifted, x, y, b_cls[y]))]
        sgd_update(params, buf, dict(zip(names, g)), **SGD)
    return params


@pytest.mark.parametrize("name", ["sam", "imbsam", "focal_sam"])
def test_off_steps_are_one_weighted_pass(name):
    model = tiny_model(batchnorm=False)
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    opt = build(name, model, sam_every=2)
    batches = tiny_batches(5)
    per_step = []
    for x, y in batches:
        before = len(forwards)
        opt.step(per_sample_ce(model, x, y), y)
        per_step.append(len(forwards) - before)
    assert per_step == [2, 1, 2, 1, 2]
    expected = reference(tiny_model(batchnorm=False), batches, name, every=2)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], atol=1e-11, rtol=0, msg=k)
    # and the reference can tell every=2 from every=1
    exact = reference(tiny_model(batchnorm=False), batches, name, every=1)
    assert max((exact[k] - expected[k]).abs().max().item() for k in exact) > 1e-6


@pytest.mark.parametrize("name", ["plain", "sam", "focal_sam"])
def test_every_1_is_the_exact_rule_bitwise(name):
    m1, m2 = tiny_model(), tiny_model()
    o1, o2 = build(name, m1), build(name, m2, sam_every=1)
    for x, y in tiny_batches(3):
        o1.step(per_sample_ce(m1, x, y), y)
        o2.step(per_sample_ce(m2, x, y), y)
    assert all(
        torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values())
    )
    assert o2.state_dict().keys() == {"state", "param_groups"}  # as before: no step count


def test_resume_mid_cycle_equals_uninterrupted():
    batches = tiny_batches(7)
    full = tiny_model()
    opt = build("focal_sam", full, sam_every=3)
    for x, y in batches:
        opt.step(per_sample_ce(full, x, y), y)

    first = tiny_model()
    opt = build("focal_sam", first, sam_every=3)
    for x, y in batches[:4]:  # stops after step 3, one into the second cycle
        opt.step(per_sample_ce(first, x, y), y)
    ckpt = checkpoint_roundtrip({"model": first.state_dict(), "optim": opt.state_dict()})

    def resume(keep_count: bool) -> nn.Module:
        model = tiny_model()
        model.load_state_dict(ckpt["model"])
        state = dict(ckpt["optim"])
        if not keep_count:
            del state["sam_every"]
        o = build("focal_sam", model, sam_every=3)
        o.load_state_dict(state)
        for x, y in batches[4:]:
            o.step(per_sample_ce(model, x, y), y)
        return model

    resumed = resume(keep_count=True)
    assert all(torch.equal(p, q) for p, q in zip(full.parameters(), resumed.parameters()))
    restarted = resume(keep_count=False)  # the count mattered
    assert not all(torch.equal(p, q) for p, q in zip(full.parameters(), restarted.parameters()))


def test_all_three_together():
    """Accumulated micro-batches, sync-free, every 2nd step sharp = one batch, strict."""
    batches = tiny_batches(4, batch=12)
    m1, m2 = tiny_model(batchnorm=False), tiny_model(batchnorm=False)
    o1 = build("focal_sam", m1, sam_every=2, strict_checks=False)
    o2 = build("focal_sam", m2, sam_every=2, strict_checks=True)
    for x, y in batches:
        o1.step_accumulated(
            [(per_sample_ce(m1, xk, yk), yk) for xk, yk in zip(x.split([7, 5]), y.split([7, 5]))]
        )
        o2.step(per_sample_ce(m2, x, y), y)
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, atol=1e-10, rtol=0)
    assert o1.take_skip_report() is None


def test_bad_options():
    params = list(tiny_model().parameters())
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(InvalidHyperparameterError, match="sam_every"):
            create_optimizer("sam", params, "sgd", lr=0.1, sam_every=bad)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 4))
    with pytest.raises(InvalidHyperparameterError, match="sam_every"):
        CCSAM(
            model.parameters(),
            torch.optim.SGD,
            class_counts=COUNTS,
            classifier=model[2],
            lr=0.1,
            sam_every=2,
        )
    m = tiny_model()
    opt = build("sam", m, sam_every=2)
    x, y = tiny_batches(1)[0]
    with pytest.raises(InvalidHyperparameterError, match="explicit phases"):
        opt.first_step(per_sample_ce(m, x, y)(), y)
    state = opt.state_dict()
    state["sam_every"] = {"steps": -1}
    with pytest.raises(StateDictError, match="steps"):
        opt.load_state_dict(state)


def test_settings_flow_through_the_registry():
    settings = {"rho": 0.1, "strict_checks": False, "sam_every": 3, "max_grad_norm": None}
    model = tiny_model()
    for name, options in (("focal_sam", FocalSAMOptions()), ("imbsam", ImbSAMOptions(eta=10))):
        opt = get_method(name).build(
            model.parameters(),
            "sgd",
            options=options,
            class_counts=COUNTS,
            settings=settings,
            lr=0.1,
        )
        assert (opt.strict_checks, opt.sam_every) == (False, 3)
    for name in ("sam", "asam"):
        opt = get_method(name).build(model.parameters(), "sgd", settings=settings, lr=0.1)
        assert (opt.strict_checks, opt.sam_every) == (False, 3)
    plain = get_method("plain").build(model.parameters(), "sgd", settings=settings, lr=0.1)
    assert (plain.strict_checks, plain.sam_every) == (False, 1)
    cc = get_method("ccsam").build(
        model.parameters(),
        "sgd",
        class_counts=COUNTS,
        classifier=model[3],
        settings={"strict_checks": None, "sam_every": 1},
        lr=0.1,
    )
    assert cc.take_skip_report() is None
    assert [n for n in ("plain", "sam", "focal_sam", "ccsam") if get_method(n).accumulates] == [
        "plain",
        "sam",
        "focal_sam",
    ]
