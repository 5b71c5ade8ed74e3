"""Data at 224 px: on-device Resize / RandomResizedCrop of CIFAR-sized images against
torchvision, the box sampler, the unchanged 32-px path, and the recipes build_data picks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from focalsam.data import CLIP_MEAN, CLIP_STD, DataError, DeviceLoader, random_resized_crop_boxes
from focalsam.data.resample import resize_matrix, resized_shape
from focalsam.data.samplers import epoch_generator

TF = pytest.importorskip("torchvision.transforms.v2.functional")
T1 = pytest.importorskip("torchvision.transforms")
Image = pytest.importorskip("PIL.Image")

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
# Both sides evaluate the same linear map of 0..255 values; ours in float32 (a few products of
# <= 32 terms: ~1e-4 of 255 at worst), the reference in float64. After dividing by 255 * std
# (>= 51) that is ~2e-6; measured 1e-6. 1e-5 leaves room and still catches a pixel of shift
# (which moves values by ~1e-2) or one wrong tap weight.
TOL = 1e-5


def _images(n=12, h=32, w=32, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, c), dtype=np.uint8), rng.integers(0, 5, n)


def _normalize(x, mean=MEAN, std=STD):
    m = torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
    return (x / 255 - m) / s


def _epoch(loader):
    xs, ys = zip(*list(loader), strict=True)
    return torch.cat(xs), torch.cat(ys)


def _src(images):
    return torch.as_tensor(images).permute(0, 3, 1, 2).double()


# ---------------------------------------------------------------- resampling vs torchvision
@pytest.mark.parametrize("n_in,n_out", [(32, 224), (32, 256), (8, 13), (256, 224), (50, 7)])
def test_resize_matrix_is_torchvision_resize(n_in, n_out):
    x = torch.rand(1, 1, 3, n_in, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = TF.resize(x, [3, n_out], antialias=True)  # bilinear: upsampling and downsampling
    torch.testing.assert_close(x @ resize_matrix(n_in, n_out).T, ref, atol=1e-12, rtol=0)


def test_eval_resize_equals_torchvision_resize():
    images, labels = _images()
    loader = DeviceLoader(
        images, labels, 5, sampling="sequential", augment=False, size=224, mean=MEAN, std=STD
    )
    x, y = _epoch(loader)
    assert x.shape == (12, 3, 224, 224) and x.dtype == torch.float32
    assert torch.equal(y, torch.as_tensor(labels))
    ref = _normalize(TF.resize(_src(images), [224], antialias=True))
    torch.testing.assert_close(x.double(), ref, atol=TOL, rtol=0)
    # the same through F.interpolate (no antialias: it has no effect when upsampling)
    up = torch.nn.functional.interpolate(_src(images), size=224, mode="bilinear")
    torch.testing.assert_close(x.double(), _normalize(up), atol=TOL, rtol=0)


def test_eval_resize_then_center_crop_equals_torchvision():
    images, labels = _images(n=4, h=20, w=28)  # non-square: the shorter edge goes to 256
    loader = DeviceLoader(
        images,
        labels,
        4,
        augment=False,
        sampling="sequential",
        size=224,
        resize=256,
        mean=MEAN,
        std=STD,
    )
    assert loader.resized_shape == resized_shape(20, 28, 256) == (256, 358)
    x, _ = _epoch(loader)
    ref = TF.center_crop(TF.resize(_src(images), [256], antialias=True), [224])
    torch.testing.assert_close(x.double(), _normalize(ref), atol=TOL, rtol=0)


def _torchvision_crops(images, order, boxes, flips, size=224, resize=224):
    """Per sample: Resize(resize), resized_crop(box, size), flip, normalize (float64)."""
    up = TF.resize(_src(images), [resize], antialias=True)
    out = []
    for k in range(len(order)):
        top, left, h, w = boxes[k].tolist()
        r = TF.resized_crop(up[int(order[k])], top, left, h, w, [size, size], antialias=True)
        out.append(_normalize(r.flip(-1) if flips[k] else r))
    return torch.stack(out)


@pytest.mark.parametrize("channels_last", [False, True])
def test_random_resized_crop_equals_torchvision_resized_crop_of_upsampled_image(channels_last):
    images, labels = _images(n=10)
    loader = DeviceLoader(
        images,
        labels,
        4,
        size=224,
        crop="resized",
        mean=MEAN,
        std=STD,
        seed=3,
        channels_last=channels_last,
    )
    order, boxes, flips = loader.epoch_crops()
    assert flips.any() and not flips.all()  # both branches are exercised
    x, y = _epoch(loader)
    assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(y, torch.as_tensor(labels)[order])
    ref = _torchvision_crops(images, order, boxes, flips)
    torch.testing.assert_close(x.double(), ref, atol=TOL, rtol=0)


def test_boxes_in_source_coordinates_and_downsampling_crops():
    """resize=32: RandomResizedCrop(224) straight on the 32-px image; resize=300: boxes larger
    than the output are downsampled with the antialiased filter, as torchvision."""
    images, labels = _images(n=6)
    for resize in (32, 300):
        loader = DeviceLoader(
            images, labels, 6, size=224, crop="resized", resize=resize, mean=MEAN, std=STD, seed=1
        )
        order, boxes, flips = loader.epoch_crops()
        x, _ = _epoch(loader)
        ref = _torchvision_crops(images, order, boxes, flips, resize=resize)
        torch.testing.assert_close(x.double(), ref, atol=TOL, rtol=0)
    assert (boxes[:, 2] > 224).any()  # some crops were downsampled


# ---------------------------------------------------------------- the box sampler
def _check_bounds(boxes, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    top, left, h, w = boxes.T.double()
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all() and (h >= 1).all()
    # w and h are rounded: the unrounded area and aspect are within half a pixel of them
    area = height * width
    assert ((w + 0.5) * (h + 0.5) >= scale[0] * area).all()
    assert ((w - 0.5) * (h - 0.5) <= scale[1] * area).all()
    assert ((w + 0.5) / (h - 0.5) >= ratio[0]).all()
    assert ((w - 0.5) / (h + 0.5) <= ratio[1]).all()


def test_box_bounds_and_distribution_match_torchvision():
    n = 4000
    ours = random_resized_crop_boxes(n, 224, 224, torch.Generator().manual_seed(0)).double()
    _check_bounds(ours, 224, 224)
    torch.manual_seed(0)
    crop = T1.RandomResizedCrop(224)
    img = torch.zeros(1, 224, 224)
    theirs = torch.tensor([crop.get_params(img, crop.scale, crop.ratio) for _ in range(n)])
    theirs = theirs.double()

    def stats(b):
        return torch.stack(
            [
                b[:, 2] * b[:, 3] / 224**2,
                torch.log(b[:, 3] / b[:, 2]),
                (b[:, 0] + b[:, 2] / 2) / 224,
                (b[:, 1] + b[:, 3] / 2) / 224,
            ]
        )

    a, b = stats(ours), stats(theirs)
    se = torch.sqrt(a.var(dim=1) / n + b.var(dim=1) / n)
    assert ((a.mean(dim=1) - b.mean(dim=1)).abs() < 4 * se).all(), (a.mean(1), b.mean(1), se)
    # 2-sample Kolmogorov-Smirnov on the area fraction (critical value at alpha = 1e-3)
    grid = torch.linspace(0, 1, 201, dtype=torch.float64)
    cdf_a = (a[0][:, None] <= grid).double().mean(0)
    cdf_b = (b[0][:, None] <= grid).double().mean(0)
    assert (cdf_a - cdf_b).abs().max() < 1.95 * math.sqrt(2 / n)


def test_box_fallback_is_torchvisions_central_crop():
    # a 10 x 100 strip: no box of >= 90% of the area with aspect in [3/4, 4/3] fits
    boxes = random_resized_crop_boxes(50, 10, 100, torch.Generator().manual_seed(0), (0.9, 1.0))
    ref = T1.RandomResizedCrop.get_params(torch.zeros(1, 10, 100), [0.9, 1.0], [3 / 4, 4 / 3])
    assert (boxes == torch.tensor(ref)).all()
    tall = random_resized_crop_boxes(5, 100, 10, torch.Generator().manual_seed(0), (0.9, 1.0))
    ref = T1.RandomResizedCrop.get_params(torch.zeros(1, 100, 10), [0.9, 1.0], [3 / 4, 4 / 3])
    assert (tall == torch.tensor(ref)).all()
    mixed = random_resized_crop_boxes(3000, 12, 40, torch.Generator().manual_seed(1))
    _check_bounds(mixed[(mixed[:, 2:] != torch.tensor([12, 16])).any(1)], 12, 40)


def test_box_k_does_not_depend_on_how_many_are_drawn_with_it():
    a = random_resized_crop_boxes(7, 50, 60, torch.Generator().manual_seed(5))
    b = random_resized_crop_boxes(7, 50, 60, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    other = random_resized_crop_boxes(7, 50, 60, torch.Generator().manual_seed(6))
    assert not torch.equal(a, other)


# ---------------------------------------------------------------- determinism, chunking, DDP
def test_epoch_depends_only_on_seed_and_epoch_not_on_chunks_batches_or_ranks():
    images, labels = _images(n=23, h=8, w=8)
    kw = dict(size=24, crop="resized", mean=MEAN, std=STD)
    ref = DeviceLoader(images, labels, 4, seed=9, **kw)
    ref.chunk_elements = 1  # one batch per gather
    big = DeviceLoader(images, labels, 6, seed=9, **kw)  # all batches in one gather
    x_ref, y_ref = _epoch(ref)
    x_big, y_big = _epoch(big)
    assert torch.equal(x_ref, x_big) and torch.equal(y_ref, y_big)
    again = DeviceLoader(images, labels, 4, seed=9, **kw)
    assert torch.equal(_epoch(again)[0], x_ref)
    again.set_epoch(1)
    assert not torch.equal(_epoch(again)[0], x_ref)
    assert not torch.equal(_epoch(DeviceLoader(images, labels, 4, seed=10, **kw))[0], x_ref)
    # the plan is drawn from epoch_generator(seed, epoch): order first, then the boxes
    gen = epoch_generator(9, 0)
    order = torch.randperm(23, generator=gen)
    boxes = random_resized_crop_boxes(23, 24, 24, gen)
    got_order, got_boxes, _ = ref.epoch_crops()
    assert torch.equal(got_order, order) and torch.equal(got_boxes, boxes)
    # two ranks' shards interleave to the single-process epoch
    shards = [DeviceLoader(images, labels, 4, seed=9, rank=r, world_size=2, **kw) for r in (0, 1)]
    xs = [_epoch(s)[0] for s in shards]
    assert torch.equal(xs[0], x_ref[0::2]) and torch.equal(xs[1][:11], x_ref[1::2])


def test_dtype_channels_last_and_one_channel():
    images, labels = _images(n=5, h=8, w=8, c=1)
    kw = dict(size=16, crop="resized", mean=(0.3,), std=(0.4,), seed=2)
    x32, _ = _epoch(DeviceLoader(images, labels, 5, **kw))
    x64, _ = _epoch(DeviceLoader(images, labels, 5, dtype=torch.float64, **kw))
    xcl, _ = _epoch(DeviceLoader(images, labels, 5, channels_last=True, **kw))
    assert x32.shape == (5, 1, 16, 16) and x64.dtype == torch.float64
    assert torch.equal(x64, x32.double()) and torch.equal(xcl, x32)


def test_memory_stays_bounded_at_224_px(monkeypatch):
    """A 224-px batch of 64 is 9.6M values, over the 8M of one gather: one batch per gather."""
    import focalsam.data.loader as loader_module

    sizes = []
    real = loader_module.resample_crops

    def record(images, *args, **kwargs):
        sizes.append(images.shape[0])
        return real(images, *args, **kwargs)

    monkeypatch.setattr(loader_module, "resample_crops", record)
    images, labels = _images(n=130)
    loader = DeviceLoader(images, labels, 64, size=224, crop="resized")
    assert [x.shape[0] for x, _ in loader] == [64, 64, 2]
    assert sizes == [64, 64, 2]


# ---------------------------------------------------------------- the 32-px path is unchanged
def _padding_reference(images, order, oy, ox, flips, padding=4):
    out = []
    for k in range(len(order)):
        img = np.pad(images[order[k]], ((padding, padding), (padding, padding), (0, 0)))
        img = img[oy[k] : oy[k] + images.shape[1], ox[k] : ox[k] + images.shape[2]]
        img = img[:, ::-1] if flips[k] else img
        out.append(_normalize(torch.as_tensor(img.copy()).permute(2, 0, 1).double()))
    return torch.stack(out)


@pytest.mark.parametrize("same_size", [{}, {"size": 32}, {"size": 32, "resize": 32}])
def test_padding_crop_path_is_unchanged(same_size):
    images, labels = _images(n=9)
    loader = DeviceLoader(images, labels, 4, seed=3, mean=MEAN, std=STD, **same_size)
    assert not loader.resampled
    order, oy, ox, flips = loader.epoch_indices()
    x, _ = _epoch(loader)
    # the same float32 ops as before: (pixel * 1 / (255 std)) - mean / std
    ref = _padding_reference(images, order.numpy(), oy.numpy(), ox.numpy(), flips.numpy())
    torch.testing.assert_close(x.double(), ref, atol=2e-6, rtol=0)
    default = DeviceLoader(images, labels, 4, seed=3, mean=MEAN, std=STD)
    assert torch.equal(_epoch(default)[0], x)
    with pytest.raises(DataError, match="epoch_crops"):
        DeviceLoader(images, labels, 4, size=224, crop="resized").epoch_indices()
    with pytest.raises(DataError, match="epoch_indices"):
        loader.epoch_crops()


def test_per_sample_pil_equivalent_and_bad_boxes():
    from focalsam.data.resample import resample_crops
    from focalsam.data.transforms import cifar_resized_train_transform

    images, _ = _images(n=2)
    x = cifar_resized_train_transform()(Image.fromarray(images[0]))
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    with pytest.raises(DataError, match="inside the resized 224x224 image"):
        resample_crops(
            torch.as_tensor(images), torch.tensor([[0, 0, 225, 10]] * 2), 224, (224, 224)
        )


def test_bad_settings_are_named():
    images, labels = _images(n=3)
    with pytest.raises(DataError, match="crop='pad' works at the source size 32x32"):
        DeviceLoader(images, labels, 2, size=224)
    with pytest.raises(DataError, match="crop must be 'pad' or 'resized'"):
        DeviceLoader(images, labels, 2, crop="random")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="center crop 224 does not fit an image of 100x100"):
        DeviceLoader(images, labels, 2, augment=False, size=224, resize=100)
    with pytest.raises(DataError, match="size must be >= 1"):
        DeviceLoader(images, labels, 2, size=0, crop="resized")
    with pytest.raises(DataError, match="0 < scale"):
        DeviceLoader(images, labels, 2, size=64, crop="resized", scale=(0.5, 0.1))


# ---------------------------------------------------------------- build_data: recipes and sizes
def _cfg(*overrides):
    from focalsam.train import make_config

    return make_config(None, None, ["progress=false", "tensorboard=false", *overrides])


@pytest.fixture()
def fake_cifar(tmp_path):
    from fake_cifar import make_fake_cifar10

    make_fake_cifar10(tmp_path, per_batch=20)
    return tmp_path


def test_build_data_cifar_clip_is_224_px_with_clip_normalization(fake_cifar):
    from focalsam.train.data_setup import build_data, data_recipe, eval_batch_size

    cfg = _cfg(
        "dataset=cifar10",
        f"data_root={fake_cifar}",
        "imbalance_ratio=2",
        "batch_size=8",
        "model=clip_vit_b16",
        "model.clip_weights=random",
    )
    assert data_recipe(cfg) == ("clip", 224)  # auto: the model's input size and recipe
    data = build_data(cfg, torch.device("cpu"))
    assert data.image_size == 224 and data.in_channels == 3
    x, y = next(iter(data.train))
    assert x.shape == (8, 3, 224, 224) and x.dtype == torch.float32 and y.shape == (8,)
    # the test set: Resize(224) (= CenterCrop(224) of it) with CLIP's mean and std
    from focalsam.data import cifar_dataset

    test = cifar_dataset(fake_cifar, "cifar10", train=False)
    xt = torch.cat([b for b, _ in data.test])
    assert xt.shape == (10, 3, 224, 224) and data.test.batch_size == eval_batch_size(3, 224)
    ref = _normalize(TF.resize(_src(test.images), [224], antialias=True), CLIP_MEAN, CLIP_STD)
    torch.testing.assert_close(xt.double(), ref, atol=TOL, rtol=0)
    assert eval_batch_size(3, 224) <= 256 and eval_batch_size(3, 32) == 1000
    # analysis splits see the same images
    split = data.split("test")
    xs = torch.cat([b for b, _ in split.batches(np.arange(10), 4)])
    assert torch.equal(xs, xt)
    # the class-balanced loader of CC-SAM's stage 2 too
    assert next(iter(data.make_balanced()))[0].shape == (8, 3, 224, 224)


def test_build_data_standard_cifar_is_unchanged(fake_cifar):
    from focalsam.data import CIFAR_MEAN, CIFAR_STD, cifar_lt
    from focalsam.train.data_setup import build_data, data_recipe

    cfg = _cfg("dataset=cifar10", f"data_root={fake_cifar}", "imbalance_ratio=2", "batch_size=8")
    assert data_recipe(cfg) == ("standard", 32)
    data = build_data(cfg, torch.device("cpu"))
    assert data.image_size == 32 and not data.train.resampled and data.test.batch_size == 1000
    lt = cifar_lt(fake_cifar, "cifar10", 2.0, "exp", 0)
    ref = DeviceLoader(lt.images, lt.labels, 8, seed=cfg.run.seed, mean=CIFAR_MEAN, std=CIFAR_STD)
    assert torch.equal(_epoch(data.train)[0], _epoch(ref)[0])


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["model=resnet32", "dataset=cifar100"], ("standard", 32)),
        (["model=clip_tiny", "dataset=cifar10"], ("clip", 32)),
        (["model=resnet32", "dataset=cifar10", "data.transform=clip"], ("clip", 32)),
        (
            ["model=resnet32", "dataset=cifar10", "data.transform=clip", "data.image_size=64"],
            ("clip", 64),
        ),
        (["model=resnet50", "dataset=imagenet_lt"], ("imagenet_r50", 224)),
        (["model=resnet50", "dataset=inat2018"], ("inat_r50", 224)),
        (["model=mlp", "dataset=imagenet_lt"], ("standard", 224)),
        (
            ["model=resnet50", "dataset=inat2018", "data.transform=clip", "data.image_size=160"],
            ("clip", 160),
        ),
        (["model=small_cnn", "dataset=digits"], ("standard", 8)),
    ],
)
def test_data_recipe_resolves_auto_and_sizes(overrides, expected):
    from focalsam.train.data_setup import data_recipe

    assert data_recipe(_cfg(*overrides)) == expected


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["dataset=cifar10", "data.image_size=224"], "standard on cifar10 is the 32-px padding"),
        (["dataset=cifar10", "data.transform=imagenet_r50"], "takes data.transform=standard or"),
        (["dataset=digits", "data.transform=clip"], "digits .1 channel, 8 px. takes"),
    ],
)
def test_data_recipe_refuses_what_a_dataset_does_not_offer(overrides, message):
    from focalsam.train import ConfigError
    from focalsam.train.data_setup import data_recipe

    with pytest.raises(ConfigError, match=message):
        data_recipe(_cfg(*overrides))


def test_class_names_of_digits_and_cifar(fake_cifar):
    from focalsam.train.data_setup import build_data

    data = build_data(_cfg("dataset=digits", "batch_size=16"), torch.device("cpu"))
    assert data.class_names is not None and data.class_names() == [str(i) for i in range(10)]
    names = pytest.importorskip("focalsam.data.classnames")
    cfg = _cfg("dataset=cifar10", f"data_root={fake_cifar}", "imbalance_ratio=2")
    cifar = build_data(cfg, torch.device("cpu"))
    assert cifar.class_names is not None
    assert cifar.class_names() == names.cifar_class_names("cifar10")


def _list_root(tmp_path, list_name):
    root = tmp_path / "images"
    for split, per_class in (("train", 4), ("test", 2)):
        lines = []
        for c in range(3):
            for k in range(per_class):
                rel = f"{split}/n{c:03d}/{k}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (30, 20), color=(20 * c + k, 90, 200)).save(root / rel)
                lines.append(f"{rel} {c}")
        (root / list_name.format(split=split)).write_text("\n".join(lines) + "\n")
    return root


def _steps(compose):
    return [type(t).__name__ for t in compose.transforms]


@pytest.mark.parametrize(
    "transform,mean,jitter,test_resize",
    [
        ("imagenet_r50", (0.485, 0.456, 0.406), True, 256),
        ("clip", (0.48145466, 0.4578275, 0.40821073), False, 224),
        ("standard", (0.485, 0.456, 0.406), False, 256),
    ],
)
def test_image_lists_use_the_recipe_transforms(tmp_path, transform, mean, jitter, test_resize):
    from focalsam.train.data_setup import build_data

    root = _list_root(tmp_path, "ImageNet_LT_{split}.txt")
    cfg = _cfg(
        "dataset=imagenet_lt",
        f"data_root={root}",
        "model=mlp",
        "num_workers=0",
        "batch_size=4",
        f"data.transform={transform}",
    )
    data = build_data(cfg, torch.device("cpu"))
    train_tf = data.train.loader.dataset.transform
    test_tf = data.test.loader.dataset.dataset.transform
    assert ("ColorJitter" in _steps(train_tf)) == jitter
    assert _steps(train_tf)[:2] == ["RandomResizedCrop", "RandomHorizontalFlip"]
    assert tuple(train_tf.transforms[-1].mean) == mean == tuple(test_tf.transforms[-1].mean)
    assert test_tf.transforms[0].size == test_resize and test_tf.transforms[1].size == (224, 224)
    x, y = next(iter(data.train))
    assert x.shape == (4, 3, 224, 224)
    # the unaugmented training split goes through the recipe's test transform
    plain = data.split("train").batches(np.arange(3), 3)[0][0]
    ref = torch.stack(
        [test_tf(Image.open(root / f"train/n000/{k}.png").convert("RGB")) for k in range(3)]
    )
    torch.testing.assert_close(plain, ref)


def test_inat_clip_test_resize_and_class_names_need_categories(tmp_path):
    from focalsam.data import DataNotFoundError
    from focalsam.train.data_setup import build_data

    root = _list_root(tmp_path, "iNaturalist18_{split}.txt")
    (root / "iNaturalist18_val.txt").write_text((root / "iNaturalist18_test.txt").read_text())
    cfg = _cfg(
        "dataset=inat2018",
        f"data_root={root}",
        "model=mlp",
        "num_workers=0",
        "batch_size=4",
        "data.transform=clip",
    )
    data = build_data(cfg, torch.device("cpu"))  # no categories.json: fine until names are asked
    test_tf = data.test.loader.dataset.dataset.transform
    assert test_tf.transforms[0].size == 256 and tuple(test_tf.transforms[-1].std) == CLIP_STD
    assert data.class_names is not None
    with pytest.raises(DataNotFoundError, match="categories.json.*data.categories"):
        data.class_names()
