"""Gradient accumulation: K micro-batches make one step on their concatenation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    COUNTS,
    RHO,
    SGD,
    ascent,
    build,
    count_all_reduces,
    hand_class_weights,
    per_sample_ce,
    run_gloo,
    sgd_update,
    tiny_batches,
    tiny_model,
)
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.parallel import DistributedDataParallel as DDP

from focalsam.optim import (
    CCSAM,
    AccumulationError,
    OptimizerInputError,
)

C = len(COUNTS)
METHODS = ["sam", "asam", "imbsam", "focal_sam"]


def split(x: Tensor, y: Tensor, sizes: list[int]) -> list[tuple[Tensor, Tensor]]:
    return list(zip(x.split(sizes), y.split(sizes)))


def reference(
    model: nn.Module,
    steps: list[list[tuple[Tensor, Tensor]]],
    name: str,
    eps_per_micro: bool = False,
) -> dict[str, Tensor]:
    """Parameters after the rule on each step's concatenated micro-batches, written with
    torch.func and a hand-written SGD. ``eps_per_micro``: the wrong variant that takes
    each micro-batch's ascent from its own g_b (its own norm)."""
    a_cls, b_cls = hand_class_weights(name, COUNTS)
    adaptive = name == "asam"
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    names = list(params)
    buf = {k: torch.zeros_like(v) for k, v in params.items()}

    def losses(theta: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, theta, (x,)), y, reduction="none")

    def grad(loss: Tensor, theta: dict[str, Tensor]) -> list[Tensor]:
        return list(torch.autograd.grad(loss, [theta[k] for k in names]))

    def eps_of(g_b: list[Tensor]) -> list[Tensor]:
        return ascent([params[k] for k in names], g_b, RHO, adaptive)

    for micro in steps:
        total = sum(y.shape[0] for _, y in micro)
        theta = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        g_a = [torch.zeros_like(v) for v in params.values()]
        g_bs = []
        for x, y in micro:
            g_a = [
                s + g
                for s, g in zip(g_a, grad((a_cls[y] * losses(theta, x, y)).sum() / total, theta))
            ]
            g_bs.append(grad((b_cls[y] * losses(theta, x, y)).sum() / total, theta))
        if eps_per_micro:
            eps = [eps_of(g) for g in g_bs]
        else:
            eps = [eps_of([sum(gs) for gs in zip(*g_bs)])] * len(micro)
        g = g_a
        for (x, y), e in zip(micro, eps):
            shifted = {k: (params[k] + ek).requires_grad_(True) for k, ek in zip(names, e)}
            g_s = grad((b_cls[y] * losses(shifted, x, y)).sum() / total, shifted)
            g = [s + gs for s, gs in zip(g, g_s)]
        sgd_update(params, buf, dict(zip(names, g)), **SGD)
    return params


def run_accumulated(name: str, steps, **kw) -> tuple[nn.Module, object]:
    model = tiny_model(batchnorm=False)
    opt = build(name, model, **kw)
    for micro in steps:
        opt.step_accumulated([(per_sample_ce(model, x, y), y) for x, y in micro])
    return model, opt


def assert_close(named, ref: dict[str, Tensor], atol: float = 1e-10) -> None:
    for k, v in named:
        torch.testing.assert_close(v.detach(), ref[k], atol=atol, rtol=0, msg=k)


@pytest.mark.parametrize("sizes", [[4, 4, 4], [5, 2, 4, 1]])
@pytest.mark.parametrize("name", ["plain", *METHODS])
def test_micro_batches_equal_one_batch(name, sizes):
    batches = tiny_batches(3, batch=sum(sizes))
    steps = [split(x, y, sizes) for x, y in batches]
    model, opt = run_accumulated(name, steps)
    assert_close(model.named_parameters(), reference(tiny_model(batchnorm=False), steps, name))
    # the same state as one step() on each concatenated batch
    whole = tiny_model(batchnorm=False)
    one = build(name, whole)
    for x, y in batches:
        one.step(per_sample_ce(whole, x, y), y)
    assert_close(model.named_parameters(), dict(whole.named_parameters()))
    for p, q in zip(model.parameters(), whole.parameters()):
        torch.testing.assert_close(
            opt.state[p]["momentum_buffer"], one.state[q]["momentum_buffer"], atol=1e-10, rtol=0
        )


@pytest.mark.parametrize("name", ["sam", "focal_sam"])
def test_one_norm_over_the_whole_ascent(name):
    """A per-micro-batch eps (each with its own norm) is measurably different: the
    reference that does so must not match, the one with one norm must."""
    sizes = [6, 2, 4]
    steps = [split(x, y, sizes) for x, y in tiny_batches(3, batch=12)]
    model, _ = run_accumulated(name, steps)
    right = reference(tiny_model(batchnorm=False), steps, name)
    wrong = reference(tiny_model(batchnorm=False), steps, name, eps_per_micro=True)
    assert_close(model.named_parameters(), right)
    gap = max((right[k] - wrong[k]).abs().max().item() for k in right)
    assert gap > 1e-6, gap
    mine = max((p.detach() - wrong[k]).abs().max().item() for k, p in model.named_parameters())
    assert mine > 1e-6, mine


@pytest.mark.parametrize("name", ["plain", *METHODS])
def test_one_micro_batch_is_step_bitwise(name):
    """K = 1 is step(), bit for bit (BatchNorm, clipping, momentum)."""
    m1, m2 = tiny_model(), tiny_model()
    kw = {"max_grad_norm": 0.5}
    o1 = build(name, m1, **kw)
    o2 = build(name, m2, **kw)
    for x, y in tiny_batches(4):

        def closure(model, x=x, y=y):
            return lambda: (F.cross_entropy(model(x), y, reduction="none"), x.sum())

        out1 = o1.step(closure(m1), y)
        (out2,) = o2.step_accumulated([(closure(m2), y)])
        assert torch.equal(out1[0], out2[0]) and not out2[0].requires_grad
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(o1.state[p]["momentum_buffer"], o2.state[q]["momentum_buffer"])


def test_one_micro_batch_is_step_bitwise_with_a_scaler():
    m1, m2 = tiny_model().float(), tiny_model().float()
    o1, o2 = build("focal_sam", m1), build("focal_sam", m2)
    s1, s2 = (torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in range(2))
    for x, y in tiny_batches(3):
        x = x.float()
        o1.step(per_sample_ce(m1, x, y), y, scaler=s1)
        o2.step_accumulated([(per_sample_ce(m2, x, y), y)], scaler=s2)
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
    assert s1.get_scale() == s2.get_scale()


def test_passes_and_outputs():
    model = tiny_model(batchnorm=False)
    forwards = []
    model.register_forward_hook(lambda m, i, o: forwards.append(i[0].shape[0]))
    opt = build("focal_sam", model)
    x, y = tiny_batches(1)[0]
    micro = split(x, y, [7, 5])
    outs = opt.step_accumulated(
        [
            (lambda x=x, y=y: (F.cross_entropy(model(x), y, reduction="none"), y), y)
            for x, y in micro
        ]
    )
    assert forwards == [7, 5, 7, 5]  # clean passes of each, then the perturbed ones
    assert [o[0].shape[0] for o in outs] == [7, 5]
    assert all(torch.equal(o[1], yk) for o, (_, yk) in zip(outs, micro))


def test_bad_micro_batches():
    model = tiny_model(batchnorm=False)
    opt = build("sam", model)
    x, y = tiny_batches(1)[0]
    with pytest.raises(AccumulationError, match="non-empty"):
        opt.step_accumulated([])
    with pytest.raises(AccumulationError, match="pair"):
        opt.step_accumulated([per_sample_ce(model, x, y)])
    with pytest.raises(AccumulationError, match="targets=None"):
        opt.step_accumulated([(per_sample_ce(model, x, y), None)] * 2)
    opt.step_accumulated([(per_sample_ce(model, x, y), None)])  # one micro-batch: as step()
    assert issubclass(AccumulationError, OptimizerInputError)


def test_ccsam_refuses_to_accumulate():
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, C)).double()
    opt = CCSAM(
        model.parameters(), torch.optim.SGD, class_counts=COUNTS, classifier=model[2], lr=0.1
    )
    x, y = tiny_batches(1)[0]
    with pytest.raises(AccumulationError, match="eps_c"):
        opt.step_accumulated([(per_sample_ce(model, x, y), y)])


# ------------------------------------------------------------------ DDP
DDP_KW = {"ascent_all_reduce": True, "strict_checks": False}


def _ddp_worker(rank: int, world: int, out: str) -> None:
    model = DDP(tiny_model(batchnorm=False))
    calls = count_all_reduces(model)
    opt = build("focal_sam", model, model=model, **DDP_KW)
    per_step = []
    for x, y in tiny_batches(3, batch=16):
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        before = len(calls)
        opt.step_accumulated(
            [
                (lambda a=a, b=b: F.cross_entropy(model(a), b, reduction="none"), b)
                for a, b in split(xs, ys, [3, 5])
            ]
        )
        per_step.append(len(calls) - before)
    torch.save(
        {"params": [p.detach() for p in model.module.parameters()], "allreduces": per_step},
        f"{out}.{rank}",
    )


def test_ddp_accumulation_equals_one_process(tmp_path: Path):
    out = str(tmp_path / "result")
    run_gloo(_ddp_worker, 2, tmp_path / "store", out)
    results = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    single = tiny_model(batchnorm=False)
    opt = build("focal_sam", single)
    for x, y in tiny_batches(3, batch=16):
        opt.step(per_sample_ce(single, x, y), y)
    for r in results:
        assert r["allreduces"] == [1, 1, 1]  # only the last perturbed backward all-reduces
        for p, q in zip(r["params"], single.parameters()):
            torch.testing.assert_close(p, q.detach(), atol=1e-12, rtol=0)
