"""Losses checked against their formulas, computed independently with numpy."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import focalsam.losses.weights as weights_mod
from focalsam.losses import (
    BalancedSoftmaxLoss,
    CrossEntropyLoss,
    DeferredReweighting,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    VSLoss,
    balanced_softmax_loss,
    class_balanced_weights,
    create_loss,
    cross_entropy,
    focal_loss,
    ldam_loss,
    ldam_margins,
    list_losses,
    logit_adjusted_loss,
    vs_loss,
)

Z = np.array(
    [[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 4.0, 1.0], [0.0, 0.0, 0.0], [1.5, 1.0, -2.0]]
)
Y = np.array([0, 2, 1, 1, 2])
COUNTS = np.array([100.0, 10.0, 1.0])


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def np_ce(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -np_log_softmax(z)[np.arange(len(y)), y]


def np_softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(np_log_softmax(z))


def t(a):
    return torch.tensor(a, dtype=torch.float64)


def ty():
    return torch.tensor(Y)


def onehot(y: np.ndarray, c: int = 3) -> np.ndarray:
    return np.eye(c)[y]


# ------------------------------------------------------------------ formulas
def test_cross_entropy():
    out = cross_entropy(t(Z), ty(), reduction="none")
    np.testing.assert_allclose(out.numpy(), np_ce(Z, Y), rtol=1e-12)
    # hand check of one row: log(1 + e^-3 + e^-1.5) for row 0
    assert out[0].item() == pytest.approx(np.log(1 + np.exp(-3.0) + np.exp(-1.5)), rel=1e-12)


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_logit_adjustment(tau):
    pi = COUNTS / COUNTS.sum()
    expected = np_ce(Z + tau * np.log(pi), Y)
    out = logit_adjusted_loss(t(Z), ty(), COUNTS, tau=tau, reduction="none")
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)
    mod = LogitAdjustedLoss(COUNTS, tau=tau, reduction="none")
    np.testing.assert_allclose(mod(t(Z), ty()).numpy(), expected, rtol=1e-6)


def test_balanced_softmax():
    expected = np_ce(Z + np.log(COUNTS), Y)
    np.testing.assert_allclose(
        balanced_softmax_loss(t(Z), ty(), COUNTS, reduction="none").numpy(), expected, rtol=1e-12
    )
    mod = BalancedSoftmaxLoss(COUNTS.tolist(), reduction="none")
    np.testing.assert_allclose(mod(t(Z), ty()).numpy(), expected, rtol=1e-6)


def test_ldam_margins():
    m = ldam_margins(COUNTS, 0.5).numpy()
    raw = 1.0 / np.sqrt(np.sqrt(COUNTS))
    np.testing.assert_allclose(m, raw * 0.5 / raw.max(), rtol=1e-12)
    assert m[2] == pytest.approx(0.5) and m[0] == pytest.approx(0.5 / np.sqrt(10))


@pytest.mark.parametrize(("max_m", "s"), [(0.5, 30.0), (0.3, 10.0)])
def test_ldam(max_m, s):
    m = max_m * COUNTS**-0.25 / (COUNTS**-0.25).max()
    zm = Z - onehot(Y) * m[Y][:, None]
    expected = np_ce(s * zm, Y)
    out = ldam_loss(t(Z), ty(), COUNTS, max_margin=max_m, scale=s, reduction="none")
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)
    mod = LDAMLoss(COUNTS, max_margin=max_m, scale=s, reduction="none")
    np.testing.assert_allclose(mod(t(Z), ty()).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize(("gamma", "tau"), [(0.3, 1.0), (0.2, 1.5), (0.0, 1.0)])
def test_vs(gamma, tau):
    delta = (COUNTS / COUNTS.max()) ** gamma
    iota = tau * np.log(COUNTS / COUNTS.sum())
    expected = np_ce(Z * delta + iota, Y)
    out = vs_loss(t(Z), ty(), COUNTS, gamma=gamma, tau=tau, reduction="none")
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)
    mod = VSLoss(COUNTS, gamma=gamma, tau=tau, reduction="none")
    np.testing.assert_allclose(mod(t(Z), ty()).numpy(), expected, rtol=1e-6)
    if gamma == 0:  # VS with gamma = 0 is logit adjustment
        la = logit_adjusted_loss(t(Z), ty(), COUNTS, tau=tau, reduction="none")
        np.testing.assert_allclose(out.numpy(), la.numpy(), rtol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_focal(gamma):
    p = np_softmax(Z)[np.arange(len(Y)), Y]
    expected = -((1 - p) ** gamma) * np.log(p)
    out = focal_loss(t(Z), ty(), gamma=gamma, reduction="none")
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10)
    mod = FocalLoss(gamma=gamma, reduction="none")
    np.testing.assert_allclose(mod(t(Z), ty()).numpy(), expected, rtol=1e-10)


def test_class_balanced_weights():
    for beta in (0.9, 0.99, 0.9999):
        w = (1 - beta) / (1 - beta**COUNTS)
        w = w / w.sum() * 3
        np.testing.assert_allclose(class_balanced_weights(COUNTS, beta).numpy(), w, rtol=1e-6)
    np.testing.assert_allclose(class_balanced_weights(COUNTS, 0.0).numpy(), [1, 1, 1])
    # beta -> 1 tends to inverse frequency
    inv = (1 / COUNTS) / (1 / COUNTS).sum() * 3
    np.testing.assert_allclose(class_balanced_weights(COUNTS, 1 - 1e-9).numpy(), inv, rtol=1e-4)
    assert class_balanced_weights(COUNTS).sum().item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="beta"):
        class_balanced_weights(COUNTS, 1.0)


def test_drw_schedule_and_ldam_drw():
    drw = DeferredReweighting(COUNTS, start_epoch=160, beta=0.9999)
    assert drw(0).tolist() == [1.0, 1.0, 1.0] and drw(159).tolist() == [1.0, 1.0, 1.0]
    w = (1 - 0.9999) / (1 - 0.9999**COUNTS)
    w = w / w.sum() * 3
    np.testing.assert_allclose(drw(160).numpy(), w, rtol=1e-6)
    np.testing.assert_allclose(drw(199).numpy(), w, rtol=1e-6)

    loss = create_loss("ldam_drw", class_counts=COUNTS, reduction="none")
    assert loss.drw is not None and loss.drw.start_epoch == 160
    plain = ldam_loss(t(Z), ty(), COUNTS, reduction="none").numpy()
    loss.set_epoch(10)
    np.testing.assert_allclose(loss(t(Z), ty()).detach().numpy(), plain, rtol=1e-6)
    loss.set_epoch(160)
    np.testing.assert_allclose(loss(t(Z), ty()).detach().numpy(), plain * w[Y], rtol=1e-6)
    # DRW on any loss, by name
    ce = create_loss("ce", class_counts=COUNTS, drw_start_epoch=2, reduction="sum")
    ce.set_epoch(1)
    assert ce(t(Z), ty()).item() == pytest.approx(np_ce(Z, Y).sum())
    ce.set_epoch(2)
    assert ce(t(Z), ty()).item() == pytest.approx((np_ce(Z, Y) * w[Y]).sum(), rel=1e-6)


def test_drw_switches_its_weights_in_place():
    """A captured CUDA-graph step reads the weight's storage, so the epoch's switch must
    write into it rather than rebind the buffer."""
    loss = create_loss("ldam_drw", class_counts=COUNTS, reduction="none")
    loss.set_epoch(0)
    where = loss.weight.data_ptr()
    loss.set_epoch(160)
    assert loss.weight.data_ptr() == where
    np.testing.assert_allclose(loss.weight.numpy(), loss.drw(160).numpy())
    loss.set_epoch(3)  # back before the switch (a resumed run re-selects its epoch)
    assert loss.weight.data_ptr() == where and loss.weight.tolist() == [1.0, 1.0, 1.0]


def test_reductions():
    w = torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)
    per = np_ce(Z, Y) * w.numpy()[Y]
    assert cross_entropy(t(Z), ty(), w, "none").numpy() == pytest.approx(per)
    assert cross_entropy(t(Z), ty(), w, "sum").item() == pytest.approx(per.sum())
    # "mean" is sum / B, as the sharpness-aware recipes average
    assert cross_entropy(t(Z), ty(), w, "mean").item() == pytest.approx(per.mean())
    # "weighted_mean" is torch's weighted mean
    ref = F.cross_entropy(t(Z), ty(), weight=w)
    assert cross_entropy(t(Z), ty(), w, "weighted_mean").item() == pytest.approx(ref.item())
    assert cross_entropy(t(Z), ty()).item() == pytest.approx(np_ce(Z, Y).mean())
    mod = CrossEntropyLoss(weight=w, reduction="weighted_mean")
    assert mod(t(Z), ty()).item() == pytest.approx(ref.item())
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(t(Z), ty(), reduction="avg")


def test_class_balanced_via_registry():
    loss = create_loss("focal", class_counts=COUNTS, class_balanced_beta=0.99, gamma=2.0)
    w = (1 - 0.99) / (1 - 0.99**COUNTS)
    w = w / w.sum() * 3
    p = np_softmax(Z)[np.arange(5), Y]
    expected = (-((1 - p) ** 2) * np.log(p) * w[Y]).mean()
    assert loss(t(Z), ty()).item() == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------ gradients
def _grad(fn, z):
    z = t(z).requires_grad_(True)
    fn(z).backward()
    return z.grad.numpy()


def test_gradients_match_softmax_minus_onehot():
    B = len(Y)
    pi = COUNTS / COUNTS.sum()
    # logit adjustment: d/dz mean CE(z + tau log pi) = (softmax(z + tau log pi) - e_y) / B
    g = _grad(lambda z: logit_adjusted_loss(z, ty(), COUNTS, tau=1.5), Z)
    np.testing.assert_allclose(g, (np_softmax(Z + 1.5 * np.log(pi)) - onehot(Y)) / B, atol=1e-12)
    # LDAM: s * (softmax(s (z - m e_y)) - e_y) / B
    m = 0.5 * COUNTS**-0.25 / (COUNTS**-0.25).max()
    zm = 30 * (Z - onehot(Y) * m[Y][:, None])
    g = _grad(lambda z: ldam_loss(z, ty(), COUNTS), Z)
    np.testing.assert_allclose(g, 30 * (np_softmax(zm) - onehot(Y)) / B, atol=1e-12)
    # VS: Delta * (softmax(Delta z + iota) - e_y) / B
    delta = (COUNTS / COUNTS.max()) ** 0.3
    g = _grad(lambda z: vs_loss(z, ty(), COUNTS, gamma=0.3), Z)
    expected = delta * (np_softmax(Z * delta + np.log(pi)) - onehot(Y)) / B
    np.testing.assert_allclose(g, expected, atol=1e-12)


def test_focal_gradient():
    gamma = 2.0
    z = t(Z).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: focal_loss(x, ty(), gamma=gamma), (z,))
    assert torch.autograd.gradcheck(lambda x: focal_loss(x, ty(), gamma=0.5), (z,))
    # analytic: dl/dz = (1-p)^g [ g p log p / (1-p) - 1 ] (e_y - p) ... written per row
    p = np_softmax(Z)
    pt = p[np.arange(5), Y]
    dl_dpt = gamma * (1 - pt) ** (gamma - 1) * np.log(pt) - (1 - pt) ** gamma / pt
    dpt_dz = pt[:, None] * (onehot(Y) - p)
    g = _grad(lambda x: focal_loss(x, ty(), gamma=gamma, reduction="sum"), Z)
    np.testing.assert_allclose(g, dl_dpt[:, None] * dpt_dz, atol=1e-12)


def test_focal_finite_gradient_when_confident():
    z = torch.tensor([[60.0, -60.0]], dtype=torch.float32, requires_grad=True)
    focal_loss(z, torch.tensor([0]), gamma=0.5).backward()
    assert torch.isfinite(z.grad).all()


# ------------------------------------------------------------------ registry
def test_registry_builds_every_loss():
    names = list_losses()
    for n in ["ce", "logit_adjustment", "ldam", "ldam_drw", "vs", "balanced_softmax", "focal"]:
        assert n in names
    for n in names:
        loss = create_loss(n, class_counts=COUNTS, reduction="none")
        out = loss(t(Z), ty())
        assert out.shape == (5,) and torch.isfinite(out).all()
    assert isinstance(create_loss("LDAM", class_counts=COUNTS), LDAMLoss)
    la = create_loss("logit-adjustment", class_counts=COUNTS, tau=2.0)
    assert la(t(Z), ty()).item() == pytest.approx(
        logit_adjusted_loss(t(Z), ty(), COUNTS, tau=2.0).item(), rel=1e-6
    )


def test_registry_errors():
    with pytest.raises(
        ValueError, match="unknown loss 'lsoftmax'; valid(?: names)?: balanced_softmax"
    ):
        create_loss("lsoftmax")
    with pytest.raises(ValueError, match="'ldam' needs class_counts"):
        create_loss("ldam")
    with pytest.raises(TypeError, match="'vs'.*margin"):
        create_loss("vs", class_counts=COUNTS, margin=1.0)
    with pytest.raises(ValueError, match="not both"):
        create_loss("ce", class_counts=COUNTS, drw_start_epoch=1, class_balanced_beta=0.9)
    with pytest.raises(ValueError, match="needs class_counts"):
        create_loss("ce", drw_start_epoch=3)
    assert create_loss("ce")(t(Z), ty()).item() == pytest.approx(np_ce(Z, Y).mean())


# ------------------------------------------------------------------ bad input
def test_class_count_mismatch_with_model_outputs():
    z4 = torch.zeros(2, 4)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"model outputs 4 classes .* built for 3 classes"):
        LDAMLoss(COUNTS)(z4, y)
    with pytest.raises(ValueError, match="model outputs 4 classes"):
        logit_adjusted_loss(z4, y, COUNTS)
    with pytest.raises(ValueError, match="model outputs 4 classes"):
        create_loss("ce", class_counts=COUNTS)(z4, y)


@pytest.mark.parametrize(
    ("counts", "match"),
    [
        ([10, 0, 1], "positive, got 0 for class 1"),
        ([10, -2, 1], "positive, got -2 for class 1"),
        ([10, float("nan"), 1], "finite, got nan for class 1"),
        ([10, 2.5, 1], "whole numbers.*got 2.5 for class 1"),
        ([], "non-empty"),
        ([[1, 2, 3]], "1-D"),
    ],
)
def test_bad_class_counts(counts, match):
    with pytest.raises(ValueError, match=match):
        create_loss("balanced_softmax", class_counts=counts)
    with pytest.raises(ValueError, match=match):
        vs_loss(t(Z), ty(), counts)


def test_bad_targets_and_logits():
    with pytest.raises(ValueError, match=r"target 3 is out of range: expected 0 <= target < 3"):
        cross_entropy(t(Z), torch.tensor([0, 1, 3, 1, 0]))
    with pytest.raises(ValueError, match="target -1 is out of range"):
        LDAMLoss(COUNTS)(t(Z), torch.tensor([0, 1, -1, 1, 0]))
    with pytest.raises(ValueError, match="batch size 5 but targets have 4"):
        focal_loss(t(Z), torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="integer class indices"):
        cross_entropy(t(Z), torch.zeros(5))
    # uint8 and bool index as masks: refused, even without the range check
    for dtype in (torch.uint8, torch.bool):
        with pytest.raises(ValueError, match=f"integer class indices .*got dtype {dtype}.*mask"):
            LDAMLoss(COUNTS, validate=False)(t(Z), ty().to(dtype))
        with pytest.raises(ValueError, match="integer class indices"):
            vs_loss(t(Z), ty().to(dtype), COUNTS, reduction="none")
    with pytest.raises(ValueError, match=r"shape \(B, C\)"):
        cross_entropy(torch.zeros(5), ty())
    with pytest.raises(ValueError, match="weight must have shape"):
        cross_entropy(t(Z), ty(), weight=torch.ones(2))
    with pytest.raises(ValueError, match="weight has 2 entries"):
        VSLoss(COUNTS, weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1)
    with pytest.raises(ValueError, match="scale"):
        LDAMLoss(COUNTS, scale=0)
    # the range check can be switched off for speed (torch then reports it itself)
    LDAMLoss(COUNTS, validate=False)(t(Z), ty())


def test_half_precision_logits_computed_in_float32():
    z = t(Z).to(torch.bfloat16)
    out = LogitAdjustedLoss(COUNTS, reduction="none")(z, ty())
    assert out.dtype == torch.float32
    ref = logit_adjusted_loss(z.double(), ty(), COUNTS, reduction="none")
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-5)


def test_ldam_with_normed_linear_resnet():
    from focalsam.models import resnet32

    torch.manual_seed(0)
    model = resnet32(3, normed_linear=True)
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 2])
    logits = model(x)
    assert logits.abs().max() <= 1.0 + 1e-5  # cosine logits
    loss = create_loss("ldam_drw", class_counts=COUNTS)
    value = loss(logits, y)
    value.backward()
    assert torch.isfinite(value) and model.fc.weight.grad is not None


def test_module_device_move_keeps_drw():
    loss = create_loss("vs", class_counts=COUNTS, drw_start_epoch=0)
    loss = loss.to(torch.float32)
    loss.set_epoch(5)
    assert loss.weight is not None and loss.weight.shape == (3,)
    assert "drw=DeferredReweighting" in repr(loss)


def test_doctests():
    assert doctest.testmod(weights_mod, raise_on_error=False).failed == 0
