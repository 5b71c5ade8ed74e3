"""Class-balanced sampling (for two-stage methods such as CC-SAM's second stage, cRT).

Each class is drawn equally often per epoch (``num_samples / C``, the remainder spread over
randomly chosen classes); within a class the samples are visited in a random order without
replacement, reshuffled whenever the class runs out, so a rare class repeats its images and a
frequent class shows a different subset each epoch. Everything is vectorized with torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

from focalsam.errors import DataError

__all__ = ["ClassBalancedSampler", "class_balanced_indices", "epoch_generator"]


def epoch_generator(seed: int, epoch: int = 0) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, epoch)`` through numpy's SeedSequence."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF])
    value = int(state.generate_state(1, dtype=np.uint64)[0]) & 0x7FFF_FFFF_FFFF_FFFF
    return torch.Generator().manual_seed(value)


def class_balanced_indices(
    labels: Tensor | Sequence[int] | np.ndarray,
    num_samples: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``num_samples`` dataset indices (int64, CPU) with every present class equally often.

    Class ``c`` is drawn ``floor(num_samples / C)`` or one more times; its draws walk through
    random permutations of its samples (a new permutation per pass). The result is shuffled.
    """
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
    y = y.to("cpu", torch.int64)
    if y.ndim != 1 or y.numel() == 0:
        raise DataError(f"labels must be a non-empty 1-D sequence, got shape {tuple(y.shape)}")
    if num_samples < 0:
        raise DataError(f"num_samples must be >= 0, got {num_samples}")
    if y.min() < 0:
        raise DataError(f"labels must be >= 0, got {int(y.min())}")
    order = torch.argsort(y, stable=True)  # dataset indices grouped by class
    classes, n = torch.unique_consecutive(y[order], return_counts=True)
    num_classes = classes.numel()
    start = torch.cumsum(n, 0) - n  # offset of each class inside ``order``

    # draws per class: equal shares, remainder to randomly chosen classes
    draws = torch.full((num_classes,), num_samples // num_classes, dtype=torch.int64)
    extra = num_samples % num_classes
    if extra:
        draws[torch.randperm(num_classes, generator=generator)[:extra]] += 1

    # one random permutation of each class per pass: sort random keys inside (class, pass)
    passes = (draws + n - 1) // n
    slots = passes * n  # slots per class
    total = int(slots.sum())
    slot_class = torch.repeat_interleave(torch.arange(num_classes), slots)
    slot_start = torch.cumsum(slots, 0) - slots
    within = torch.arange(total) - slot_start[slot_class]  # slot index inside its class
    member = within % n[slot_class]
    segment = (within // n[slot_class]) + torch.repeat_interleave(
        torch.cumsum(passes, 0) - passes, slots
    )
    keys = segment.to(torch.float64) + torch.rand(total, generator=generator, dtype=torch.float64)
    shuffled_member = member[torch.argsort(keys)]

    # the first ``draws[c]`` slots of each class
    draw_class = torch.repeat_interleave(torch.arange(num_classes), draws)
    draw_start = torch.cumsum(draws, 0) - draws
    k = torch.arange(num_samples) - draw_start[draw_class]
    picked = order[start[draw_class] + shuffled_member[slot_start[draw_class] + k]]
    return picked[torch.randperm(num_samples, generator=generator)]


class ClassBalancedSampler(Sampler[int]):
    """A ``torch.utils.data`` sampler over :func:`class_balanced_indices`.

    ``num_samples`` defaults to ``len(labels)``; the order depends only on ``(seed, epoch)``
    (call :meth:`set_epoch` each epoch).
    """

    def __init__(
        self,
        labels: Tensor | Sequence[int] | np.ndarray,
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        self.labels = torch.as_tensor(
            np.asarray(labels) if not isinstance(labels, Tensor) else labels
        )
        self.num_samples = len(self.labels) if num_samples is None else int(num_samples)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        gen = epoch_generator(self.seed, self.epoch)
        return iter(class_balanced_indices(self.labels, self.num_samples, gen).tolist())
