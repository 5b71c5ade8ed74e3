"""Shared fixtures, helpers, and the independent reference of the two-weight rule
(``docs/design.md``): class weights by hand, the ascent step, SGD, the whole run."""

from __future__ import annotations

import gc
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

SHARED = Path(__file__).resolve().parents[2] / "shared"


def tiny_model(seed: int = 0, batchnorm: bool = True, classes: int = 4) -> nn.Module:
    """A float64 MLP (with BatchNorm by default) small enough for exact checks."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(5, 8)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(8))
    layers += [nn.Tanh(), nn.Linear(8, classes)]
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    return model


def tiny_batches(
    n: int, batch: int = 12, classes: int = 4, seed: int = 1
) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, 5, generator=g, dtype=torch.float64),
            torch.randint(0, classes, (batch,), generator=g),
        )
        for _ in range(n)
    ]


def per_sample_ce(model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], Tensor]:
    return lambda: F.cross_entropy(model(x), y, reduction="none")


#: the optimizer tests' long-tailed training counts, base SGD and radius
COUNTS = [40, 20, 6, 2]
SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}
RHO = 0.2


def build(name: str, net: nn.Module, **kw: Any) -> Any:
    """A registered method on ``net``'s parameters by name (``model=`` is its setting): base SGD (:data:`SGD`), rho :data:`RHO`,
    the class counts :data:`COUNTS` where it needs them (ImbSAM's tail: eta 10)."""
    from focalsam.optim import create_optimizer, get_method

    extra: dict[str, Any] = {}
    if get_method(name).needs_class_counts:
        extra["class_counts"] = COUNTS
    if get_method(name).name == "imbsam":
        extra["eta"] = 10
    return create_optimizer(name, net.parameters(), "sgd", **{"rho": RHO, **SGD, **extra, **kw})


def hand_class_weights(
    name: str,
    counts: list[int],
    *,
    gamma: float = 2.0,
    lam: float = 0.5,
    eta: float = 10,
    kappa: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """``(a, b)`` per class, written by hand from the rule (not with focalsam's helpers):
    plain ``(1, 0)``; SAM ``(0, 1)``; ImbSAM ``(1[n >= eta], kappa 1[n < eta])``;
    Focal-SAM ``c = lam (1 - n / sum n) ** gamma``, ``(1 - c, c)``."""
    n = [float(v) for v in counts]
    if name == "plain":
        a, b = [1.0] * len(n), [0.0] * len(n)
    elif name in ("sam", "asam"):
        a, b = [0.0] * len(n), [1.0] * len(n)
    elif name == "imbsam":
        a = [0.0 if v < eta else 1.0 for v in n]
        b = [kappa if v < eta else 0.0 for v in n]
    elif name == "focal_sam":
        total = sum(n)
        b = [lam * (1.0 - v / total) ** gamma for v in n]
        a = [1.0 - c for c in b]
    else:
        raise ValueError(f"no hand-written weights for {name!r}")
    return torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)


def ascent(params: list[Tensor], g_b: list[Tensor], rho: float, adaptive: bool) -> list[Tensor]:
    """SAM's ascent ``eps = rho g / ||g||`` (ASAM: ``rho p^2 g / ||p g||``)."""
    if adaptive:
        norm = torch.sqrt(sum(((p * g) ** 2).sum() for p, g in zip(params, g_b)))
        return [rho * p**2 * g / (norm + 1e-12) for p, g in zip(params, g_b)]
    norm = torch.sqrt(sum((g**2).sum() for g in g_b))
    return [rho * g / (norm + 1e-12) for g in g_b]


def sgd_update(
    params: dict[str, Tensor],
    buf: dict[str, Tensor],
    grads: dict[str, Tensor],
    lr: float,
    momentum: float,
    weight_decay: float,
) -> None:
    """SGD with momentum and coupled weight decay, in place: ``v = m v + g + wd p``,
    ``p = p - lr v``."""
    for k, g in grads.items():
        buf[k] = momentum * buf[k] + g + weight_decay * params[k]
        params[k] = params[k] - lr * buf[k]


def file_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time (to show nothing
    was written)."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def reference_run(
    model: nn.Module,
    batches: list[tuple[Tensor, Tensor]],
    a_class: Tensor,
    b_class: Tensor,
    rho: float,
    lr: float,
    momentum: float,
    weight_decay: float,
    adaptive: bool = False,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The two-weight rule (``docs/design.md``) written out with torch.func and
    a hand-written SGD (momentum, coupled weight decay), independent of focalsam.

    Returns the final parameters and buffers (BatchNorm statistics updated in
    both forward passes, as the published recipes do).
    """
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    momentum_buf = {k: torch.zeros_like(v) for k, v in params.items()}
    names = list(params)

    def losses_at(theta: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, (theta, buffers), (x,))
        return F.cross_entropy(logits, y, reduction="none")

    for x, y in batches:
        a, b = a_class[y], b_class[y]
        batch = x.shape[0]
        theta = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        l0 = losses_at(theta, x, y)
        g_b = torch.autograd.grad(
            (b * l0).sum() / batch, [theta[k] for k in names], retain_graph=True, allow_unused=True
        )
        g_a = torch.autograd.grad(
            (a * l0).sum() / batch, [theta[k] for k in names], allow_unused=True
        )
        g_b = [torch.zeros_like(params[k]) if g is None else g for k, g in zip(names, g_b)]
        g_a = [torch.zeros_like(params[k]) if g is None else g for k, g in zip(names, g_a)]
        eps = ascent([params[k] for k in names], g_b, rho, adaptive)
        perturbed = {k: (params[k] + e).requires_grad_(True) for k, e in zip(names, eps)}
        l1 = losses_at(perturbed, x, y)
        g_s = torch.autograd.grad(
            (b * l1).sum() / batch, [perturbed[k] for k in names], allow_unused=True
        )
        grads = {
            k: ga + (torch.zeros_like(ga) if gs is None else gs)
            for k, ga, gs in zip(names, g_a, g_s)
        }
        sgd_update(params, momentum_buf, grads, lr, momentum, weight_decay)
    return params, buffers


class InfGrad(torch.autograd.Function):
    """Identity forward; an infinite gradient backward (an fp16 overflow on demand)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad * float("inf")


def checkpoint_roundtrip(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` through torch.save and ``torch.load(weights_only=True)``, in memory."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.fixture
def shared_dir() -> Path:
    return SHARED


def run_gloo(fn: Callable[..., None], world: int, store: Path, *args: Any) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` spawned CPU processes on one gloo group.

    ``fn`` must be a module-level function (spawn pickles it by name). The group
    meets through a file store (no port to race for). Each process ends cleanly:
    a barrier, so no rank closes its connections while a peer still has a
    collective in flight, then a garbage collection, so DDP reducers and comm-hook
    futures are freed while the interpreter is whole, and only then the group is
    destroyed. Without this, gloo now and then aborts a process at exit
    ("terminate called without an active exception").
    """
    mp.spawn(_gloo_entry, args=(world, f"file://{store}", fn, args), nprocs=world, join=True)


def _gloo_entry(
    rank: int, world: int, init: str, fn: Callable[..., None], args: tuple[Any, ...]
) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        fn(rank, world, *args)  # everything fn built is released when it returns
        dist.barrier()
    finally:
        gc.collect()
        dist.destroy_process_group()


def check_bf16_resnet32_step(
    make_optimizer: Callable[[nn.Module], Any], targets: Tensor | None = None
) -> None:
    """One step of ResNet-32 (4 classes, batch 8) under CPU bf16 autocast: the losses come
    back float32 and finite, every parameter stays finite, and the step moved some.

    ``targets`` default to random labels drawn after the images (seed 0).
    """
    from focalsam.models import resnet32

    torch.manual_seed(0)
    model = resnet32(num_classes=4)
    opt = make_optimizer(model)
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 4, (8,)) if targets is None else targets
    before = [p.clone() for p in model.parameters()]

    def closure() -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        return F.cross_entropy(logits.float(), y, reduction="none")

    losses = opt.step(closure, y)
    assert losses.dtype == torch.float32 and torch.isfinite(losses).all()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


def demo_config(run_dir: Path, **overrides: Any) -> Any:
    """The demo preset, 2 epochs evaluated each, quiet, in ``run_dir`` (short or dotted keys)."""
    from focalsam.train import make_config

    base = {
        "epochs": 2,
        "eval_every": 1,
        "run_dir": str(run_dir),
        "progress": False,
        "tensorboard": False,
    }
    return make_config("demo", overrides={**base, **overrides})


def silent_trainer(cfg: Any, **kw: Any) -> Any:
    """A Trainer that logs nothing."""
    from focalsam.train import Trainer

    return Trainer(cfg, log=lambda _m: None, **kw)


class NoHostSync(TorchDispatchMode):
    """Fails on every op that reads a tensor's value on the host."""

    SYNCING = ("_local_scalar_dense", "is_nonzero", "nonzero", "equal", "item")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.SYNCING:
            raise AssertionError(f"host sync: {func}")
        return func(*args, **(kwargs or {}))


def patch_host_reads(monkeypatch: Any) -> None:
    """Make every Python-level host read of a tensor (``item``, ``tolist``, ``bool``, ...)
    fail, through ``monkeypatch``."""

    def fail(*args, **kwargs):
        raise AssertionError("host read")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, fail)


def three_group_batches() -> list[tuple[Tensor, Tensor]]:
    """Six batches of 12 over 4 classes; the first four hold only two classes each (so
    each of :func:`three_group_engine`'s groups is missing from some batch)."""
    data = tiny_batches(6, batch=12, seed=3)
    for i, kept in ((0, [0, 1]), (1, [2, 3]), (2, [0, 3]), (3, [1, 2])):
        data[i] = (data[i][0], torch.tensor(kept)[data[i][1] % 2])  # classes 'kept' only
    return data


def three_group_engine(model: nn.Module, *, per_tensor: bool, strict_checks: bool) -> Any:
    """The generic group-wise engine with everything switched on: three groups over 4
    classes, one with radius 0 (folded into the clean pass), a clean weight, two parameter
    groups with their own rho, and every other step plain (sam_every 2)."""
    from focalsam.optim.groupwise import GroupwiseSAM

    params = list(model.parameters())
    return GroupwiseSAM(
        [{"params": params[:2], "rho": 0.5}, {"params": params[2:]}],
        torch.optim.SGD,
        group_of=[0, 1, 1, 2],
        radius=[0.2, 0.0, 0.4],
        clean_weight=0.3,
        group_weight=0.7,
        per_tensor=per_tensor,
        sam_every=2,
        model=model,
        strict_checks=strict_checks,
        **SGD,
    )


def count_all_reduces(model: Any) -> list[Any]:
    """Register a comm hook on the DDP ``model`` that averages gradients as DDP's default
    does and records each bucket all-reduce: the returned list grows by one per call."""
    calls: list[Any] = []
    world = dist.get_world_size()

    def counting_hook(state, bucket):  # unannotated: DDP checks a hook's annotations
        calls.append(1)
        tensor = bucket.buffer().div_(world)
        return dist.all_reduce(tensor, async_op=True).get_future().then(lambda f: f.value()[0])

    model.register_comm_hook(None, counting_hook)
    return calls


def training_state(model: nn.Module, opt: Any) -> dict[str, Tensor]:
    """Parameters, buffers (BatchNorm statistics) and every tensor of the optimizer's
    per-parameter state (momentum, ...), cloned, by name."""
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for i, p in enumerate(model.parameters()):
        for k, v in opt.state.get(p, {}).items():
            out[f"state.{i}.{k}"] = v.clone()
    return out


def assert_states_close(a: dict[str, Tensor], b: dict[str, Tensor], atol: float = 1e-12) -> None:
    """Two :func:`training_state` results hold the same names, equal to ``atol``."""
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)
