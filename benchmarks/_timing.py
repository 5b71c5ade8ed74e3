"""Wall-clock timing shared by the benchmarks (``python benchmarks/<name>.py`` puts this
folder on ``sys.path``, so they import it as ``_timing``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    steps: dict[str, Callable[[], object]],
    device: torch.device,
    rounds: int,
    steps_per_round: int = 1,
) -> dict[str, float]:
    """Median seconds per call of each step; the steps take turns, round by round, so a
    noisy machine slows them all alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            for _ in range(steps_per_round):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}
