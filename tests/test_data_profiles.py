"""Long-tailed profiles and the index selection of Cao et al."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import focalsam.data.profiles as profiles
from focalsam.data import class_counts, long_tailed_counts, select_long_tailed

CIFAR10_R100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_cifar10_ratio_100_counts():
    counts = long_tailed_counts(5000, 10, 100)
    assert counts == CIFAR10_R100
    assert sum(counts) == 12406


def test_cifar100_ratio_100_counts():
    counts = long_tailed_counts(500, 100, 100)
    assert counts[0] == 500 and counts[-1] == 5
    assert sum(counts) == 10847
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))


@pytest.mark.parametrize(
    ("n_max", "classes", "ratio", "total"),
    [
        (5000, 10, 10, 20431),
        (5000, 10, 50, 13996),
        (5000, 10, 100, 12406),
        (5000, 10, 200, 11203),
        (500, 100, 10, 19573),
        (500, 100, 50, 12608),
        (500, 100, 100, 10847),
        (500, 100, 200, 9502),
    ],
)
def test_totals_for_usual_ratios(n_max, classes, ratio, total):
    counts = long_tailed_counts(n_max, classes, ratio)
    assert sum(counts) == total
    assert counts[0] == n_max
    assert counts[-1] == int(n_max / ratio)
    # the formula, written out independently
    expected = [int(n_max * (1.0 / ratio) ** (i / (classes - 1))) for i in range(classes)]
    assert counts == expected


def test_step_profile():
    assert long_tailed_counts(5000, 10, 100, "step") == [5000] * 5 + [50] * 5
    assert long_tailed_counts(500, 100, 10, "step") == [500] * 50 + [50] * 50
    # odd number of classes: every class gets a count
    assert long_tailed_counts(100, 5, 10, "step") == [100, 100, 10, 10, 10]


def test_ratio_one_is_balanced_and_one_class():
    assert long_tailed_counts(7, 4, 1) == [7, 7, 7, 7]
    assert long_tailed_counts(7, 1, 50) == [7]


@pytest.mark.parametrize("bad", [0.5, 0, -3, float("nan"), float("inf"), "x", None])
def test_bad_imbalance_ratio(bad):
    with pytest.raises(ValueError, match="imbalance_ratio"):
        long_tailed_counts(100, 10, bad)


def test_bad_profile_and_sizes():
    with pytest.raises(ValueError, match="profile"):
        long_tailed_counts(100, 10, 10, "linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_max"):
        long_tailed_counts(0, 10, 10)
    with pytest.raises(ValueError, match="num_classes"):
        long_tailed_counts(10, 0, 10)


def _reference_selection(labels: np.ndarray, counts: list[int]) -> np.ndarray:
    """The reference procedure written with numpy's *global* state, as in the LDAM-DRW code."""
    saved = np.random.get_state()
    try:
        np.random.seed(0)
        out = []
        for c, n in zip(np.unique(labels), counts, strict=True):
            idx = np.where(labels == c)[0]
            np.random.shuffle(idx)
            out.append(idx[:n])
        return np.concatenate(out)
    finally:
        np.random.set_state(saved)


def test_selection_matches_reference_procedure():
    rng = np.random.default_rng(123)
    labels = rng.permutation(np.repeat(np.arange(10), 300))
    counts = long_tailed_counts(300, 10, 100)
    picked = select_long_tailed(labels, counts, seed=0)
    np.testing.assert_array_equal(picked, _reference_selection(labels, counts))
    np.testing.assert_array_equal(np.bincount(labels[picked], minlength=10), counts)
    # concatenated class by class, no duplicates
    assert np.all(np.diff(labels[picked]) >= 0)
    assert len(np.unique(picked)) == len(picked)


def test_selection_is_deterministic_and_seeded():
    labels = np.repeat(np.arange(5), 40)
    counts = long_tailed_counts(40, 5, 10)
    a = select_long_tailed(labels, counts, seed=0)
    b = select_long_tailed(labels, counts, seed=0)
    c = select_long_tailed(labels, counts, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # and it leaves numpy's global state alone
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    select_long_tailed(labels, counts, seed=0)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_selection_errors():
    labels = np.repeat(np.arange(3), 10)
    with pytest.raises(ValueError, match="class 1 has 10 samples but the profile asks for 11"):
        select_long_tailed(labels, [10, 11, 1])
    with pytest.raises(ValueError, match="out of range"):
        select_long_tailed(labels, [10, 10])
    with pytest.raises(ValueError, match="negative"):
        select_long_tailed(labels, [10, -1, 1])


def test_class_counts():
    np.testing.assert_array_equal(class_counts([0, 2, 2], 4), [1, 0, 2, 0])
    with pytest.raises(ValueError, match=r"label 5 is out of range: expected 0 <= label < 4"):
        class_counts([0, 5], 4)
    with pytest.raises(ValueError, match="out of range"):
        class_counts([-1, 0])
    with pytest.raises(ValueError, match="integers"):
        class_counts([0.5, 1.0])


def test_doctests():
    assert doctest.testmod(profiles, raise_on_error=False).failed == 0
