"""What an analysis measures: classes or shot groups, and the samples taken of each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from focalsam.errors import InputError
from focalsam.metrics import shot_groups


@dataclass(frozen=True)
class Target:
    """A class or a group of classes, measured on the union of their samples."""

    name: str
    classes: tuple[int, ...]
    train_count: float  # training images per class (the mean over a group)


def resolve_targets(spec: str, class_counts: list[int], shot_preset: str) -> list[Target]:
    """``head,tail`` (the class with the most / fewest training images), ``many,medium,few``
    (the shot groups of ``shot_preset``) or class indices ``0,5,9``; head to tail order.

    >>> [t.name for t in resolve_targets("tail,head", [50, 9, 20], "standard")]
    ['head (class 0)', 'tail (class 1)']
    """
    items = [s.strip().lower() for s in spec.split(",") if s.strip()]
    if not items:
        raise InputError("--classes is empty; give head,tail or many,medium,few or 0,5,9")
    counts = np.asarray(class_counts)
    targets: list[Target] = []
    groups = None
    for item in dict.fromkeys(items):
        if item in ("head", "tail"):
            c = int(np.argmax(counts) if item == "head" else np.argmin(counts))
            targets.append(Target(f"{item} (class {c})", (c,), float(counts[c])))
        elif item in ("many", "medium", "few"):
            groups = groups or shot_groups(class_counts, shot_preset)
            members = tuple(int(i) for i in np.flatnonzero(getattr(groups, item).numpy()))
            if not members:
                raise InputError(
                    f"the {item}-shot group of preset {shot_preset!r} has no classes here"
                )
            targets.append(Target(item, members, float(counts[list(members)].mean())))
        elif item.isdigit():
            c = int(item)
            if c >= len(counts):
                raise InputError(f"class {c} does not exist: the run has {len(counts)} classes")
            targets.append(Target(str(c), (c,), float(counts[c])))
        else:
            raise InputError(
                f"unknown class selector {item!r}; use head,tail or many,medium,few or indices"
            )
    return sorted(targets, key=lambda t: -t.train_count)


def sample_indices(
    labels: np.ndarray, target: Target, samples_per_class: int, seed: int, split: str
) -> np.ndarray:
    """Up to ``samples_per_class`` indices of each of the target's classes, drawn with
    ``seed`` (the same for every run compared, so they see the same images)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in target.classes:
        pool = np.flatnonzero(labels == c)
        if pool.size == 0:
            raise InputError(f"class {c} ({target.name}) has no samples in the {split} split")
        chosen.append(np.sort(rng.permutation(pool)[:samples_per_class]))
    return np.concatenate(chosen)
