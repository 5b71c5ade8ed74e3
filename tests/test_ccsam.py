"""CC-SAM: hand-computed steps, independent references, pass counts, stage 2, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    InfGrad,
    check_bf16_resnet32_step,
    checkpoint_roundtrip,
    per_sample_ce,
    tiny_batches,
    tiny_model,
)
from torch import Tensor, nn

from focalsam.optim import (
    CCSAM,
    CCSAMStage2,
    ClassCountsError,
    InvalidHyperparameterError,
    LabelError,
    LossShapeError,
    NonFiniteLossError,
    ccsam_feature_weights,
    ccsam_mix_weight,
    ccsam_radius,
    create_optimizer,
    list_optimizers,
)

COUNTS = [40, 20, 6, 2]


def ccsam_on(model: nn.Module, **kw) -> CCSAM:
    kw.setdefault("class_counts", COUNTS)
    kw.setdefault("lr", 0.1)
    if kw.get("mode", "classifier") == "classifier":
        kw.setdefault("classifier", model[-1])
    return create_optimizer("ccsam", model.parameters(), "sgd", **kw)  # type: ignore[return-value]


# ------------------------------------------------- the radius, by hand
def test_radius_formula():
    # 0.01 * sqrt(4 / 1) * 16 ** 0.25 / (sqrt(2) * 16 ** 0.25) = 0.01 * sqrt(2)
    assert ccsam_radius(0.01, 4.0, 1.0, 17, 16) == pytest.approx(0.01 * math.sqrt(2.0))
    assert ccsam_radius(1.0, 9.0, 4.0, 82, 81) == pytest.approx(1.5 * 3 / (math.sqrt(2) * 3))
    with pytest.raises(ClassCountsError, match="count of 1"):
        ccsam_radius(0.1, 1.0, 1.0, 1, 10)


@pytest.mark.parametrize("flat_ratio", [0.3, 1.0])
def test_one_class_step_matches_hand_computation(flat_ratio):
    """One class present: radius per classifier tensor and the SGD update, by hand."""
    model = tiny_model(batchnorm=False)  # Linear(5, 8) - Tanh - Linear(8, 4), float64
    hand = copy.deepcopy(model)
    rho, lr, cls = 0.2, 0.1, 2
    opt = ccsam_on(model, rho=rho, flat_ratio=flat_ratio, lr=lr)
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.full((6,), cls)
    opt.step(per_sample_ce(model, x, y), y)

    feats = torch.tanh(hand[0](x))
    w, b = hand[2].weight, hand[2].bias
    losses = F.cross_entropy(feats @ w.T + b, y, reduction="none")
    g_w, g_b = torch.autograd.grad(losses.mean(), [w, b], retain_graph=True)
    param_norm = torch.sqrt(w.square().sum() + b.square().sum()).detach()
    num = w.numel() + b.numel()  # 36
    n = COUNTS[cls]  # 6: (n - 1) ** (1/4) = 5 ** 0.25
    radius = [
        rho * torch.sqrt(param_norm / g.norm()) * num**0.25 / (math.sqrt(2) * (n - 1) ** 0.25)
        for g in (g_w, g_b)
    ]
    torch.testing.assert_close(opt.last_radii[cls], torch.stack(radius), rtol=1e-12, atol=0)
    eps_w, eps_b = (r * g / g.norm() for r, g in zip(radius, (g_w, g_b)))
    perturbed = F.cross_entropy(feats @ (w + eps_w).T + (b + eps_b), y, reduction="none")
    total = (1 - flat_ratio) * losses.mean() + flat_ratio * perturbed.mean()
    grads = torch.autograd.grad(total, list(hand.parameters()))
    for p, q, g in zip(model.parameters(), hand.parameters(), grads):
        torch.testing.assert_close(p, q - lr * g, rtol=1e-12, atol=1e-14)


# -------------------------------------------- independent references
def _features(t: dict[str, Tensor], x: Tensor) -> Tensor:
    return torch.tanh(x @ t["0.weight"].T + t["0.bias"])


def _head(w: Tensor, b: Tensor, feats: Tensor) -> Tensor:
    return feats @ w.T + b


def reference_ccsam(model, batches, counts, rho, flat_ratio, lr, momentum, wd, mode):
    """Stage 1 written out on the tiny MLP (no BatchNorm), with a hand-written SGD."""
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    mom = {k: torch.zeros_like(v) for k, v in params.items()}
    names = list(params)
    perturbed_names = ["2.weight", "2.bias"] if mode == "classifier" else names
    num = sum(params[k].numel() for k in perturbed_names)
    for x, y in batches:
        t = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        feats = _features(t, x)
        losses = F.cross_entropy(_head(t["2.weight"], t["2.bias"], feats), y, reduction="none")
        total = (1 - flat_ratio) * losses.mean()
        extra = {k: torch.zeros_like(v) for k, v in params.items()}
        w_norm = torch.sqrt(sum(t[k].detach().square().sum() for k in perturbed_names))
        for c in torch.unique(y).tolist():
            m = y == c
            g = torch.autograd.grad(
                losses[m].mean(), [t[k] for k in perturbed_names], retain_graph=True
            )
            factor = rho * num**0.25 / (math.sqrt(2) * (counts[c] - 1) ** 0.25)
            if mode == "classifier":  # per tensor
                eps = [factor * torch.sqrt(w_norm / gi.norm()) * gi / gi.norm() for gi in g]
                shifted = [t[k] + e for k, e in zip(perturbed_names, eps)]
                lp = F.cross_entropy(_head(*shifted, feats[m]), y[m], reduction="none")
                total = total + flat_ratio * lp.sum() / len(y)
            else:  # one vector over the whole network
                g_norm = torch.sqrt(sum(gi.square().sum() for gi in g))
                eps = [factor * torch.sqrt(w_norm / g_norm) * gi / g_norm for gi in g]
                tp = {k: (t[k] + e).detach().requires_grad_(True) for k, e in zip(names, eps)}
                lp = F.cross_entropy(
                    _head(tp["2.weight"], tp["2.bias"], _features(tp, x)), y, reduction="none"
                )
                gp = torch.autograd.grad(flat_ratio * lp[m].sum() / len(y), list(tp.values()))
                for k, gi in zip(names, gp):
                    extra[k] += gi
        g_all = torch.autograd.grad(total, [t[k] for k in names], allow_unused=True)
        for k, gi in zip(names, g_all):
            grad = (torch.zeros_like(params[k]) if gi is None else gi) + extra[k]
            grad = grad + wd * params[k]
            mom[k] = momentum * mom[k] + grad
            params[k] = params[k] - lr * mom[k]
    return params


@pytest.mark.parametrize("mode", ["classifier", "network"])
@pytest.mark.parametrize("flat_ratio", [0.5, 1.0])
def test_matches_reference_over_several_steps(mode, flat_ratio):
    model = tiny_model(batchnorm=False)
    batches = tiny_batches(3, batch=10)
    kw = dict(rho=0.3, flat_ratio=flat_ratio, lr=0.05, momentum=0.9, weight_decay=1e-3)
    expected = reference_ccsam(model, batches, COUNTS, kw["rho"], flat_ratio, 0.05, 0.9, 1e-3, mode)
    opt = ccsam_on(model, mode=mode, **kw)
    for x, y in batches:
        opt.step(per_sample_ce(model, x, y), y)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, expected[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["classifier", "network"])
def test_no_perturbation_is_the_base_optimizer(mode):
    batches = tiny_batches(2)
    plain = tiny_model()
    sgd = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    for x, y in batches:
        sgd.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        sgd.step()
    for kw in ({"flat_ratio": 0.0, "rho": 0.5}, {"flat_ratio": 0.7, "rho": 0.0}):
        model = tiny_model()
        opt = ccsam_on(model, mode=mode, momentum=0.9, **kw)
        for x, y in batches:
            opt.step(per_sample_ce(model, x, y), y)
        for p, q in zip(model.parameters(), plain.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["classifier", "network"])
def test_group_rho_drives_the_radius(mode):
    """A scheduler sets ``group["rho"]``: the radius follows it."""
    x, y = tiny_batches(1)[0]
    m1, m2 = tiny_model(), tiny_model()
    opt1, opt2 = ccsam_on(m1, mode=mode, rho=0.4), ccsam_on(m2, mode=mode, rho=0.1)
    opt2.param_groups[0]["rho"] = 0.4
    opt1.step(per_sample_ce(m1, x, y), y)
    opt2.step(per_sample_ce(m2, x, y), y)
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
    assert opt1.last_radii.keys() == opt2.last_radii.keys()
    for c, r in opt1.last_radii.items():
        assert torch.equal(r, opt2.last_radii[c])


# ---------------------------------------------------------- pass counts
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, *_) -> None:
        self.n += 1


@pytest.mark.parametrize("labels", [[1] * 6, [0, 1, 0, 1, 1, 0], [0, 1, 2, 3, 3, 2]])
@pytest.mark.parametrize("mode", ["classifier", "network"])
@pytest.mark.parametrize("flat_ratio", [0.5, 1.0])
def test_passes_per_step(labels, mode, flat_ratio):
    model = tiny_model()  # Linear - BatchNorm - Tanh - Linear
    forward, cls_forward, backbone_bwd, cls_bwd = Counter(), Counter(), Counter(), Counter()
    model.register_forward_hook(forward)
    model[-1].register_forward_hook(cls_forward)
    model[0].weight.register_hook(backbone_bwd)
    model[-1].weight.register_hook(cls_bwd)
    opt = ccsam_on(model, mode=mode, flat_ratio=flat_ratio)
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.tensor(labels)
    opt.step(per_sample_ce(model, x, y), y)
    k = len(set(labels))
    clean = int(flat_ratio < 1)
    if mode == "classifier":
        # backbone: 1 forward, 1 backward; classifier alone: k forward, 2k backward
        assert (forward.n, backbone_bwd.n) == (1, 1)
        assert (cls_forward.n, cls_bwd.n) == (1 + k, 2 * k + clean)
    else:
        # the closure at theta and at theta + eps_c; per class a backward for g_c
        # and one at theta + eps_c, plus the clean backward
        assert (forward.n, backbone_bwd.n) == (1 + k, 2 * k + clean)
    assert len(opt.last_radii) == k


# -------------------------------------------------------------- stage 2
def reference_stage2(fc, feats, y, weights, rho, alpha):
    """The public code's per-class loop: per class, the feature gradient of the
    class's mean loss, normalized; the whole batch through the classifier again."""
    feats = feats.detach().requires_grad_(True)
    losses = F.cross_entropy(fc(feats), y, reduction="none")
    perturbed = torch.zeros_like(losses)
    for c in torch.unique(y).tolist():
        m = y == c
        (g,) = torch.autograd.grad(losses[m].mean(), feats, retain_graph=True)
        noise = rho * g / g.norm() * weights[c]
        lt = F.cross_entropy(fc(feats + noise), y, reduction="none") * weights[c]
        perturbed = torch.where(m, lt, perturbed)
    return alpha * perturbed.mean() + (1 - alpha) * losses.mean()


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_stage2_trains_only_the_classifier_and_matches_the_public_loop():
    model = tiny_model()
    ref_fc = copy.deepcopy(model[-1])
    forward, backward, weight_grad = Counter(), Counter(), Counter()
    opt = ccsam_on(model)
    stage2 = opt.second_stage(
        torch.optim.SGD(model[-1].parameters(), lr=0.1, momentum=0.9), rho=0.5
    )
    backbone = [p.clone() for p in model[:-1].parameters()]
    classifier = [p.clone() for p in model[-1].parameters()]
    ref_opt = torch.optim.SGD(ref_fc.parameters(), lr=0.1, momentum=0.9)
    weights = ccsam_feature_weights(COUNTS, div=2.0, dtype=torch.float64)
    for e, (x, y) in enumerate(tiny_batches(2, batch=9)):
        alpha = ccsam_mix_weight(e, 3, up_limit=0.8)
        feats = model[:-1](x)  # with a graph into the backbone: stage 2 must not use it
        hooks = [
            model[-1].register_forward_hook(forward),
            model[-1].register_full_backward_hook(backward),
            model[-1].weight.register_hook(weight_grad),
        ]
        stage2.step(feats, y, alpha=alpha)
        for h in hooks:
            h.remove()
        ref_opt.zero_grad()
        reference_stage2(ref_fc, feats, y, weights, 0.5, alpha).backward()
        ref_opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model[:-1].parameters(), backbone))
    assert all(p.grad is None for p in model[:-1].parameters())
    assert all(not torch.equal(p, q) for p, q in zip(model[-1].parameters(), classifier))
    for p, q in zip(model[-1].parameters(), ref_fc.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    # per step: 2 classifier forwards (clean, perturbed); 2 backwards, one to the features
    # (through the clean call) and one to the weights (through both calls)
    assert (forward.n, backward.n, weight_grad.n) == (2 * 2, 3 * 2, 1 * 2)


def test_stage2_weights_and_schedule():
    w = ccsam_feature_weights([100, 10, 1], div=2.0, dtype=torch.float64)
    torch.testing.assert_close(
        w, torch.log(torch.tensor([1.01, 10.01, 100.01], dtype=torch.float64)) / 2
    )
    assert [ccsam_mix_weight(e, 30) for e in (0, 14, 29)] == [1 / 30, 0.5, 1.0]
    assert ccsam_mix_weight(29, 30, up_limit=0.3) == 0.3


def test_stage2_bad_input():
    model = tiny_model()
    fc = model[-1]
    with pytest.raises(InvalidHyperparameterError, match="classifier only"):
        CCSAMStage2(fc, torch.optim.SGD(model.parameters(), lr=0.1), COUNTS)
    with pytest.raises(ClassCountsError, match="3 entries but the classifier has 4"):
        CCSAMStage2(fc, torch.optim.SGD(fc.parameters(), lr=0.1), COUNTS[:3])
    stage2 = CCSAMStage2(fc, torch.optim.SGD(fc.parameters(), lr=0.1), COUNTS)
    feats = torch.randn(4, 8, dtype=torch.float64)
    with pytest.raises(LabelError, match=r"\[0, 4\)"):
        stage2.step(feats, torch.tensor([0, 1, 4, 2]), alpha=0.5)
    with pytest.raises(LabelError, match="one per feature row"):
        stage2.step(feats, torch.tensor([0, 1, 2]), alpha=0.5)
    with pytest.raises(LabelError, match="integer tensor of class labels.*uint8"):
        stage2.step(feats, torch.tensor([0, 1, 2, 3], dtype=torch.uint8), alpha=0.5)
    with pytest.raises(InvalidHyperparameterError, match="alpha"):
        stage2.step(feats, torch.tensor([0, 1, 2, 3]), alpha=1.5)
    with pytest.raises(InvalidHyperparameterError, match="epoch"):
        ccsam_mix_weight(30, 30)


# --------------------------------------------------------------- resume
@pytest.mark.parametrize("mode", ["classifier", "network"])
def test_resume_equals_uninterrupted(mode):
    batches = tiny_batches(6)
    kw = dict(mode=mode, rho=0.2, momentum=0.9, weight_decay=1e-3, lr=0.05)

    full = tiny_model()
    full_opt = ccsam_on(full, **kw)
    for x, y in batches:
        full_opt.step(per_sample_ce(full, x, y), y)

    first = tiny_model()
    opt = ccsam_on(first, **kw)
    for x, y in batches[:3]:
        opt.step(per_sample_ce(first, x, y), y)
    ckpt = checkpoint_roundtrip({"model": first.state_dict(), "optim": opt.state_dict()})
    # network mode also saves the group-wise engine's pass counts
    engine_keys = {"groupwise"} if mode == "network" else set()
    assert set(ckpt["optim"]) == {"state", "param_groups"} | engine_keys

    resumed = tiny_model(seed=123)
    resumed.load_state_dict(ckpt["model"])
    opt = ccsam_on(resumed, **kw)
    opt.load_state_dict(ckpt["optim"])
    for x, y in batches[3:]:
        opt.step(per_sample_ce(resumed, x, y), y)
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert opt.passes_per_step() == full_opt.passes_per_step()
    if mode == "network":
        assert opt.passes_per_step() is not None
        assert opt.param_groups is opt.base_optimizer.param_groups  # shared after a load


# ---------------------------------------------------- mixed precision


@pytest.mark.parametrize("mode", ["classifier", "network"])
def test_fp16_scaler(mode):
    x, y = tiny_batches(1)[0]
    x = x.float()
    m1, m2 = tiny_model().float(), tiny_model().float()
    kw = dict(mode=mode, rho=0.2, momentum=0.9, max_grad_norm=5.0)
    opt1, opt2 = ccsam_on(m1, **kw), ccsam_on(m2, **kw)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for _ in range(2):
        opt1.step(lambda: F.cross_entropy(m1(x), y, reduction="none"), y, scaler=scaler)
        opt2.step(lambda: F.cross_entropy(m2(x), y, reduction="none"), y)
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    # an inf gradient: the step is skipped, the scale backs off, nothing moves
    params = [p.clone() for p in m1.parameters()]
    scale = scaler.get_scale()
    opt1.step(lambda: F.cross_entropy(InfGrad.apply(m1(x)), y, reduction="none"), y, scaler=scaler)
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), params))
    assert scaler.get_scale() == scale * 0.5


def test_bf16_autocast_on_resnet32():
    check_bf16_resnet32_step(
        lambda model: CCSAM(
            model.parameters(), torch.optim.SGD, class_counts=COUNTS, classifier=model.fc, lr=0.05
        ),
        targets=torch.tensor([0, 1, 2, 3, 0, 0, 1, 2]),
    )


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "counts,match",
    [
        ([40, 20, 6], "3 entries but there are 4"),
        ([40, 20, 1, 2], r"got 1 for class 2 .*at least 2"),
        ([40, 0, 6, 2], "got 0 for class 1"),
        ([40, -3, 6, 2], "got -3 for class 1"),
    ],
)
def test_bad_class_counts(counts, match):
    model = tiny_model()
    with pytest.raises(ClassCountsError, match=match):
        ccsam_on(model, class_counts=counts, num_classes=4)


def test_class_counts_against_the_classifier():
    model = tiny_model()
    with pytest.raises(ClassCountsError, match="5 entries but the classifier has 4 outputs"):
        ccsam_on(model, class_counts=COUNTS + [3])


def test_labels_and_losses():
    model = tiny_model()
    opt = ccsam_on(model)
    x = torch.randn(4, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 4, 2])
    with pytest.raises(LabelError, match=r"\[0, 4\).*\[0, 4\]"):
        opt.step(per_sample_ce(model, x, y.clamp(max=3)), y)
    with pytest.raises(LabelError, match="labels"):
        opt.step(per_sample_ce(model, x, y.clamp(max=3)))
    y = torch.tensor([0, 1, 2, 3])
    with pytest.raises(LossShapeError, match="reduction='none'"):
        opt.step(lambda: F.cross_entropy(model(x), y), y)
    with pytest.raises(LossShapeError, match="3 losses for 4 labels"):
        opt.step(lambda: F.cross_entropy(model(x), y, reduction="none")[:3], y)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLossError):
        opt.step(lambda: F.cross_entropy(model(x), y, reduction="none") * float("nan"), y)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_bad_options():
    model = tiny_model()
    params = list(model.parameters())
    with pytest.raises(InvalidHyperparameterError, match="rho"):
        ccsam_on(model, rho=-0.1)
    with pytest.raises(InvalidHyperparameterError, match="flat_ratio"):
        ccsam_on(model, flat_ratio=1.5)
    with pytest.raises(InvalidHyperparameterError, match="mode"):
        ccsam_on(model, mode="backbone")
    with pytest.raises(InvalidHyperparameterError, match="classifier="):
        CCSAM(params, torch.optim.SGD, class_counts=COUNTS, lr=0.1)
    with pytest.raises(InvalidHyperparameterError, match="not among the optimizer's params"):
        CCSAM(params[:2], torch.optim.SGD, class_counts=COUNTS, classifier=model[-1], lr=0.1)
    opt = ccsam_on(model)
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    with pytest.raises(InvalidHyperparameterError, match="called the classifier 0 times"):
        opt.step(
            lambda: F.cross_entropy(
                model[-1].weight.sum() * model[:-1](x)[:, :4], y, reduction="none"
            ),
            y,
        )


def test_registered():
    assert "ccsam" in list_optimizers()
    model = tiny_model()
    opt = create_optimizer(
        "CC-SAM", model.parameters(), "sgd", classifier=model[-1], class_counts=COUNTS, lr=0.1
    )
    assert type(opt) is CCSAM and opt.mode == "classifier" and opt.per_tensor
    net = create_optimizer("ccsam", model.parameters(), mode="network", class_counts=COUNTS, lr=0.1)
    assert net.per_tensor is False  # type: ignore[attr-defined]
