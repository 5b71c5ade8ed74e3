"""Class-balanced sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from focalsam.data import ClassBalancedSampler, class_balanced_indices, epoch_generator


def test_every_class_equally_often():
    labels = torch.tensor([0] * 50 + [1] * 7 + [2] * 3 + [3] * 1)
    idx = class_balanced_indices(labels, 400, torch.Generator().manual_seed(0))
    assert idx.shape == (400,) and idx.dtype == torch.int64
    assert torch.bincount(labels[idx]).tolist() == [100, 100, 100, 100]
    # remainder spread over classes: counts differ by at most one
    idx = class_balanced_indices(labels, 402, torch.Generator().manual_seed(0))
    counts = torch.bincount(labels[idx], minlength=4)
    assert counts.sum() == 402 and counts.max() - counts.min() <= 1


def test_within_class_without_replacement_per_pass():
    labels = torch.tensor([0] * 10 + [1] * 4)
    idx = class_balanced_indices(labels, 24, torch.Generator().manual_seed(1))
    head = idx[labels[idx] == 0]
    tail = idx[labels[idx] == 1]
    # 12 draws from a class of 10: all 10 seen, two seen twice
    assert len(set(head.tolist())) == 10
    # 12 draws from a class of 4: three full passes, each sample exactly 3 times
    assert sorted(torch.bincount(tail)[10:].tolist()) == [3, 3, 3, 3]


def test_classes_with_gaps_and_numpy_input():
    labels = np.array([5, 5, 2, 2, 2, 9])
    idx = class_balanced_indices(labels, 9, torch.Generator().manual_seed(0))
    assert sorted(np.bincount(labels[idx.numpy()], minlength=10)[[2, 5, 9]]) == [3, 3, 3]


def test_deterministic():
    labels = torch.randint(0, 5, (100,), generator=torch.Generator().manual_seed(0))
    a = class_balanced_indices(labels, 50, epoch_generator(3, 1))
    b = class_balanced_indices(labels, 50, epoch_generator(3, 1))
    c = class_balanced_indices(labels, 50, epoch_generator(3, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampler_with_dataloader():
    labels = torch.tensor([0] * 30 + [1] * 3)
    sampler = ClassBalancedSampler(labels, num_samples=20, seed=0)
    assert len(sampler) == 20
    ds = TensorDataset(torch.arange(33), labels)
    ys = torch.cat([y for _, y in DataLoader(ds, batch_size=5, sampler=sampler)])
    assert torch.bincount(ys).tolist() == [10, 10]
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_errors():
    with pytest.raises(ValueError, match="non-empty"):
        class_balanced_indices(torch.tensor([], dtype=torch.int64), 3)
    with pytest.raises(ValueError, match=">= 0"):
        class_balanced_indices(torch.tensor([0, -1]), 3)
    with pytest.raises(ValueError, match="num_samples"):
        class_balanced_indices(torch.tensor([0, 1]), -1)
