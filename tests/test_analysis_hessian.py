"""focalsam.analysis.hessian, density and _closure against Hessians known exactly (float64)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from focalsam.analysis._closure import (
    HVPCounter,
    dataset_gradient,
    dataset_loss,
    hvp,
    trainable_params,
)
from focalsam.analysis.density import (
    DensityResult,
    density_from_dict,
    density_on_grid,
    spectral_density,
)
from focalsam.analysis.hessian import hessian_trace, top_eigenvalues

DTYPE = torch.float64
EIGS = [8.0, 4.0, 2.0, 1.0, 0.5, 0.25]  # of the least-squares Hessian below


def least_squares(
    eigs: list[float] = EIGS, n: int = 30, seed: int = 0
) -> tuple[nn.Module, list[tuple[Tensor, Tensor]], Tensor]:
    """``Linear(d, 1)`` under the mean squared error: ``H = 2 X^T X / N`` exactly, built to
    have eigenvalues ``eigs`` and random eigenvectors; two batches (12 and N - 12 rows)."""
    g = torch.Generator().manual_seed(seed)
    d = len(eigs)
    u, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=DTYPE))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DTYPE))
    s = torch.tensor(eigs, dtype=DTYPE).mul(n / 2).sqrt()
    x = u @ torch.diag(s) @ v.T
    y = torch.randn(n, 1, generator=g, dtype=DTYPE)
    model = nn.Linear(d, 1, bias=False).to(DTYPE)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g, dtype=DTYPE))
    hessian = 2 * x.T @ x / n
    return model, [(x[:12], y[:12]), (x[12:], y[12:])], hessian


def conv_net(seed: int = 0, channels: int = 4) -> nn.Module:
    """conv-BN-ReLU-pool-linear in float64, eval mode, BatchNorm with non-trivial statistics."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, 3),
    ).to(DTYPE)
    bn = model[1]
    assert isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


def image_batches(sizes: tuple[int, ...] = (8, 5), seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, 3, 8, 8, generator=g, dtype=DTYPE), torch.randint(0, 3, (n,), generator=g))
        for n in sizes
    ]


def exact_hessian(model: nn.Module, loss_fn, batches) -> Tensor:
    """The full Hessian of the concatenated-data loss by torch.func.hessian (no HVP code)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    buffers = dict(model.named_buffers())
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])

    def loss(flat: Tensor) -> Tensor:
        parts = torch.split(flat, sizes)
        state = {n: t.view(s) for n, t, s in zip(names, parts, shapes)}
        return loss_fn(functional_call(model, {**state, **buffers}, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return torch.func.hessian(loss)(flat)


# ----------------------------------------------------------------------------- _closure


def test_dataset_loss_equals_loss_on_concatenation() -> None:
    model, batches = conv_net(), image_batches()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    whole = F.cross_entropy(model(x), y)
    assert torch.allclose(dataset_loss(model, F.cross_entropy, batches), whole, rtol=1e-12)
    # a plain mean of the two batch losses would differ (sizes 8 and 5)
    naive = sum(F.cross_entropy(model(bx), by) for bx, by in batches) / 2
    assert not torch.allclose(naive, whole, rtol=1e-6)


def test_dataset_gradient_matches_autograd() -> None:
    model, batches = conv_net(), image_batches()
    params = trainable_params(model)
    loss = dataset_loss(model, F.cross_entropy, batches)
    expected = torch.autograd.grad(loss, params)
    value, grads = dataset_gradient(model, F.cross_entropy, batches, params)
    assert value == pytest.approx(float(loss.detach()), rel=1e-12)
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("method", ["double_backward", "func"])
def test_hvp_matches_finite_differences(method: str) -> None:
    """(g(theta + h v) - g(theta - h v)) / 2h against H v, conv net with BatchNorm (eval),
    two batches of different sizes (the n_b / N weighting)."""
    model, batches = conv_net(), image_batches()
    params = trainable_params(model)
    g = torch.Generator().manual_seed(5)
    v = [torch.randn(p.shape, generator=g, dtype=DTYPE) for p in params]
    h = 1e-5

    def grad_at(step: float) -> list[Tensor]:
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(d, alpha=step)
        out = dataset_gradient(model, F.cross_entropy, batches, params)[1]
        with torch.no_grad():
            for p, d in zip(params, v):
                p.sub_(d, alpha=step)
        return out

    fd = [(a - b) / (2 * h) for a, b in zip(grad_at(h), grad_at(-h))]
    hv = hvp(model, F.cross_entropy, batches, params, v, method=method)  # type: ignore[arg-type]
    fd_flat, hv_flat = torch.cat([t.flatten() for t in fd]), torch.cat([t.flatten() for t in hv])
    assert float((fd_flat - hv_flat).norm() / hv_flat.norm()) < 1e-6
    for a, b in zip(fd, hv):  # every block, not only the norm
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8 * float(hv_flat.abs().max()))


def test_hvp_methods_agree_on_a_subset_of_params() -> None:
    model, batches = conv_net(), image_batches()
    head = [model[5].weight]  # type: ignore[index]
    v = [torch.randn_like(head[0])]
    a = hvp(model, F.cross_entropy, batches, head, v)
    b = hvp(model, F.cross_entropy, batches, head, v, method="func")
    assert torch.allclose(a[0], b[0], rtol=1e-10, atol=1e-14)
    full = exact_hessian(model, F.cross_entropy, batches)
    sizes = [p.numel() for p in model.parameters()]
    start = sum(sizes[:4])  # conv w, conv b, bn w, bn b, then the head's weight
    assert sizes[4] == head[0].numel()
    block = full[start : start + sizes[4], start : start + sizes[4]]
    assert torch.allclose(a[0].flatten(), block @ v[0].flatten(), rtol=1e-9, atol=1e-12)


def test_hvp_counter_and_errors() -> None:
    model, batches, hessian = least_squares()
    counter = HVPCounter(model, F.mse_loss, batches)
    e = torch.zeros(6, dtype=DTYPE)
    e[2] = 1.0
    assert torch.allclose(counter.matvec(e), hessian[:, 2], rtol=1e-12)
    counter([torch.ones(1, 6, dtype=DTYPE)])
    assert counter.count == 2
    with pytest.raises(ValueError, match="shape"):
        counter([torch.ones(6, dtype=DTYPE)])
    with pytest.raises(ValueError, match="unknown HVP method"):
        hvp(model, F.mse_loss, batches, None, [e.view(1, 6)], method="eig")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no samples"):
        dataset_loss(model, F.mse_loss, [(batches[0][0][:0], batches[0][1][:0])])
    with pytest.raises(ValueError, match="not parameters of the model"):
        hvp(model, F.mse_loss, batches, [nn.Parameter(e.clone())], [e], method="func")


# ----------------------------------------------------------------------------- eigenvalues


def test_top_eigenvalues_match_eigvalsh() -> None:
    model, batches, hessian = least_squares()
    res = top_eigenvalues(model, F.mse_loss, batches, k=3, tol=1e-13, max_iter=500)
    exact = torch.linalg.eigvalsh(hessian).flip(0)[:3].tolist()
    assert res.values == pytest.approx(exact, rel=1e-6)
    assert all(res.converged) and not any(res.shifted)
    assert res.hvps == sum(res.iterations)
    for val, vec in zip(res.values, res.vectors):  # unit eigenvectors, shaped like the params
        flat = vec[0].flatten()
        assert vec[0].shape == model.weight.shape
        assert float((hessian @ flat - val * flat).norm()) < 1e-5
        assert float(flat.norm()) == pytest.approx(1.0)
    json.dumps(res.as_dict(), allow_nan=False)
    assert "vectors" not in res.as_dict()


def test_top_eigenvalues_of_a_conv_net_with_batchnorm() -> None:
    model, batches = conv_net(channels=2), image_batches()
    exact = torch.linalg.eigvalsh(exact_hessian(model, F.cross_entropy, batches)).flip(0)
    res = top_eigenvalues(model, F.cross_entropy, batches, k=2, tol=1e-12, max_iter=3000)
    assert res.values == pytest.approx(exact[:2].tolist(), rel=1e-5)


class Quadratic(nn.Module):
    """``loss = 0.5 theta^T A theta`` (the data are ignored): ``H = A``."""

    def __init__(self, a: Tensor) -> None:
        super().__init__()
        self.a = a
        self.theta = nn.Parameter(torch.ones(a.shape[0], dtype=a.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return self.theta

    def loss(self, theta: Tensor, y: Tensor) -> Tensor:
        return 0.5 * theta @ self.a @ theta


def test_largest_algebraic_when_the_dominant_eigenvalue_is_negative() -> None:
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=DTYPE))
    eigs = torch.tensor([-10.0, 3.0, 1.0, 0.5, -0.2], dtype=DTYPE)
    model = Quadratic(q @ torch.diag(eigs) @ q.T)
    batches = [(torch.zeros(1, dtype=DTYPE), torch.zeros(1, dtype=DTYPE))]
    res = top_eigenvalues(model, model.loss, batches, k=2, tol=1e-13, max_iter=5000)
    assert res.values == pytest.approx([3.0, 1.0], rel=1e-6)
    assert res.shifted == [True, True] and all(res.converged)


def test_sharper_class_has_the_larger_top_eigenvalue() -> None:
    """Two classes, the same features, class 1's scaled by 10: at W = 0 (softmax uniform)
    its cross-entropy Hessian is exactly 100x class 0's."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(20, 4, generator=g, dtype=DTYPE)
    model = nn.Linear(4, 2, bias=False).to(DTYPE)
    nn.init.zeros_(model.weight)
    class0 = [
        (x[:10], torch.zeros(10, dtype=torch.long)),
        (x[10:], torch.zeros(10, dtype=torch.long)),
    ]
    class1 = [(10 * x, torch.ones(20, dtype=torch.long))]
    kw = {"tol": 1e-12, "max_iter": 1000}
    top0 = top_eigenvalues(model, F.cross_entropy, class0, **kw).values[0]  # type: ignore[arg-type]
    top1 = top_eigenvalues(model, F.cross_entropy, class1, **kw).values[0]  # type: ignore[arg-type]
    assert top1 > top0 > 0
    assert top1 / top0 == pytest.approx(100.0, rel=1e-6)
    tr0 = hessian_trace(model, F.cross_entropy, class0, probes=20).mean
    tr1 = hessian_trace(model, F.cross_entropy, class1, probes=20).mean
    assert tr1 > 10 * tr0


def test_same_seed_same_numbers_other_seed_other_start() -> None:
    model, batches, _ = least_squares(eigs=[8.0, 7.0, 2.0, 1.0, 0.5, 0.25])
    run = lambda seed: top_eigenvalues(model, F.mse_loss, batches, k=2, tol=1e-6, seed=seed)
    a, b, c = run(0), run(0), run(1)
    strip = lambda r: {k: v for k, v in r.as_dict().items() if k != "seconds"}
    assert strip(a) == strip(b)
    assert a.values != c.values or a.iterations != c.iterations
    t = lambda seed: hessian_trace(model, F.mse_loss, batches, probes=12, tol=0.0, seed=seed)
    assert t(0).estimates == t(0).estimates != t(1).estimates
    d = lambda seed: spectral_density(model, F.mse_loss, batches, lanczos_steps=3, seed=seed)
    assert d(0).as_dict()["weights"] == d(0).as_dict()["weights"] != d(1).as_dict()["weights"]


def test_argument_errors() -> None:
    model, batches, _ = least_squares()
    with pytest.raises(ValueError, match="exceeds"):
        top_eigenvalues(model, F.mse_loss, batches, k=7)
    with pytest.raises(ValueError, match="probes"):
        hessian_trace(model, F.mse_loss, batches, probes=1)
    with pytest.raises(ValueError, match="no parameters"):
        top_eigenvalues(model, F.mse_loss, batches, params=[])


# ----------------------------------------------------------------------------- trace


def test_hutchinson_trace_within_three_standard_errors() -> None:
    model, batches, hessian = least_squares()
    exact = float(torch.trace(hessian))
    res = hessian_trace(model, F.mse_loss, batches, probes=200, tol=0.0)
    assert res.probes == res.hvps == len(res.estimates) == 200
    assert 0 < res.stderr < 0.1 * exact
    assert abs(res.mean - exact) < 3 * res.stderr
    est = torch.tensor(res.estimates, dtype=DTYPE)
    assert res.stderr == pytest.approx(float(est.std()) / math.sqrt(200))
    json.dumps(res.as_dict(), allow_nan=False)


def test_hutchinson_stops_early_after_ten_probes() -> None:
    model, batches, _ = least_squares()
    loose = hessian_trace(model, F.mse_loss, batches, probes=100, tol=10.0)
    assert loose.probes == 10 and loose.max_probes == 100
    # a diagonal Hessian: every Rademacher estimate is exact, stderr 0
    x = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=DTYPE))
    diag = nn.Linear(3, 1, bias=False).to(DTYPE)
    res = hessian_trace(diag, F.mse_loss, [(x, torch.zeros(3, 1, dtype=DTYPE))], probes=50)
    assert res.probes == 10 and res.stderr == 0.0
    assert res.mean == pytest.approx(2 * (1 + 4 + 9) / 3, rel=1e-12)


# ----------------------------------------------------------------------------- density


def test_density_nodes_are_the_eigenvalues_when_lanczos_spans_the_space() -> None:
    model, batches, hessian = least_squares()
    exact = torch.linalg.eigvalsh(hessian)
    for steps in (6, 20):  # 20 > dimension: stops at 6, the Krylov space is exhausted
        res = spectral_density(model, F.mse_loss, batches, lanczos_steps=steps, probes=3)
        assert res.steps == [6, 6, 6] and res.hvps == 18
        for nodes, weights in zip(res.nodes, res.weights):
            assert nodes == pytest.approx(exact.tolist(), rel=1e-6)
            assert sum(weights) == pytest.approx(1.0, abs=1e-12)
            assert min(weights) > 1e-9  # a random start has weight on every eigenvector
    json.dumps(res.as_dict(), allow_nan=False)


def test_density_weights_of_a_diagonal_hessian_and_full_reorthogonalisation() -> None:
    """H diagonal: with a normalised Rademacher start every eigenvector (a basis vector)
    has weight exactly 1/d, whatever the draw. A spread spectrum (1e-3 ... 1e2) over d = 100
    Lanczos steps: without full reorthogonalisation ghost copies replace eigenvalues."""
    d = 100
    eigs = torch.logspace(-3, 2, d, dtype=DTYPE)
    x = torch.diag((eigs * d / 2).sqrt())  # H = 2 X^T X / d = diag(eigs)
    model = nn.Linear(d, 1, bias=False).to(DTYPE)
    batches = [(x, torch.zeros(d, 1, dtype=DTYPE))]
    res = spectral_density(model, F.mse_loss, batches, lanczos_steps=d, probes=2)
    assert res.steps == [d, d]
    for nodes, weights in zip(res.nodes, res.weights):
        assert nodes == pytest.approx(eigs.tolist(), rel=1e-6)
        assert weights == pytest.approx([1 / d] * d, abs=1e-9)


def test_smoothed_density_is_concentrated_at_the_eigenvalues() -> None:
    model, batches, hessian = least_squares()
    exact = torch.linalg.eigvalsh(hessian)
    res = spectral_density(model, F.mse_loss, batches, lanczos_steps=6, probes=2)
    grid, density = density_on_grid(res)
    sigma = 0.005 * (EIGS[0] - EIGS[-1])
    assert grid.shape == density.shape == (1000,)
    assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=1e-12)
    near = (grid[:, None] - exact[None, :]).abs().min(1).values <= 4 * sigma
    assert float(torch.trapezoid(density * near, grid)) > 0.99
    # the method, an explicit grid and sigma
    grid2, density2 = res.on_grid(grid=torch.linspace(0, 9, 5000), sigma=0.05)
    assert float(torch.trapezoid(density2, grid2)) == pytest.approx(1.0, abs=1e-12)
    peak = float(grid2[density2.argmax()])
    assert peak == pytest.approx(
        float(exact[int(torch.tensor(res.weights).mean(0).argmax())]), abs=0.01
    )


def test_density_of_few_lanczos_steps_still_normalised() -> None:
    model, batches = conv_net(channels=2), image_batches()
    res = spectral_density(model, F.cross_entropy, batches, lanczos_steps=10, probes=2, seed=3)
    assert res.steps == [10, 10] and res.hvps == 20
    exact = torch.linalg.eigvalsh(exact_hessian(model, F.cross_entropy, batches))
    for nodes, weights in zip(res.nodes, res.weights):
        assert sum(weights) == pytest.approx(1.0, abs=1e-12)
        # Ritz values lie inside the spectrum, the extreme ones close to its ends
        assert float(exact[0]) - 1e-9 <= min(nodes) and max(nodes) <= float(exact[-1]) + 1e-9
        assert max(nodes) == pytest.approx(float(exact[-1]), rel=1e-3)
    grid, density = density_on_grid(res, num_points=200)
    assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=1e-12)
    saved = json.loads(json.dumps(res.as_dict(), allow_nan=False))
    grid2, density2 = density_from_dict(saved, num_points=200)
    assert torch.equal(grid, grid2) and torch.allclose(density, density2, rtol=1e-12)
    with pytest.raises(ValueError, match="sigma"):
        density_on_grid(res, sigma=0.0)
    empty = DensityResult([], [], [], 0, 0.0, 1, 0, 0, "double_backward")
    with pytest.raises(ValueError, match="no nodes"):
        density_on_grid(empty)
