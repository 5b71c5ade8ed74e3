"""One epoch of training and one evaluation: a batch reads top to bottom."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from focalsam.errors import NonFiniteLossError, TrainingDiverged
from focalsam.metrics import LongTailAccuracy

#: ``step(x, y) -> (per-sample losses at theta, logits)``: forward, backward passes, update
StepFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def train_one_epoch(
    step_fn: StepFn,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    start_step: int = 0,
    after_step: Callable[[int], bool] = lambda _step: False,
    progress: Any = None,
    all_sum: Callable[[Tensor], Tensor] = lambda t: t,
    skipped: Callable[[], Any] | None = None,
    initial: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``step_fn`` over the batches of this epoch from ``start_step`` on.

    ``after_step(step)`` is called after each step; returning True stops the epoch
    there (a stop request). Returns mean loss, accuracy, images seen, steps done and
    seconds, summed over processes with ``all_sum``.

    ``skipped()`` reports the steps the optimizer skipped on the device (a NaN/inf or a
    bad label, checked without a host sync): asked once, at the end, where the epoch
    syncs anyway. A NaN/inf raises :class:`~focalsam.errors.TrainingDiverged` with its
    0-based ``step`` set: the optimizer's own error, or one naming the first skip.

    ``initial``: the running sums of this epoch's steps before ``start_step`` (a resumed
    epoch; give it on one process only), as the ``"sums"`` entry returned here holds them:
    the steps after it add on in the same order, so the epoch's row is the one an
    uninterrupted epoch gives. Returns those sums as ``"sums"`` (loss sum, correct, images,
    seconds, over every process).
    """
    totals: Tensor | None = None  # loss sum, correct, images: summed on the device, no sync
    if initial is not None:
        totals = torch.tensor(initial["totals"], dtype=torch.float64)
    done = start_step
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(itertools.islice(iter(loader), start_step, None), start_step):
        try:
            losses, logits = step_fn(x, y)  # forward, the method's backward passes, update
        except NonFiniteLossError as exc:
            exc.step = step
            raise
        batch = torch.stack(
            [
                losses.detach().sum().double(),
                (logits.argmax(1) == y).sum().double(),
                losses.new_tensor(y.shape[0], dtype=torch.float64),
            ]
        )
        if totals is not None and totals.device != batch.device:  # resumed sums: host first
            totals = totals.to(batch.device)
        totals = batch if totals is None else totals + batch
        done = step + 1
        if progress is not None:
            progress.update(1)
        if after_step(step):
            break
    report = skipped() if skipped is not None else None
    elapsed = time.perf_counter() - t0 + (float(initial["seconds"]) if initial else 0.0)
    totals = totals if totals is not None else torch.zeros(3, dtype=torch.float64)
    count = 0 if report is None else report.count
    stats = all_sum(torch.cat([totals, totals.new_tensor([count])]))
    if float(stats[3]) > 0:  # every process stops, wherever the skip happened
        if report is None:
            raise TrainingDiverged(
                "another process skipped a step (non-finite values)", step=done - 1
            )
        raise TrainingDiverged(
            f"{report.reason} ({report.count} step(s) of this epoch skipped on the device)",
            step=start_step + report.first_index,
        )
    images = float(stats[2])
    return {
        "train_loss": float(stats[0]) / max(images, 1.0),
        "train_acc": float(stats[1]) / max(images, 1.0),
        "images": images,
        "steps": float(done),
        "epoch_seconds": elapsed,
        "images_per_second": images / max(elapsed, 1e-9),
        "sums": {"totals": [float(v) for v in stats[:3]], "seconds": elapsed},
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    metric: LongTailAccuracy,
    autocast: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Overall, many/medium/few and per-class accuracy of ``model`` (eval mode) on
    ``loader``; ``metric`` sums over processes under DDP."""
    was_training = model.training
    model.eval()
    try:
        for x, y in loader:
            with autocast() if autocast is not None else contextlib.nullcontext():
                logits = model(x)
            metric.update(logits.float(), y)
    finally:
        model.train(was_training)
    return metric.compute()
