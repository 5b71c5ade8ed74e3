"""DeviceLoader: batched on-device crop/flip/normalize, determinism, sharding, sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from focalsam.data import CIFAR_MEAN, CIFAR_STD, DeviceLoader


def _data(n=37, h=8, w=8, c=3, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    labels = rng.integers(0, classes, n)
    return images, labels


def _reference_batch(images, order, oy, ox, flips, padding, mean, std):
    """Per-sample numpy version of RandomCrop(padding) + flip + Normalize."""
    out = []
    n, h, w, c = images.shape
    for k in range(len(order)):
        img = np.pad(images[order[k]], ((padding, padding), (padding, padding), (0, 0)))
        img = img[oy[k] : oy[k] + h, ox[k] : ox[k] + w]
        if flips[k]:
            img = img[:, ::-1]
        x = (img.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)
        out.append(x.transpose(2, 0, 1))
    return np.stack(out)


def _epoch(loader):
    xs, ys = zip(*list(loader), strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_augmentation_matches_per_sample_reference():
    images, labels = _data()
    loader = DeviceLoader(images, labels, batch_size=8, seed=3)
    loader.set_epoch(2)
    order, oy, ox, flips = loader.epoch_indices()
    x, y = _epoch(loader)
    ref = _reference_batch(
        images, order.numpy(), oy.numpy(), ox.numpy(), flips.numpy(), 4, CIFAR_MEAN, CIFAR_STD
    )
    np.testing.assert_allclose(x.numpy(), ref, atol=1e-5)
    np.testing.assert_array_equal(y.numpy(), labels[order.numpy()])
    assert x.dtype == torch.float32 and x.is_contiguous()
    # every offset and both flips occur, offsets within [0, 2 * padding]
    big = DeviceLoader(*_data(n=2000), batch_size=500, seed=0)
    _, oy, ox, flips = big.epoch_indices()
    assert set(oy.tolist()) == set(range(9)) and set(ox.tolist()) == set(range(9))
    assert 0.4 < flips.float().mean() < 0.6


def test_padding_is_zero_pixels():
    images = np.full((4, 6, 6, 3), 255, dtype=np.uint8)
    loader = DeviceLoader(images, [0, 1, 2, 3], batch_size=4, mean=(0, 0, 0), std=(1, 1, 1))
    _, oy, ox, _ = loader.epoch_indices()
    x, _ = next(iter(loader))
    for k in range(4):
        # rows outside the source image are zeros, the rest is 1.0
        n_zero_rows = abs(int(oy[k]) - 4)
        n_zero_cols = abs(int(ox[k]) - 4)
        assert torch.isclose(
            x[k, 0].sum(), torch.tensor(float((6 - n_zero_rows) * (6 - n_zero_cols)))
        )


def test_no_augmentation_is_plain_normalization():
    images, labels = _data()
    loader = DeviceLoader(images, labels, batch_size=10, sampling="sequential", augment=False)
    x, y = _epoch(loader)
    ref = (images.astype(np.float64) / 255 - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)
    np.testing.assert_allclose(x.numpy(), ref.transpose(0, 3, 1, 2), atol=1e-5)
    np.testing.assert_array_equal(y.numpy(), labels)


def test_nchw_input_and_one_channel():
    images = np.random.default_rng(0).integers(0, 256, (9, 1, 8, 8), dtype=np.uint8)
    loader = DeviceLoader(
        torch.from_numpy(images),
        torch.arange(9) % 3,
        4,
        layout="NCHW",
        mean=(0.5,),
        std=(0.5,),
        padding=1,
        augment=False,
        sampling="sequential",
    )
    x, _ = _epoch(loader)
    np.testing.assert_allclose(x.numpy(), (images / 255 - 0.5) / 0.5, atol=1e-6)
    aug = DeviceLoader(
        images, np.arange(9) % 3, 4, layout="NCHW", mean=(0.5,), std=(0.5,), padding=1
    )
    order, oy, ox, fl = aug.epoch_indices()
    ref = _reference_batch(
        images.transpose(0, 2, 3, 1),
        order.numpy(),
        oy.numpy(),
        ox.numpy(),
        fl.numpy(),
        1,
        (0.5,),
        (0.5,),
    )
    np.testing.assert_allclose(_epoch(aug)[0].numpy(), ref, atol=1e-6)


def test_many_channels():
    images, labels = _data(n=10, c=6)
    loader = DeviceLoader(images, labels, 4, mean=(0.5,) * 6, std=(0.25,) * 6, seed=1)
    order, oy, ox, fl = loader.epoch_indices()
    ref = _reference_batch(
        images, order.numpy(), oy.numpy(), ox.numpy(), fl.numpy(), 4, (0.5,) * 6, (0.25,) * 6
    )
    np.testing.assert_allclose(_epoch(loader)[0].numpy(), ref, atol=1e-5)


def test_len_and_drop_last():
    images, labels = _data(n=37)
    assert len(DeviceLoader(images, labels, 8)) == 5
    loader = DeviceLoader(images, labels, 8, drop_last=True)
    assert len(loader) == 4
    sizes = [len(y) for _, y in loader]
    assert sizes == [8, 8, 8, 8]
    assert [len(y) for _, y in DeviceLoader(images, labels, 8)] == [8, 8, 8, 8, 5]


def test_deterministic_per_seed_and_epoch():
    images, labels = _data()
    a = DeviceLoader(images, labels, 8, seed=7)
    b = DeviceLoader(images, labels, 16, seed=7)  # batch size does not change the epoch
    xa, ya = _epoch(a)
    xb, yb = _epoch(b)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.set_epoch(1)
    xa1, _ = _epoch(a)
    assert not torch.equal(xa, xa1)
    a.set_epoch(0)
    assert torch.equal(_epoch(a)[0], xa)
    c = DeviceLoader(images, labels, 8, seed=8)
    assert not torch.equal(_epoch(c)[0], xa)
    # a permutation: every sample exactly once
    order = a.epoch_indices()[0]
    assert sorted(order.tolist()) == list(range(len(labels)))


def test_ddp_shards_cover_the_epoch():
    images, labels = _data(n=37)
    single = DeviceLoader(images, labels, 5, seed=4)
    order, oy, ox, fl = single.epoch_indices()
    shards = [DeviceLoader(images, labels, 5, seed=4, rank=r, world_size=3) for r in range(3)]
    assert all(s.num_samples == 13 for s in shards)
    got = torch.stack([s.epoch_indices()[0] for s in shards], 1).reshape(-1)
    # the ranks interleave the single-process order, wrapped to 39 = 3 * 13 entries
    expected = torch.cat([order, order[:2]])
    assert torch.equal(got, expected)
    # and the augmentation of each sample is the one it gets in a single process
    x0, _ = _epoch(shards[1])
    x_single, _ = _epoch(single)
    assert torch.equal(x0[:12], x_single[1::3])  # positions 1, 4, ..., 34
    assert torch.equal(x0[12], x_single[0])  # position 37 wraps to 0


def test_class_balanced_sampling():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    images = np.zeros((100, 4, 4, 3), dtype=np.uint8)
    loader = DeviceLoader(images, labels, 25, sampling="class_balanced", num_samples=300, seed=0)
    assert len(loader) == 12
    _, y = _epoch(loader)
    assert torch.bincount(y).tolist() == [100, 100, 100]
    loader2 = DeviceLoader(images, labels, 25, sampling="class_balanced", seed=0)
    assert loader2.num_samples == 100


def test_dtype_and_channels_last():
    images, labels = _data(n=6)
    loader = DeviceLoader(images, labels, 3, dtype=torch.bfloat16, channels_last=True)
    x, _ = next(iter(loader))
    assert x.dtype == torch.bfloat16
    assert x.is_contiguous(memory_format=torch.channels_last)
    ref = DeviceLoader(images, labels, 3)
    assert torch.allclose(x.float(), next(iter(ref))[0], atol=0.05)


def test_class_counts_and_repr():
    images, labels = _data(n=20)
    loader = DeviceLoader(images, labels, 4)
    assert loader.class_counts.tolist() == np.bincount(labels).tolist()
    assert "DeviceLoader(n=20" in repr(loader)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"images": np.zeros((3, 4, 4, 3), np.float32)}, "uint8"),
        ({"labels": [0, 1]}, r"labels must have shape \(3,\)"),
        ({"labels": [0.0, 1.0, 2.0]}, "integers"),
        ({"labels": [0, -1, 2]}, ">= 0"),
        ({"batch_size": 0}, "batch_size"),
        ({"sampling": "random"}, "sampling"),
        ({"mean": (0.5,)}, "one value per channel"),
        ({"std": (0.1, 0.0, 0.1)}, "positive"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"padding": -1}, "padding"),
        ({"num_samples": 10}, "class_balanced"),
        ({"layout": "HWC"}, "layout"),
        ({"dtype": torch.int64}, "floating"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"images": np.zeros((3, 4, 4, 3), np.uint8), "labels": [0, 1, 2], "batch_size": 2}
    args.update(kwargs)
    images, labels, bs = args.pop("images"), args.pop("labels"), args.pop("batch_size")
    with pytest.raises(ValueError, match=match):
        DeviceLoader(images, labels, bs, **args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    images, labels = _data(n=300, h=32, w=32)
    cpu = _epoch(DeviceLoader(images, labels, 64, seed=1))
    gpu = _epoch(DeviceLoader(images, labels, 64, seed=1, device="cuda"))
    assert gpu[0].device.type == "cuda"
    assert torch.allclose(cpu[0], gpu[0].cpu(), atol=1e-6) and torch.equal(cpu[1], gpu[1].cpu())


def test_chunking_does_not_change_batches():
    images, labels = _data(n=50)
    ref = DeviceLoader(images, labels, 4, seed=2, drop_last=True)
    ref.chunk_elements = 1  # one batch per gather
    chunked = DeviceLoader(images, labels, 4, seed=2, drop_last=True)
    chunked.chunk_elements = 3 * 8 * 8 * 4 * 5  # five batches per gather
    a, b = list(ref), list(chunked)
    assert len(a) == len(b) == 12
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and xb.is_contiguous()


def test_doctests():
    import doctest

    import focalsam.data.loader as loader_mod

    assert doctest.testmod(loader_mod, raise_on_error=False).failed == 0
