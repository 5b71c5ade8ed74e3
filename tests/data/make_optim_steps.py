"""Record every method's parameters after 5 steps in each step mode (run once, before a
refactor of the optimizer core; ``test_optim_steps_unchanged.py`` compares against it).

    python tests/data/make_optim_steps.py   # writes tests/data/optim_steps.pt

The optimizers are built by class name with explicit arguments (not through the
registry), on a float64 MLP with BatchNorm, so the recording depends on nothing but the
optimizers' public constructors and step methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

COUNTS = [60, 25, 8, 3]
STEPS = 5
OUT = Path(__file__).with_name("optim_steps.pt")

#: method -> (class name in focalsam.optim, constructor options besides the shared ones)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("PlainOptimizer", {}),
    "sam": ("SAM", {"rho": 0.05}),
    "asam": ("SAM", {"rho": 0.5, "adaptive": True}),
    "imbsam": ("ImbSAM", {"rho": 0.05, "class_counts": COUNTS, "eta": 10, "kappa": 2.0}),
    "focal_sam": ("FocalSAM", {"rho": 0.05, "class_counts": COUNTS, "gamma": 2.0, "lam": 0.7}),
    "ccsam_classifier": (
        "CCSAM",
        {"rho": 0.5, "class_counts": COUNTS, "flat_ratio": 0.5, "mode": "classifier"},
    ),
    "ccsam_network": (
        "CCSAM",
        {"rho": 0.5, "class_counts": COUNTS, "flat_ratio": 0.5, "mode": "network"},
    ),
}

#: mode -> (extra constructor options, micro-batches per step); which methods take it
MODES: dict[str, tuple[dict[str, Any], int]] = {
    "strict": ({"strict_checks": True}, 1),
    "sync_free": ({"strict_checks": False}, 1),
    "accumulation_2": ({"strict_checks": True}, 2),
    "sam_every_2": ({"strict_checks": True, "sam_every": 2}, 1),
}
SKIP = {
    ("ccsam_classifier", "sync_free"),
    ("ccsam_network", "sync_free"),
    ("ccsam_classifier", "accumulation_2"),
    ("ccsam_network", "accumulation_2"),
    ("ccsam_classifier", "sam_every_2"),
    ("ccsam_network", "sam_every_2"),
    ("plain", "sam_every_2"),
}


def model() -> nn.Sequential:
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 4)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    return net


def batches() -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS):
        y = torch.tensor([0, 1, 2, 3, 0, 0, 1, 2, 0, 1, 3, 0])
        x = torch.randn(len(y), 5, generator=g, dtype=torch.float64)
        out.append((x, y))
    return out


def run(method: str, mode: str) -> dict[str, Tensor]:
    import focalsam.optim as optim

    cls_name, options = METHODS[method]
    extra, micro = MODES[mode]
    net = model()
    kwargs = dict(options, **extra)
    if cls_name == "CCSAM":
        kwargs["classifier"] = net[-1]
    cls = getattr(optim, cls_name)
    opt = cls(
        net.parameters(),
        torch.optim.SGD,
        model=net,
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        **kwargs,
    )

    def closure(x: Tensor, y: Tensor) -> Any:
        return lambda: F.cross_entropy(net(x), y, reduction="none")

    for x, y in batches():
        if micro == 1:
            opt.step(closure(x, y), y)
        else:
            half = len(y) // 2 + 1  # uneven halves
            opt.step_accumulated(
                [(closure(x[:half], y[:half]), y[:half]), (closure(x[half:], y[half:]), y[half:])]
            )
    state = {f"param.{k}": v.detach().clone() for k, v in net.named_parameters()}
    state.update({f"buffer.{k}": v.detach().clone() for k, v in net.named_buffers()})
    return state


def cases() -> list[tuple[str, str]]:
    return [(m, mode) for m in METHODS for mode in MODES if (m, mode) not in SKIP]


def main() -> None:
    record = {f"{m}/{mode}": run(m, mode) for m, mode in cases()}
    torch.save(record, OUT)
    print(f"wrote {len(record)} cases to {OUT}")


if __name__ == "__main__":
    main()
