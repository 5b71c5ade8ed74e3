"""focalsam.analysis.landscape and .sharpness: filter-normalised directions, loss
landscapes, SAM sharpness and the Focal-SAM ascent direction, on tiny float64 models."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import hand_class_weights, tiny_batches, tiny_model
from torch import Tensor, nn

from focalsam.analysis._closure import dataset_gradient, dataset_loss
from focalsam.analysis.landscape import (
    filter_normalized_direction,
    loss_landscape_1d,
    loss_landscape_2d,
)
from focalsam.analysis.sharpness import loss_and_grad_norm, sam_sharpness, weighted_ascent
from focalsam.errors import InputError


def ce(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y)


def ce_none(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def half_mse(out: Tensor, y: Tensor) -> Tensor:
    return 0.5 * (out.squeeze(1) - y).pow(2).mean()


def conv_model(seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bitwise(model: nn.Module, before: dict[str, Tensor]) -> None:
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def eval_model(seed: int = 0) -> nn.Module:
    """tiny_model (BatchNorm) with non-trivial running statistics, in eval mode."""
    model = tiny_model(seed)
    with torch.no_grad():
        for x, _ in tiny_batches(3, seed=7):
            model(x)
    return model.eval()


# --- directions ---------------------------------------------------------------------------


def test_each_filter_has_its_parameters_filter_norm() -> None:
    model = conv_model()
    params = list(model.parameters())
    d = filter_normalized_direction(model, seed=3)
    assert len(d) == len(params)
    for p, di in zip(params, d):
        assert di.shape == p.shape and di.dtype == p.dtype
        if p.ndim >= 2:  # conv (3, 2, 3, 3) and linear (5, 48) weights
            want = p.detach().reshape(p.shape[0], -1).norm(dim=1)
            got = di.reshape(di.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
            # a random direction, not the weight itself
            assert not torch.allclose(di, p.detach())
        else:  # biases, BatchNorm weight and bias
            assert torch.equal(di, torch.zeros_like(p))

    kept = filter_normalized_direction(model, seed=3, ignore_bn_and_bias=False)
    for p, di, dk in zip(params, d, kept):
        if p.ndim >= 2:
            assert torch.equal(dk, di)  # the 1-D choice does not shift the other draws
        else:
            assert float(dk.norm()) == pytest.approx(float(p.detach().norm()), rel=1e-9)
            assert float(dk.norm()) > 0


def test_same_seed_same_direction_and_shared_draw_across_models() -> None:
    a, b = conv_model(0), conv_model(1)
    d_a = filter_normalized_direction(a, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(d_a, filter_normalized_direction(a, seed=5)))
    other = filter_normalized_direction(a, seed=6)
    assert not torch.equal(d_a[0], other[0])
    # same seed on another model of the same architecture: same draw, other filter norms
    d_b = filter_normalized_direction(b, seed=5)
    for pa, pb, xa, xb in zip(a.parameters(), b.parameters(), d_a, d_b):
        if pa.ndim >= 2:
            na = pa.detach().reshape(pa.shape[0], -1).norm(dim=1)
            nb = pb.detach().reshape(pb.shape[0], -1).norm(dim=1)
            shape = (-1,) + (1,) * (pa.ndim - 1)
            torch.testing.assert_close(xa / na.reshape(shape), xb / nb.reshape(shape))


# --- landscapes -----------------------------------------------------------------------


def test_landscape_origin_is_the_dataset_loss_and_axes_are_betas_by_alphas() -> None:
    model = eval_model()
    batches = tiny_batches(2, batch=7) + tiny_batches(1, batch=3, seed=2)
    d1 = filter_normalized_direction(model, seed=0)
    d2 = filter_normalized_direction(model, seed=1)
    alphas, betas = [-0.5, 0.0, 0.5], [-1.0, 0.0, 1.0, 2.0]
    with torch.no_grad():
        base = float(dataset_loss(model, ce, batches))

    one = loss_landscape_1d(model, ce, batches, d1, alphas)
    assert one.shape == (3,) and one.dtype == torch.float64
    assert float(one[1]) == base  # exactly

    two = loss_landscape_2d(model, ce, batches, d1, d2, alphas, betas)
    assert two.shape == (len(betas), len(alphas))
    assert float(two[1, 1]) == base  # exactly
    assert torch.equal(two[1], one)  # beta = 0 row is the 1-D landscape along d1

    # out[j, i] = L(theta + alphas[i] d1 + betas[j] d2), checked on a hand-moved copy
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p, u, v in zip(moved.parameters(), d1, d2):
            p.add_(0.5 * u + 2.0 * v)
        want = float(dataset_loss(moved, ce, batches))
    assert float(two[3, 2]) == pytest.approx(want, rel=1e-12)
    assert abs(float(two[3, 2]) - base) > 1e-3
    assert float(two[0, 2]) != pytest.approx(float(two[3, 0]), rel=1e-6)

    # same seed, same numbers
    again = loss_landscape_2d(
        model,
        ce,
        batches,
        filter_normalized_direction(model, seed=0),
        filter_normalized_direction(model, seed=1),
        alphas,
        betas,
    )
    assert torch.equal(again, two)


def test_landscape_and_sharpness_restore_the_model_bitwise() -> None:
    model = tiny_model(3).train()  # training mode: BatchNorm statistics would move
    batches = tiny_batches(2)
    before = snapshot(model)
    d1 = filter_normalized_direction(model, seed=0, ignore_bn_and_bias=False)
    d2 = filter_normalized_direction(model, seed=1)
    assert_bitwise(model, before)

    loss_landscape_1d(model, ce, batches, d1, torch.linspace(-1, 1, 3))
    assert_bitwise(model, before)
    loss_landscape_2d(model, ce, batches, d1, d2, [-1.0, 1.0], [0.5])
    assert_bitwise(model, before)
    sam_sharpness(model, ce, batches, [0.05, 0.5])
    assert_bitwise(model, before)
    sam_sharpness(model, ce, batches, 0.1, ascent=d1)
    assert_bitwise(model, before)
    weighted_ascent(model, ce_none, batches, torch.ones(4))
    assert_bitwise(model, before)
    loss_and_grad_norm(model, ce, batches)
    assert_bitwise(model, before)
    assert model.training  # the caller's mode is kept

    calls = 0
    failure = RuntimeError()

    def failing(logits: Tensor, y: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise failure
        return ce(logits, y)

    with pytest.raises(RuntimeError) as raised:
        loss_landscape_1d(model, failing, batches, d1, [0.5, 1.0])
    assert raised.value is failure  # passed through as it was
    assert_bitwise(model, before)
    calls = 0
    with pytest.raises(RuntimeError) as raised:
        sam_sharpness(model, failing, batches, [0.5], ascent=d1)
    assert raised.value is failure
    assert_bitwise(model, before)


def test_mismatched_direction_is_an_input_error() -> None:
    model = eval_model()
    batches = tiny_batches(1)
    d = filter_normalized_direction(model)
    with pytest.raises(InputError, match="tensors"):
        loss_landscape_1d(model, ce, batches, d[:-1], [0.0])
    with pytest.raises(InputError, match="shape"):
        loss_landscape_1d(model, ce, batches, [t.t() if t.ndim == 2 else t for t in d], [0.0])
    with pytest.raises(InputError, match="finite"):
        loss_landscape_1d(model, ce, batches, d, [float("nan")])


# --- sharpness --------------------------------------------------------------------------


def quadratic_problem() -> tuple[nn.Module, list[tuple[Tensor, Tensor]], Tensor, Tensor]:
    """A linear model with half-MSE: L(theta) = 0.5 theta^T H theta - c^T theta + const
    with theta = (w, b), H = Phi^T Phi / N, c = Phi^T y / N, Phi = [x, 1]."""
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(3, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 3, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(1, generator=g, dtype=torch.float64))
    batches = [
        (torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randn(n, generator=g))
        for n in (5, 3)
    ]
    batches = [(x, y.double()) for x, y in batches]
    phi = torch.cat([torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) for x, _ in batches])
    y = torch.cat([t for _, t in batches])
    hess = phi.T @ phi / len(y)
    theta = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    grad = hess @ theta - phi.T @ y / len(y)
    return model, batches, hess, grad


def test_sam_sharpness_on_a_quadratic_is_the_closed_form() -> None:
    model, batches, hess, grad = quadratic_problem()
    rhos = [0.0, 0.01, 0.3, 2.0]
    got = sam_sharpness(model, half_mse, batches, rhos)
    assert isinstance(got, list) and all(isinstance(s, float) for s in got)
    assert got[0] == 0.0
    u = grad / grad.norm()
    quad = float(u @ hess @ u)
    for rho, s in zip(rhos[1:], got[1:]):
        want = rho * float(grad.norm()) + 0.5 * rho**2 * quad
        assert s == pytest.approx(want, rel=1e-10, abs=1e-14)

    # a given ascent direction v: rho g.v/|v| + 0.5 rho^2 v^T H v / |v|^2
    v = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    got_v = sam_sharpness(model, half_mse, batches, [0.2], ascent=[v[:3].reshape(1, 3), v[3:]])
    w = v / v.norm()
    want_v = 0.2 * float(grad @ w) + 0.5 * 0.04 * float(w @ hess @ w)
    assert got_v[0] == pytest.approx(want_v, rel=1e-10)

    loss, gnorm = loss_and_grad_norm(model, half_mse, batches)
    assert gnorm == pytest.approx(float(grad.norm()), rel=1e-12)
    with torch.no_grad():
        assert loss == pytest.approx(float(dataset_loss(model, half_mse, batches)), rel=1e-12)


def test_scaled_class_is_sharper() -> None:
    g = torch.Generator().manual_seed(4)
    model = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(0.01 * torch.randn(2, 2, generator=g, dtype=torch.float64))
    base = torch.randn(16, 2, generator=g, dtype=torch.float64)
    class0 = [(base, torch.zeros(16, dtype=torch.long))]
    class1 = [(10 * base, torch.ones(16, dtype=torch.long))]  # same inputs, 10x the scale
    s0 = sam_sharpness(model, ce, class0, [0.01])[0]
    s1 = sam_sharpness(model, ce, class1, [0.01])[0]
    assert 0 < s0 < s1
    assert s1 > 5 * s0


def test_zero_ascent_is_an_input_error() -> None:
    model = eval_model()
    zeros = [torch.zeros_like(p) for p in model.parameters()]
    with pytest.raises(InputError, match="norm"):
        sam_sharpness(model, ce, tiny_batches(1), [0.1], ascent=zeros)


# --- weighted ascent ------------------------------------------------------------------------


def test_weighted_ascent_with_unit_weights_is_the_dataset_gradient() -> None:
    model = eval_model()
    batches = tiny_batches(2, batch=6) + tiny_batches(1, batch=2, seed=3)
    params = list(model.parameters())
    got = weighted_ascent(model, ce_none, batches, torch.ones(4, dtype=torch.float64))
    _, want = dataset_gradient(model, ce, batches, params)
    for gt, wt in zip(got, want):
        torch.testing.assert_close(gt, wt, rtol=1e-12, atol=1e-15)
    assert all(p.grad is None for p in params)


def test_weighted_ascent_with_focal_weights_matches_a_hand_computation() -> None:
    g = torch.Generator().manual_seed(2)
    model = nn.Linear(3, 3).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    labels = [torch.tensor([0, 0, 1, 2]), torch.tensor([0, 2, 1])]
    batches = [(torch.randn(len(y), 3, generator=g, dtype=torch.float64), y) for y in labels]
    b = hand_class_weights("focal_sam", [6, 3, 1], gamma=2.0, lam=1.5)[1]
    got_w, got_b = weighted_ascent(model, ce_none, batches, b)

    # softmax cross-entropy of a linear layer: dl/dz = softmax(z) - onehot(y)
    x = torch.cat([t for t, _ in batches])
    y = torch.cat(labels)
    with torch.no_grad():
        r = torch.softmax(x @ model.weight.T + model.bias, dim=1) - F.one_hot(y, 3).double()
    r = r * b[y].unsqueeze(1) / len(y)
    torch.testing.assert_close(got_w, r.T @ x, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(got_b, r.sum(0), rtol=1e-12, atol=1e-15)
    # not the unweighted gradient
    plain_w, _ = weighted_ascent(model, ce_none, batches, [1.0, 1.0, 1.0])
    assert not torch.allclose(plain_w, got_w)


def test_weighted_ascent_rejects_bad_labels_and_losses() -> None:
    model = eval_model()
    batches = tiny_batches(1)  # labels in [0, 4)
    with pytest.raises(InputError, match="labels"):
        weighted_ascent(model, ce_none, batches, torch.ones(2))
    with pytest.raises(InputError, match="one loss per sample"):
        weighted_ascent(model, ce, batches, torch.ones(4))
