"""Per-class and many/medium/few accuracy, confusion matrix, DDP accumulation."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from conftest import run_gloo

import focalsam.metrics.accuracy as accuracy_mod
import focalsam.metrics.shots as shots_mod
from focalsam.data import long_tailed_counts
from focalsam.metrics import (
    SHOT_PRESETS,
    LongTailAccuracy,
    ShotThresholds,
    class_correct_total,
    confusion_matrix,
    default_shot_preset,
    list_shot_presets,
    per_class_accuracy,
    shot_accuracy,
    shot_groups,
)


# ------------------------------------------------------------------ shot groups
def test_standard_thresholds_at_the_edges():
    g = shot_groups([101, 100, 20, 19, 0, 5000])
    assert g.many.tolist() == [True, False, False, False, False, True]
    assert g.medium.tolist() == [False, True, True, False, False, False]
    assert g.few.tolist() == [False, False, False, True, True, False]
    assert g.preset == "standard"


def test_cifar_presets():
    c10 = long_tailed_counts(5000, 10, 100)  # 5000 2997 1796 1077 645 387 232 139 83 50
    g = shot_groups(c10, "cifar10-lt-r100")
    assert g.many.nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert g.medium.nonzero().flatten().tolist() == [4, 5, 6]
    assert g.few.nonzero().flatten().tolist() == [7, 8, 9]
    # the edges: few < 200, medium <= 1000
    e = shot_groups([199, 200, 1000, 1001], "cifar10-lt-r100")
    assert e.few.tolist() == [True, False, False, False]
    assert e.medium.tolist() == [False, True, True, False]
    g = shot_groups(long_tailed_counts(500, 100, 100), "cifar100-lt-r100")
    assert (int(g.many.sum()), int(g.medium.sum()), int(g.few.sum())) == (35, 35, 30)
    e = shot_groups([19, 20, 100, 101], "cifar100-lt-r100")
    assert e.few.tolist() == [True, False, False, False]
    assert e.many.tolist() == [False, False, False, True]


def test_custom_thresholds_and_errors():
    g = shot_groups([50, 10, 3], thresholds=(20, 5))
    assert g.preset == "custom"
    assert (g.many.tolist(), g.medium.tolist(), g.few.tolist()) == (
        [True, False, False],
        [False, True, False],
        [False, False, True],
    )
    g = shot_groups([50, 10, 3], ShotThresholds(40, 40, "mine"))
    assert g.preset == "mine" and g.medium.sum() == 0
    with pytest.raises(ValueError, match="both many- and few-shot"):
        ShotThresholds(10, 20)
    with pytest.raises(ValueError, match="unknown shot preset 'cifar'; valid presets: cifar10"):
        shot_groups([1], "cifar")
    with pytest.raises(ValueError, match="non-negative, got -1 for class 0"):
        shot_groups([-1, 3])
    with pytest.raises(ValueError, match=r"whole numbers .*got 2.5 for class 1"):
        shot_groups([10, 2.5])
    assert shot_groups([0, 3]).few.tolist() == [True, True]  # an empty class is allowed here
    with pytest.raises(ValueError, match="either a preset or thresholds"):
        shot_groups([1], "cifar10-lt-r100", thresholds=(1, 1))
    assert set(list_shot_presets()) == set(SHOT_PRESETS)
    assert "many > 100" in SHOT_PRESETS["standard"].describe()


def test_default_preset():
    assert default_shot_preset("cifar10", 100) == "cifar10-lt-r100"
    assert default_shot_preset("CIFAR-100-LT", 100) == "cifar100-lt-r100"
    assert default_shot_preset("cifar10", 50) == "standard"
    assert default_shot_preset("imagenet-lt") == "standard"


# ------------------------------------------------------------------ pure functions
def test_confusion_matrix_against_sklearn():
    from sklearn.metrics import confusion_matrix as sk_confusion

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 200)
    p = rng.integers(0, 5, 200)
    ours = confusion_matrix(torch.from_numpy(p), torch.from_numpy(y), 5)
    np.testing.assert_array_equal(ours.numpy(), sk_confusion(y, p, labels=range(5)))
    logits = torch.from_numpy(np.eye(5)[p] + 0.1 * rng.random((200, 5)))
    assert torch.equal(confusion_matrix(logits, torch.from_numpy(y), 5), ours)


def test_per_class_and_shot_accuracy_by_hand():
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3, 3])
    preds = torch.tensor([0, 0, 0, 1, 1, 0, 2, 0, 3, 0])
    correct, total = class_correct_total(preds, targets, 5)
    assert correct.tolist() == [3, 1, 1, 1, 0] and total.tolist() == [4, 2, 1, 3, 0]
    acc = per_class_accuracy(correct, total)
    assert acc[:4].tolist() == pytest.approx([0.75, 0.5, 1.0, 1 / 3])
    assert math.isnan(acc[4])
    groups = shot_groups([500, 300, 50, 5, 2])  # many: 0, 1; medium: 2; few: 3, 4
    got = shot_accuracy(acc, groups)
    assert got["many"] == pytest.approx((0.75 + 0.5) / 2)  # mean of per-class accuracies
    assert got["medium"] == pytest.approx(1.0)
    assert got["few"] == pytest.approx(1 / 3)  # class 4 has no test samples: ignored


def test_empty_group_is_nan():
    m = LongTailAccuracy(2, class_counts=[500, 400])
    m.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    r = m.compute()
    assert r["many"] == 0.5 and math.isnan(r["medium"]) and math.isnan(r["few"])  # type: ignore[arg-type]
    assert r["group_sizes"] == {"many": 2, "medium": 0, "few": 0}


# ------------------------------------------------------------------ accumulator
def test_accumulator_matches_one_shot_computation():
    rng = np.random.default_rng(1)
    counts = long_tailed_counts(5000, 10, 100)
    y = torch.from_numpy(rng.integers(0, 10, 1000))
    logits = torch.from_numpy(rng.normal(size=(1000, 10)))
    m = LongTailAccuracy(10, class_counts=counts, preset="cifar10-lt-r100", confusion=True)
    for lo in range(0, 1000, 128):
        m.update(logits[lo : lo + 128], y[lo : lo + 128])
    r = m.compute()
    preds = logits.argmax(1)
    assert r["overall"] == pytest.approx((preds == y).double().mean().item())
    assert r["num_samples"] == 1000
    per_class = [((preds == y) & (y == c)).sum().item() / (y == c).sum().item() for c in range(10)]
    assert r["per_class"] == pytest.approx(per_class)
    assert r["many"] == pytest.approx(np.mean(per_class[:4]))
    assert r["medium"] == pytest.approx(np.mean(per_class[4:7]))
    assert r["few"] == pytest.approx(np.mean(per_class[7:]))
    assert r["preset"] == "cifar10-lt-r100"
    assert torch.equal(m.confusion_matrix(), confusion_matrix(preds, y, 10))
    assert m.compute() == r  # compute does not change the state
    m.reset()
    assert m.compute()["num_samples"] == 0 and math.isnan(m.compute()["overall"])  # type: ignore[arg-type]
    assert "LongTailAccuracy(num_classes=10" in repr(m)


def test_accumulator_without_counts():
    m = LongTailAccuracy(3)
    m.update(torch.tensor([0, 2]), torch.tensor([0, 1]))
    r = m.compute()
    assert r["overall"] == 0.5 and "many" not in r
    with pytest.raises(RuntimeError, match="confusion=True"):
        m.confusion_matrix()
    with pytest.raises(RuntimeError, match="process group"):
        m.compute(sync=True)


def test_accumulator_bad_input():
    m = LongTailAccuracy(3, class_counts=[10, 5, 1])
    with pytest.raises(ValueError, match=r"model outputs 4 classes .* metric is for 3 classes"):
        m.update(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"target 3 is out of range: expected 0 <= target < 3"):
        m.update(torch.tensor([0, 1]), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="prediction -1 is out of range"):
        m.update(torch.tensor([0, -1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="batch size 3 but targets have 2"):
        m.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        m.update(torch.tensor([0, 1]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="logits"):
        m.update(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class_counts has 2 entries but there are 3 classes"):
        LongTailAccuracy(3, class_counts=[10, 5])
    with pytest.raises(ValueError, match="num_classes"):
        LongTailAccuracy(0)


# ------------------------------------------------------------------ DDP
def _ddp_worker(rank: int, world: int, out: str) -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (60,), generator=g)
    logits = torch.randn(60, 4, generator=g)
    # uneven shards: rank 0 gets 40 samples, rank 1 gets 20
    sl = slice(0, 40) if rank == 0 else slice(40, 60)
    m = LongTailAccuracy(4, class_counts=[200, 50, 30, 5], confusion=True)
    m.update(logits[sl], y[sl])
    torch.save(
        {
            "global": m.compute(),
            "again": m.compute(),
            "local": m.compute(sync=False),
            "confusion": m.confusion_matrix(),
        },
        f"{out}.{rank}",
    )


def test_ddp_counts_are_summed_across_ranks(tmp_path):
    out = str(tmp_path / "res")
    run_gloo(_ddp_worker, 2, tmp_path / "store", out)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (60,), generator=g)
    logits = torch.randn(60, 4, generator=g)
    single = LongTailAccuracy(4, class_counts=[200, 50, 30, 5])
    single.update(logits, y)
    expected = single.compute()
    local0 = LongTailAccuracy(4, class_counts=[200, 50, 30, 5])
    local0.update(logits[:40], y[:40])
    for rank in range(2):
        res = torch.load(f"{out}.{rank}", weights_only=False)
        assert res["global"] == expected  # summed counts, not averaged accuracies
        assert res["again"] == expected
        assert torch.equal(res["confusion"], confusion_matrix(logits, y, 4))
    assert torch.load(f"{out}.0", weights_only=False)["local"] == local0.compute()


def test_doctests():
    for mod in (accuracy_mod, shots_mod):
        assert doctest.testmod(mod, raise_on_error=False).failed == 0


def test_relative_shot_thresholds_scale_with_the_largest_class():
    from focalsam.metrics import check_shot_preset, shot_groups, shot_thresholds

    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # CIFAR-10-LT r100
    relative = shot_groups(counts, "relative:0.2,0.04")
    absolute = shot_groups(counts, thresholds=(1000, 200))  # 0.2 and 0.04 of 5000
    for group in ("many", "medium", "few"):
        assert getattr(relative, group).tolist() == getattr(absolute, group).tolist()
    assert relative.few.tolist() == [False] * 7 + [True] * 3
    th = shot_thresholds("relative:0.2,0.04", [500, 60, 5])
    assert (th.many_above, th.few_below, th.name) == (100, 20, "relative:0.2,0.04")
    for bad, fragment in [
        ("relative:0.04,0.2", "0 <= F <= M <= 1"),
        ("relative:0.2", "two fractions"),
        ("relative:a,b", "two fractions"),
        ("nope", "unknown shot preset"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            check_shot_preset(bad)
    with pytest.raises(ValueError, match="needs the class counts"):
        shot_thresholds("relative:0.2,0.04")


def test_the_summary_names_relative_thresholds_in_images_and_an_empty_group():
    from focalsam.train.report import summary_table

    selected = {"overall": 0.5, "many": 0.9, "medium": 0.4, "few": None}
    rows = {"focal_sam": {"selected": selected, "class_counts": [400, 150, 40]}}
    head = summary_table(rows, "relative:0.25,0.05", "last").splitlines()[0]
    assert "preset 'relative:0.25,0.05' (many > 100, medium 20..100, few < 20)" in head
    assert "(no few-shot classes: n/a)" in head
