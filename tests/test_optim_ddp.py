"""DDP on CPU (gloo, 2 processes): one all-reduce per step; ascent all-reduce = one process."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from conftest import count_all_reduces, run_gloo, tiny_batches, tiny_model
from torch.nn.parallel import DistributedDataParallel as DDP

from focalsam.optim import FocalSAM

COUNTS = [40, 20, 6, 2]
KW = dict(class_counts=COUNTS, gamma=2.0, lam=0.6, rho=0.2, lr=0.1, momentum=0.9, weight_decay=1e-3)
STEPS = 3


def _worker(rank: int, world: int, out: str, ascent_all_reduce: bool) -> None:
    model = DDP(tiny_model(batchnorm=False))
    calls = count_all_reduces(model)
    opt = FocalSAM(
        model.parameters(),
        torch.optim.SGD,
        model=model,
        ascent_all_reduce=ascent_all_reduce,
        **KW,
    )
    per_step = []
    for x, y in tiny_batches(STEPS, batch=12):
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        before = len(calls)
        opt.step(lambda xs=xs, ys=ys: F.cross_entropy(model(xs), ys, reduction="none"), ys)
        per_step.append(len(calls) - before)
    torch.save(
        {"params": [p.detach() for p in model.module.parameters()], "allreduces": per_step},
        f"{out}.{rank}",
    )


def _run(tmp_path: Path, ascent_all_reduce: bool) -> list[dict]:
    out = str(tmp_path / "result")
    run_gloo(_worker, 2, tmp_path / "store", out, ascent_all_reduce)
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]


def test_ddp_with_ascent_all_reduce_equals_one_process(tmp_path):
    results = _run(tmp_path, ascent_all_reduce=True)
    single = tiny_model(batchnorm=False)
    opt = FocalSAM(single.parameters(), torch.optim.SGD, **KW)
    for x, y in tiny_batches(STEPS, batch=12):
        opt.step(lambda x=x, y=y: F.cross_entropy(single(x), y, reduction="none"), y)
    for r in results:
        for p, q in zip(r["params"], single.parameters()):
            torch.testing.assert_close(p, q.detach(), atol=1e-12, rtol=0)


def test_ddp_default_does_one_all_reduce_per_step(tmp_path):
    results = _run(tmp_path, ascent_all_reduce=False)
    for r in results:
        assert r["allreduces"] == [1] * STEPS
    # replicas stay identical, and differ from one process (eps is per replica)
    for p, q in zip(results[0]["params"], results[1]["params"]):
        assert torch.equal(p, q)
    single = tiny_model(batchnorm=False)
    opt = FocalSAM(single.parameters(), torch.optim.SGD, **KW)
    for x, y in tiny_batches(STEPS, batch=12):
        opt.step(lambda x=x, y=y: F.cross_entropy(single(x), y, reduction="none"), y)
    assert not all(
        torch.allclose(p, q.detach()) for p, q in zip(results[0]["params"], single.parameters())
    )
