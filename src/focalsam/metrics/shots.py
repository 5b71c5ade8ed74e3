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

Relative thresholds, for data sets of any size: ``"relative:M,F"`` with fractions
``0 <= F <= M <= 1`` of the largest class's count ``n_max``: many > ``M * n_max``, few <
``F * n_max`` (``"relative:0.2,0.04"`` is the standard preset for ``n_max = 500``).

CIFAR-LT has no single convention, so reports should always name the preset used.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from focalsam.class_counts import CountsLike, validate_class_counts
from focalsam.names import normalize_name

__all__ = [
    "RELATIVE_PREFIX",
    "SHOT_PRESETS",
    "ShotGroups",
    "ShotThresholds",
    "default_shot_preset",
    "check_shot_preset",
    "list_shot_presets",
    "shot_groups",
    "shot_thresholds",
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


#: the prefix of a relative preset: ``"relative:M,F"``
RELATIVE_PREFIX = "relative:"


def _relative(preset: str) -> tuple[float, float]:
    """``"relative:M,F"`` -> ``(M, F)``, or ``ValueError`` naming what was expected."""
    body = preset[len(RELATIVE_PREFIX) :]
    try:
        many, few = (float(x) for x in body.split(","))
    except ValueError:
        raise ValueError(
            f"shot preset {preset!r}: expected relative:M,F with two fractions of the largest "
            "class, e.g. relative:0.2,0.04"
        ) from None
    if not 0 <= few <= many <= 1:
        raise ValueError(
            f"shot preset {preset!r}: the fractions must satisfy 0 <= F <= M <= 1 "
            f"(many > M * n_max, few < F * n_max), got M={many:g}, F={few:g}"
        )
    return many, few


def check_shot_preset(preset: str) -> None:
    """``ValueError`` unless ``preset`` is a preset name or a valid ``"relative:M,F"``."""
    if preset.startswith(RELATIVE_PREFIX):
        _relative(preset)
    elif preset not in SHOT_PRESETS:
        raise ValueError(
            f"unknown shot preset {preset!r}; valid presets: {', '.join(list_shot_presets())}, "
            "or relative:M,F (fractions of the largest class)"
        )


def shot_thresholds(preset: str, class_counts: CountsLike | None = None) -> ShotThresholds:
    """The absolute thresholds of ``preset`` for these training counts (a relative preset
    scales with the largest count, so it needs them).

    >>> shot_thresholds("relative:0.2,0.04", [500, 60, 5]).describe()
    'relative:0.2,0.04: many > 100, medium 20..100, few < 20'
    """
    return _resolve(preset, None, class_counts)


def _resolve(
    preset: str | ShotThresholds | None,
    thresholds: tuple[float, float] | None,
    class_counts: CountsLike | None = None,
) -> ShotThresholds:
    if thresholds is not None:
        if preset not in (None, "standard"):
            raise ValueError("give either a preset or thresholds, not both")
        many_above, few_below = thresholds
        return ShotThresholds(float(many_above), float(few_below), "custom")
    if preset is None:
        preset = "standard"
    if isinstance(preset, ShotThresholds):
        return preset
    check_shot_preset(preset)
    if preset.startswith(RELATIVE_PREFIX):
        if class_counts is None:
            raise ValueError(f"shot preset {preset!r} is relative: it needs the class counts")
        many, few = _relative(preset)
        n_max = float(validate_class_counts(class_counts, min_count=0).max())
        return ShotThresholds(many * n_max, few * n_max, preset)
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
    th = _resolve(preset, thresholds, class_counts)
    n = validate_class_counts(class_counts, min_count=0)
    many = n > th.many_above
    few = n < th.few_below
    return ShotGroups(many, ~(many | few), few, th)
