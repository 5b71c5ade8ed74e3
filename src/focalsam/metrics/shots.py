"""Many/medium/few-shot class groups by training-set size.

A class with ``n`` training images is *many-shot* if ``n > many_above``, *few-shot* if
``n < few_below`` and *medium-shot* otherwise (``few_below <= n <= many_above``).

Presets:

- ``"standard"`` (ImageNet-LT, iNaturalist, Places-LT; Liu et al. 2019): many > 100,
  medium 20..100, few < 20. Aliases ``"imagenet-lt"`` and ``"inaturalist"``.
- ``"cifar10-lt-r100"`` (CIFAR-10-LT, ratio 100, as in the Focal-SAM code): few < 200,
  medium 200..1000, many > 1000.
- ``"cifar100-lt-r100"`` (CIFAR-100-LT, ratio 100, as in the Focal-SAM code): few < 20,
  medium 20..100, many > 100.

CIFAR-LT has no single convention, so reports should always name the preset used.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from focalsam.class_counts import CountsLike, validate_class_counts
from focalsam.names import normalize_name

__all__ = [
    "SHOT_PRESETS",
    "ShotGroups",
    "ShotThresholds",
    "default_shot_preset",
    "list_shot_presets",
    "shot_groups",
]


@dataclass(frozen=True)
class ShotThresholds:
    """many: ``n > many_above``; few: ``n < few_below``; medium: the rest."""

    many_above: float
    few_below: float
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.few_below > self.many_above:
            raise ValueError(
                f"few_below ({self.few_below}) must be <= many_above ({self.many_above}), "
                "otherwise a class could be both many- and few-shot"
            )

    def describe(self) -> str:
        return (
            f"{self.name}: many > {self.many_above:g}, medium {self.few_below:g}.."
            f"{self.many_above:g}, few < {self.few_below:g}"
        )


SHOT_PRESETS: dict[str, ShotThresholds] = {
    "standard": ShotThresholds(100, 20, "standard"),
    "imagenet-lt": ShotThresholds(100, 20, "imagenet-lt"),
    "inaturalist": ShotThresholds(100, 20, "inaturalist"),
    "cifar10-lt-r100": ShotThresholds(1000, 200, "cifar10-lt-r100"),
    "cifar100-lt-r100": ShotThresholds(100, 20, "cifar100-lt-r100"),
}


def list_shot_presets() -> list[str]:
    """Names of the threshold presets."""
    return sorted(SHOT_PRESETS)


def default_shot_preset(dataset: str, imbalance_ratio: float | None = None) -> str:
    """The preset a report on ``dataset`` uses by default.

    CIFAR-10/100 at ratio 100 get their published per-dataset presets; everything else (other
    ratios included, for which no convention was published) gets ``"standard"``.
    """
    key = normalize_name(dataset).replace("_", "")
    if key.startswith("cifar10") and imbalance_ratio is not None and float(imbalance_ratio) == 100:
        return "cifar100-lt-r100" if key.startswith("cifar100") else "cifar10-lt-r100"
    return "standard"


@dataclass(frozen=True)
class ShotGroups:
    """Boolean class masks ``(C,)`` for the three groups, and the thresholds used."""

    many: Tensor
    medium: Tensor
    few: Tensor
    thresholds: ShotThresholds

    @property
    def preset(self) -> str:
        return self.thresholds.name

    def as_dict(self) -> dict[str, Tensor]:
        return {"many": self.many, "medium": self.medium, "few": self.few}


def _resolve(preset: str | ShotThresholds | None, thresholds: tuple[float, float] | None):
    if thresholds is not None:
        if preset not in (None, "standard"):
            raise ValueError("give either a preset or thresholds, not both")
        many_above, few_below = thresholds
        return ShotThresholds(float(many_above), float(few_below), "custom")
    if preset is None:
        preset = "standard"
    if isinstance(preset, ShotThresholds):
        return preset
    if preset not in SHOT_PRESETS:
        raise ValueError(
            f"unknown shot preset {preset!r}; valid presets: {', '.join(list_shot_presets())}"
        )
    return SHOT_PRESETS[preset]


def shot_groups(
    class_counts: CountsLike,
    preset: str | ShotThresholds | None = "standard",
    thresholds: tuple[float, float] | None = None,
) -> ShotGroups:
    """Split classes into many/medium/few by training counts.

    ``thresholds=(many_above, few_below)`` overrides the preset.

    >>> g = shot_groups([500, 60, 5])
    >>> g.many.tolist(), g.medium.tolist(), g.few.tolist()
    ([True, False, False], [False, True, False], [False, False, True])
    """
    th = _resolve(preset, thresholds)
    n = validate_class_counts(class_counts, min_count=0)
    many = n > th.many_above
    few = n < th.few_below
    return ShotGroups(many, ~(many | few), few, th)
