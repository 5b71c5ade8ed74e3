"""FSDP2 (``fully_shard``, 2 gloo processes on the CPU): a sharded step equals one process
on the whole batch, and the optimizer's own per-parameter buffers are sharded too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import run_gloo, tiny_batches
from torch import Tensor, nn

from focalsam.optim import SAM, FocalSAM

fsdp = pytest.importorskip("torch.distributed.fsdp")
device_mesh = pytest.importorskip("torch.distributed.device_mesh")
from torch.distributed.tensor import DTensor  # noqa: E402

COUNTS = [40, 20, 6, 2]
BASE = dict(lr=0.1, momentum=0.9, weight_decay=1e-3)
CASES = {
    "sam": (SAM, dict(rho=0.2, ascent_all_reduce=True)),
    "focal_sam": (
        FocalSAM,
        dict(class_counts=COUNTS, gamma=2.0, lam=0.6, rho=0.2, ascent_all_reduce=True),
    ),
    # under FSDP2 eps is global whatever the flag says (every backward reduce-scatters)
    "focal_sam_no_flag": (FocalSAM, dict(class_counts=COUNTS, gamma=2.0, lam=0.6, rho=0.2)),
    # two micro-batches per rank through step_accumulated: one ascent over all of them
    "focal_sam_accumulated": (FocalSAM, dict(class_counts=COUNTS, rho=0.2, ascent_all_reduce=True)),
    "asam_clipped": (
        FocalSAM,
        dict(
            class_counts=COUNTS, rho=0.5, adaptive=True, max_grad_norm=0.5, ascent_all_reduce=True
        ),
    ),
}
STEPS = 3


def own_buffer_numel(opt: torch.optim.Optimizer) -> int:
    """Elements this rank holds in the optimizer's per-parameter buffers (momentum, the
    ascent step, the parameters' backup, ...): every tensor reachable from the optimizer
    that has a parameter's shape and is not a parameter; a DTensor counts its local shard."""
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    shapes = {tuple(p.shape) for g in opt.param_groups for p in g["params"]}
    seen: set[int] = set()
    todo: list[object] = [vars(opt)]
    total = 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, nn.Module):
            continue
        seen.add(id(obj))
        if isinstance(obj, Tensor):
            if id(obj) not in params and tuple(obj.shape) in shapes:
                total += (obj.to_local() if isinstance(obj, DTensor) else obj).numel()
        elif isinstance(obj, dict):
            todo += list(obj.values())
        elif isinstance(obj, list | tuple):
            todo += list(obj)
        elif type(obj).__module__.startswith("focalsam") and hasattr(obj, "__dict__"):
            todo.append(vars(obj))
    return total


def small_model() -> nn.Module:
    """A float64 MLP without a bias in its head: no parameter has the shape ``(C,)`` of
    the per-class weights, so :func:`own_buffer_numel` counts only per-parameter buffers."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4, bias=False)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    return model


def sharded_model(world: int) -> nn.Module:
    mesh = device_mesh.init_device_mesh("cpu", (world,))
    model = small_model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fsdp.fully_shard(layer, mesh=mesh)
    fsdp.fully_shard(model, mesh=mesh)
    return model


def train(model: nn.Module, cls, options, rank: int = 0, world: int = 1, micro: int = 1):
    """``STEPS`` steps on batches of 12, each rank taking its part in ``micro`` pieces."""
    opt = cls(model.parameters(), torch.optim.SGD, model=model, **options, **BASE)
    for x, y in tiny_batches(STEPS, batch=12):
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        pieces = [
            (lambda xm=xm, ym=ym: F.cross_entropy(model(xm), ym, reduction="none"), ym)
            for xm, ym in zip(xs.chunk(micro), ys.chunk(micro))
        ]
        if micro == 1:
            opt.step(*pieces[0])
        else:
            opt.step_accumulated(pieces)
    return opt


def _worker(rank: int, world: int, out: str) -> None:
    results = {}
    for name, (cls, options) in CASES.items():
        model = sharded_model(world)
        assert all(isinstance(p, DTensor) for p in model.parameters())
        opt = train(model, cls, options, rank, world, micro=2 if "accumulated" in name else 1)
        results[name] = {
            "params": [p.full_tensor().detach() for p in model.parameters()],
            "local": [p.to_local().numel() for p in model.parameters()],
            "buffers": own_buffer_numel(opt),
        }
    torch.save(results, f"{out}.{rank}")


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    out = str(tmp / "result")
    run_gloo(_worker, 2, Path(tmp / "store"), out)
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("case", list(CASES))
def test_fsdp2_equals_one_process_on_the_whole_batch(sharded_runs, case):
    cls, options = CASES[case]
    single = small_model()
    start = [p.detach().clone() for p in single.parameters()]
    train(single, cls, {k: v for k, v in options.items() if k != "ascent_all_reduce"})
    for r in sharded_runs:
        for p, q, p0 in zip(r[case]["params"], single.parameters(), start):
            torch.testing.assert_close(p, q.detach(), atol=1e-6, rtol=0)
            assert not torch.allclose(p, p0, atol=1e-3)


@pytest.mark.parametrize("case", list(CASES))
def test_the_optimizers_buffers_per_rank_are_half_those_of_one_process(sharded_runs, case):
    cls, options = CASES[case]
    single = small_model()
    whole = own_buffer_numel(train(single, cls, options))
    n_params = sum(p.numel() for p in single.parameters())
    assert whole >= 3 * n_params  # momentum, the ascent step eps, the backup of theta
    for r in sharded_runs:
        assert sum(r[case]["local"]) * 2 == n_params
        assert r[case]["buffers"] * 2 == whole
