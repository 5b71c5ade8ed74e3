"""lr schedules from torch's own schedulers, per optimizer step; the rho schedule per epoch."""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
)


def build_lr_scheduler(
    optimizer: Optimizer,
    *,
    schedule: str,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    milestones: list[int] | tuple[int, ...] = (),
    decay: float = 0.1,
) -> LRScheduler:
    """The lr scheduler of a run, stepped once per optimizer step.

    ``cosine``: from the peak lr to 0 at the last step; ``step``: times ``decay`` at
    each epoch in ``milestones``; ``constant``. A linear warm-up of ``warmup_epochs``
    (from ``lr / warm_steps`` to ``lr``) comes first.

    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=1.0)
    >>> sched = build_lr_scheduler(opt, schedule="cosine", epochs=2, steps_per_epoch=2)
    >>> lrs = []
    >>> for _ in range(4):
    ...     lrs.append(round(opt.param_groups[0]["lr"], 4)); opt.step(); sched.step()
    >>> lrs
    [1.0, 0.8536, 0.5, 0.1464]
    """
    total = epochs * steps_per_epoch
    warm = min(int(round(warmup_epochs * steps_per_epoch)), total)
    main: LRScheduler
    if schedule == "cosine":
        main = CosineAnnealingLR(optimizer, T_max=max(1, total - warm), eta_min=0.0)
    elif schedule == "step":
        steps = [max(0, m * steps_per_epoch - warm) for m in milestones]
        main = MultiStepLR(optimizer, milestones=steps, gamma=decay)
    elif schedule == "constant":
        main = ConstantLR(optimizer, factor=1.0, total_iters=0)
    else:
        raise ValueError(f"unknown lr schedule {schedule!r}; valid: cosine, step, constant")
    if warm == 0:
        return main
    warmup = LinearLR(optimizer, start_factor=1.0 / warm, end_factor=1.0, total_iters=warm - 1)
    return SequentialLR(optimizer, [warmup, main], milestones=[warm])


class RhoSchedule:
    """Scales each parameter group's initial rho by ``decay ** (milestones passed)``,
    the way lr schedulers keep ``initial_lr``: a method's own radius (CC-SAM's) is
    scaled, never replaced."""

    def __init__(
        self, optimizer: Optimizer, milestones: list[int] | tuple[int, ...] = (), decay: float = 1.0
    ) -> None:
        self.groups = [g for g in optimizer.param_groups if "rho" in g]
        for group in self.groups:
            group.setdefault("initial_rho", group["rho"])
        self.milestones = list(milestones)
        self.decay = decay

    def factor(self, epoch: int) -> float:
        """The factor for 0-based ``epoch``: ``decay ** #{m : epoch >= m}``."""
        return float(self.decay ** sum(epoch >= m for m in self.milestones))

    def set_epoch(self, epoch: int) -> float | None:
        """Set every group's rho for ``epoch``; the first group's rho (None: no rho)."""
        for group in self.groups:
            group["rho"] = group["initial_rho"] * self.factor(epoch)
        return self.groups[0]["rho"] if self.groups else None

    def state_dict(self) -> dict[str, Any]:
        return {"milestones": self.milestones, "decay": self.decay}
