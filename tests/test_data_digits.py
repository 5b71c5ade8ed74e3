"""The embedded demo dataset (scikit-learn digits made long-tailed)."""

from __future__ import annotations

import pytest
import torch

from focalsam.data import digits_lt, long_tailed_counts


def test_default_sizes():
    d = digits_lt()
    assert d.class_counts.tolist() == [124, 96, 74, 57, 44, 34, 26, 20, 16, 12]
    assert d.class_counts.tolist() == long_tailed_counts(124, 10, 10)
    assert d.x_train.shape == (503, 1, 8, 8) and d.x_train.dtype == torch.float32
    assert torch.bincount(d.y_train).tolist() == d.class_counts.tolist()
    assert d.x_test.shape == (500, 1, 8, 8)
    assert torch.bincount(d.y_test).tolist() == [50] * 10
    assert float(d.x_train.min()) >= 0.0 and float(d.x_train.max()) <= 1.0


def test_deterministic_disjoint_and_seeded():
    a, b, c = digits_lt(seed=0), digits_lt(seed=0), digits_lt(seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_test, c.x_test)
    train = {tuple(x.flatten().tolist()) for x in a.x_train}
    test = {tuple(x.flatten().tolist()) for x in a.x_test}
    # the few duplicate scans in the set aside, train and test do not share images
    assert len(train & test) <= 5


def test_other_profiles_and_errors():
    d = digits_lt(imbalance_ratio=50, profile="step", test_per_class=20)
    assert d.class_counts.tolist() == [154] * 5 + [3] * 5
    assert d.to("cpu").x_test.shape == (200, 1, 8, 8)
    with pytest.raises(ValueError, match="imbalance_ratio"):
        digits_lt(imbalance_ratio=0)
    with pytest.raises(ValueError, match="test_per_class"):
        digits_lt(test_per_class=200)
