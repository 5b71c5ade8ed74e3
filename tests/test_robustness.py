"""The robustness library: mCE arithmetic, the ImageNet-C layout reader, seeded corruptions,
their cache, the pkg_resources stand-in and the per-group error summary."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from focalsam.errors import DataError, InputError
from focalsam.robustness import corruptions as corr
from focalsam.robustness.corruptions import (
    CORRUPTIONS,
    CorruptionCache,
    available_corruptions,
    corrupt_images,
    corrupted,
    images_digest,
)
from focalsam.robustness.imagenet_c import (
    ImageNetCDataset,
    imagenet_c_corruptions,
    imagenet_c_samples,
    wnid_labels_from_list,
)
from focalsam.robustness.scores import corruption_error, mean_corruption_error, summarize

needs_ic = pytest.mark.skipif(
    __import__("importlib").util.find_spec("imagecorruptions") is None,
    reason="imagecorruptions is not installed",
)


# ---------------------------------------------------------------- scores


def test_mce_against_a_hand_computation():
    gauss = {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.8, 5: 0.9}  # mean 0.7
    bright = {1: 0.2, 2: 0.25, 3: 0.3, 4: 0.35, 5: 0.4}  # mean 0.3
    ce_g = corruption_error(gauss, "gaussian_noise")  # 0.7 / 0.886428
    ce_b = corruption_error(bright, "brightness")  # 0.3 / 0.564592
    assert ce_g == pytest.approx(0.789686, abs=1e-6)
    assert ce_b == pytest.approx(0.531357, abs=1e-6)
    assert mean_corruption_error({"gaussian_noise": ce_g, "brightness": ce_b}) == pytest.approx(
        0.660522, abs=1e-6
    )


@pytest.mark.parametrize(
    "errors, name, message",
    [
        ({1: 0.5, 2: 0.5, 3: 0.5}, "fog", "all five severities"),
        ({s: 0.5 for s in range(1, 6)}, "speckle_noise", "no AlexNet reference"),
        ({**{s: 0.5 for s in range(1, 5)}, 5: 1.5}, "fog", r"in \[0, 1\]"),
    ],
)
def test_ce_refuses_what_it_cannot_normalise(errors, name, message):
    with pytest.raises(InputError, match=message):
        corruption_error(errors, name)
    with pytest.raises(InputError):
        mean_corruption_error({})


def test_summarize_per_group_and_overall_means():
    per_cell = {
        ("fog", 1): {"overall": 0.8, "many": 0.9, "medium": 0.8, "few": 0.6},
        ("fog", 3): {"overall": 0.6, "many": 0.7, "medium": 0.5, "few": 0.2},
        ("gaussian_noise", 2): {"overall": 0.5, "many": 0.8, "medium": 0.4, "few": float("nan")},
    }
    s = summarize(per_cell)
    assert s["cells"] == 3
    assert s["mean_error"] == pytest.approx((0.2 + 0.4 + 0.5) / 3)
    by_group = s["mean_error_by_group"]
    assert by_group["many"] == pytest.approx((0.1 + 0.3 + 0.2) / 3)
    assert by_group["medium"] == pytest.approx((0.2 + 0.5 + 0.6) / 3)
    assert by_group["few"] == pytest.approx((0.4 + 0.8) / 2)  # NaN = no few-shot classes there
    assert list(s["by_corruption"]) == ["gaussian_noise", "fog"]  # standard order
    fog = s["by_corruption"]["fog"]
    assert fog["mean_error"] == pytest.approx(0.3)
    assert fog["error_by_severity"] == pytest.approx({"1": 0.2, "3": 0.4})
    assert s["by_corruption"]["gaussian_noise"]["mean_error_by_group"]["few"] is None
    with pytest.raises(InputError, match="overall"):
        summarize({("fog", 1): {"many": 0.5}})


# ---------------------------------------------------------------- ImageNet-C layout

WNIDS = ("n01440764", "n01443537", "n01484850")


@pytest.fixture
def imagenet_c(tmp_path) -> Path:
    from PIL import Image

    root = tmp_path / "ImageNet-C"
    for c in ("fog", "gaussian_noise"):
        for s in (1, 2):
            for k, wnid in enumerate(WNIDS):
                folder = root / c / str(s) / wnid
                folder.mkdir(parents=True)
                img = Image.new("RGB", (4, 4), (40 * k, 10 * s, 0))
                img.save(folder / "b.JPEG")
                img.save(folder / "a.png")
    (root / "speckle_noise").mkdir()
    return root


def test_layout_reader_restricted_to_the_runs_classes(imagenet_c):
    labels = {WNIDS[2]: 0, WNIDS[0]: 1}
    found = imagenet_c_samples(imagenet_c, "fog", 2, labels)
    assert [(p.relative_to(imagenet_c).as_posix(), y) for p, y in found.samples] == [
        (f"fog/2/{WNIDS[0]}/a.png", 1),
        (f"fog/2/{WNIDS[0]}/b.JPEG", 1),
        (f"fog/2/{WNIDS[2]}/a.png", 0),
        (f"fog/2/{WNIDS[2]}/b.JPEG", 0),
    ]
    assert found.ignored_wnids == (WNIDS[1],) and "1 other class folders ignored" in found.note()
    ds = ImageNetCDataset(found, transform=lambda im: np.asarray(im))
    assert len(ds) == 4 and ds.labels.tolist() == [1, 1, 0, 0]
    x, y = ds[2]
    assert x.shape == (4, 4, 3) and y == 0
    assert imagenet_c_corruptions(imagenet_c) == ["gaussian_noise", "fog", "speckle_noise"]
    (found.samples[0][0]).write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot decode image .*a.png"):
        ds[0]


@pytest.mark.parametrize(
    "corruption, severity, extra, message",
    [
        ("snow", 1, None, r"corruption folder not found: .*snow \(present: gaussian_noise, fog"),
        ("fog", 3, None, r"severity folder not found: .*fog.3 \(present: 1, 2\)"),
        ("fog", 1, "n09999999", r"1 of the run's 3 classes have no folder in .*: n09999999$"),
    ],
)
def test_layout_reader_names_what_is_missing(imagenet_c, corruption, severity, extra, message):
    labels = {WNIDS[0]: 0, WNIDS[1]: 1}
    if extra:
        labels[extra] = 2
    with pytest.raises(DataError, match=message) as info:
        imagenet_c_samples(imagenet_c, corruption, severity, labels)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="ImageNet-C folder not found"):
        imagenet_c_samples(imagenet_c / "nope", "fog", 1, labels)


def test_wnid_labels_from_a_list(tmp_path):
    good = tmp_path / "ImageNet_LT_train.txt"
    good.write_text(
        f"train/{WNIDS[1]}/{WNIDS[1]}_1.JPEG 0\ntrain/{WNIDS[0]}/{WNIDS[0]}_7.JPEG 1\n"
        f"train/{WNIDS[1]}/{WNIDS[1]}_2.JPEG 0\n"
    )
    assert wnid_labels_from_list(good) == {WNIDS[1]: 0, WNIDS[0]: 1}
    bad = tmp_path / "bad.txt"
    bad.write_text(f"train/{WNIDS[0]}/x.JPEG 0\ntrain/{WNIDS[0]}/y.JPEG 1\n")
    with pytest.raises(DataError, match=f"bad.txt:2: wnid {WNIDS[0]} has label 1 here, 0"):
        wnid_labels_from_list(bad)
    bad.write_text("train/x.JPEG 0\n")
    with pytest.raises(DataError, match="bad.txt:1: no wnid folder"):
        wnid_labels_from_list(bad)


# ---------------------------------------------------------------- generated corruptions


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)


def test_severity_zero_is_an_unchanged_copy(images):
    out = corrupt_images(images, "gaussian_noise", 0)
    assert out is not images and np.array_equal(out, images)
    with pytest.raises(InputError, match="0 .clean. .. 5"):
        corrupt_images(images, "gaussian_noise", 6)
    with pytest.raises(InputError, match="unknown corruption 'rain'"):
        corrupt_images(images, "rain", 1)
    with pytest.raises(InputError, match="uint8"):
        corrupt_images(images.astype(np.float32), "contrast", 1)


@needs_ic
def test_seeded_and_leaves_the_global_rng_alone(images):
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    a = corrupt_images(images, "gaussian_noise", 3, seed=7)
    assert np.random.rand() == expected
    assert np.array_equal(a, corrupt_images(images, "gaussian_noise", 3, seed=7))
    b = corrupt_images(images, "gaussian_noise", 3, seed=8)
    assert a.shape == b.shape == images.shape and a.dtype == np.uint8
    assert (a != b).mean() > 0.5 and (a != images).mean() > 0.5
    # impulse_noise draws through skimage's own generator: seeded as well
    c = corrupt_images(images, "impulse_noise", 2, seed=7)
    assert np.array_equal(c, corrupt_images(images, "impulse_noise", 2, seed=7))
    assert not np.array_equal(c, corrupt_images(images, "impulse_noise", 2, seed=8))


@needs_ic
def test_grayscale_and_small_images_keep_their_shape():
    gray = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    out = corrupt_images(gray, "gaussian_noise", 2)
    assert out.shape == gray.shape and out.dtype == np.uint8 and (out != gray).any()


_CHILD = """
import hashlib, sys
import numpy as np
sys.modules["pkg_resources"] = None  # as if setuptools had no pkg_resources
from focalsam.robustness.corruptions import corrupt_images
x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
out = [corrupt_images(x, c, 3, seed=5) for c in ("frost", "impulse_noise", "gaussian_noise")]
assert sys.modules["pkg_resources"].__doc__.startswith("focalsam")
print(hashlib.sha256(b"".join(a.tobytes() for a in out)).hexdigest())
"""


@needs_ic
def test_same_arrays_in_another_process_without_pkg_resources(images):
    here = hashlib.sha256(
        b"".join(
            corrupt_images(images, c, 3, seed=5).tobytes()
            for c in ("frost", "impulse_noise", "gaussian_noise")
        )
    ).hexdigest()
    env = {**os.environ, "PYTHONPATH": str(Path(corr.__file__).parents[2])}
    child = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=120
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == here  # frost reads its images through the stand-in


def test_resource_filename_stand_in():
    path = corr._resource_filename("focalsam.robustness.corruptions", "./scores.py")
    assert Path(path) == Path(corr.__file__).with_name("scores.py")
    assert Path(corr._resource_filename("focalsam", "errors.py")).is_file()


def test_missing_package_is_a_one_line_input_error(monkeypatch, images):
    monkeypatch.setattr(corr, "_FUNCTIONS", None)
    monkeypatch.setitem(sys.modules, "imagecorruptions", None)
    with pytest.raises(InputError, match=r"pip install 'focalsam\[corruptions\]'"):
        corrupt_images(images, "contrast", 1)


@needs_ic
@pytest.mark.parametrize("size", [(32, 32), (8, 8)])
def test_available_corruptions_splits_every_name_with_reasons(size):
    ok, skipped = available_corruptions(CORRUPTIONS, size=size)
    assert sorted(ok + list(skipped)) == sorted(CORRUPTIONS) and not set(ok) & set(skipped)
    assert ok == [c for c in CORRUPTIONS if c in ok]
    assert all(reason.strip() and "\n" not in reason for reason in skipped.values())
    assert {"gaussian_noise", "contrast", "pixelate"} <= set(ok)
    assert available_corruptions(CORRUPTIONS, size=size) == (ok, skipped)  # cached
    for name, reason in skipped.items():
        with pytest.raises(InputError, match="cannot apply"):
            corrupt_images(np.zeros((1, *size, 3), np.uint8), name, 1)
        assert name in reason


# ---------------------------------------------------------------- cache


def test_cache_round_trip_is_atomic(tmp_path, images, monkeypatch):
    cache = CorruptionCache(tmp_path / "cache")
    digest = images_digest(images)
    assert digest != images_digest(images[:2]) and cache.get(digest, "fog", 1, 0) is None
    path = cache.put(digest, "fog", 1, 0, images)
    assert np.array_equal(cache.get(digest, "fog", 1, 0), images)
    assert cache.get(digest, "fog", 1, 1) is None and cache.get(digest, "fog", 2, 0) is None
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    before = path.read_bytes()
    moved = cache.path(digest, "fog", 1, 1)
    moved.write_bytes(before)  # another key's file under this name is not trusted
    assert cache.get(digest, "fog", 1, 1) is None
    moved.unlink()

    failure = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fail(*args):
        raise failure

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError) as raised:
        cache.put(digest, "fog", 1, 0, images[::-1].copy())
    assert raised.value is failure
    assert path.read_bytes() == before and [p.name for p in path.parent.iterdir()] == [path.name]


@needs_ic
def test_corrupted_uses_the_cache_and_regenerates_a_bad_file(tmp_path, images):
    expected = corrupt_images(images, "gaussian_noise", 2, seed=3)
    for _ in range(2):  # a fresh cache each time: generated, then read back
        cache = CorruptionCache(tmp_path / "c")
        assert np.array_equal(corrupted(images, "gaussian_noise", 2, seed=3, cache=cache), expected)
    path = cache.path(images_digest(images), "gaussian_noise", 2, 3)
    for damage in (path.read_bytes()[:100], b"junk"):
        path.write_bytes(damage)
        assert cache.get(images_digest(images), "gaussian_noise", 2, 3) is None
        assert np.array_equal(corrupted(images, "gaussian_noise", 2, seed=3, cache=cache), expected)
        assert np.array_equal(cache.get(images_digest(images), "gaussian_noise", 2, 3), expected)
    assert np.array_equal(corrupted(images, "gaussian_noise", 0, cache=cache), images)
