"""CIFAR readers: official python layout (synthetic pickles), download, errors, shared copy."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from fake_cifar import dump_pickle, make_cifar_archive, make_fake_cifar10, make_fake_cifar100

from focalsam.data import (
    cifar_class_names,
    cifar_dataset,
    cifar_lt,
    download_cifar,
    find_cifar_dir,
    load_cifar,
    long_tailed_counts,
    select_long_tailed,
)

SHARED = Path(os.environ.get("FOCALSAM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SHARED_CIFAR10 = SHARED / "data" / "cifar10"


def test_load_cifar10_layout_and_pixels(tmp_path):
    data, labels = make_fake_cifar10(tmp_path)
    images, y = load_cifar(tmp_path, "cifar10", train=True)
    assert images.shape == (100, 32, 32, 3) and images.dtype == np.uint8
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, labels)
    # rows are channel planes (1024 R, 1024 G, 1024 B), row-major
    k = 17
    np.testing.assert_array_equal(images[k, :, :, 0].reshape(-1), data[k, :1024])
    np.testing.assert_array_equal(images[k, :, :, 2].reshape(-1), data[k, 2048:])
    assert images[k, 3, 5, 1] == data[k, 1024 + 3 * 32 + 5]
    test_images, test_y = load_cifar(tmp_path / "cifar-10-batches-py", train=False)
    assert test_images.shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(test_y, np.arange(10))
    assert cifar_class_names(tmp_path) == [f"class{i}" for i in range(10)]


def test_load_cifar100(tmp_path):
    make_fake_cifar100(tmp_path)
    ds = cifar_dataset(tmp_path, "cifar100", train=True)
    assert len(ds) == 200 and ds.num_classes == 100
    assert ds.class_names is not None and ds.class_names[3] == "f3"
    assert ds.class_counts.tolist() == [2] * 100
    test = cifar_dataset(tmp_path, "cifar-100", train=False)
    assert len(test) == 100


def test_cifar_lt_on_synthetic(tmp_path):
    make_fake_cifar10(tmp_path, per_batch=20)  # 10 per class
    lt = cifar_lt(tmp_path, "cifar10", imbalance_ratio=10)
    assert lt.class_counts.tolist() == long_tailed_counts(10, 10, 10)
    assert np.all(np.diff(lt.labels) >= 0)
    lt2 = cifar_lt(tmp_path, "cifar10", imbalance_ratio=10)
    np.testing.assert_array_equal(lt.images, lt2.images)
    with pytest.raises(ValueError, match="imbalance_ratio"):
        cifar_lt(tmp_path, imbalance_ratio=0.5)


def test_missing_data_error_names_path_and_remedy(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_cifar(tmp_path / "nowhere", "cifar10")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert "download=True" in msg and "cifar-10-python.tar.gz" in msg
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        find_cifar_dir(tmp_path, "cifar100")
    with pytest.raises(ValueError, match="unknown CIFAR name"):
        load_cifar(tmp_path, "cifar20")


def test_incomplete_folder(tmp_path):
    make_fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar(tmp_path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a pickle", "could not unpickle"),
        ({b"labels": [0]}, "no 'data' entry"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"shape \(n, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "integer labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels should lie"),
        ([1, 2, 3], "expected a dict"),
    ],
)
def test_malformed_files(tmp_path, content, match):
    make_fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        dump_pickle(path, content)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match) as e:
        load_cifar(tmp_path)
    assert str(path) in str(e.value)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_unpickler_refuses_arbitrary_globals(tmp_path):
    make_fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": _Evil(), "labels": []}))
    with pytest.raises(ValueError, match="not allowed"):
        load_cifar(tmp_path)


def test_download_from_file_url(tmp_path):
    archive, md5 = make_cifar_archive(tmp_path)
    dest = tmp_path / "dest"
    folder = download_cifar(dest, "cifar10", url=archive.as_uri(), md5=md5)
    assert folder == dest / "cifar-10-batches-py"
    assert load_cifar(dest)[0].shape == (100, 32, 32, 3)
    # a second call finds the verified archive and does not fetch again
    archive.unlink()
    assert download_cifar(dest, "cifar10", url=archive.as_uri(), md5=md5) == folder


def test_download_checksum_mismatch(tmp_path):
    archive, _ = make_cifar_archive(tmp_path)
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match="checksum mismatch") as e:
        download_cifar(dest, "cifar10", url=archive.as_uri(), md5="0" * 32)
    assert "0" * 32 in str(e.value)
    assert not any(dest.iterdir())  # nothing half-written left behind


def test_download_unreachable(tmp_path):
    with pytest.raises(OSError, match="could not download"):
        download_cifar(tmp_path, url=(tmp_path / "missing.tar.gz").as_uri(), md5="0" * 32)


def test_load_with_download_flag(tmp_path, monkeypatch):
    archive, md5 = make_cifar_archive(tmp_path)
    import focalsam.data.cifar as cifar_mod

    spec = cifar_mod.CIFAR_SPECS["cifar10"]
    monkeypatch.setitem(
        cifar_mod.CIFAR_SPECS,
        "cifar10",
        cifar_mod.CifarSpec(**{**spec.__dict__, "url": archive.as_uri(), "md5": md5}),
    )
    images, _ = load_cifar(tmp_path / "auto", download=True)
    assert images.shape[0] == 100


def test_official_urls_and_md5():
    from focalsam.data import CIFAR_SPECS

    assert CIFAR_SPECS["cifar10"].md5 == "c58f30108f718f92721af3b95e74349a"
    assert CIFAR_SPECS["cifar100"].md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert CIFAR_SPECS["cifar10"].url.endswith("/cifar-10-python.tar.gz")


def test_unsafe_archive_member_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"x"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(Exception):  # noqa: B017 - tarfile's or ours, depending on Python
        download_cifar(tmp_path / "d", url=archive.as_uri(), md5=md5)
    assert not (tmp_path / "escaped.txt").exists()


# ---------------------------------------------------------------- the shared JPEG copy
@pytest.fixture(scope="module")
def shared_cifar10(tmp_path_factory):
    if not (SHARED_CIFAR10 / "cifar10-jpeg.npz").is_file():
        pytest.skip(f"shared CIFAR-10 copy not found at {SHARED_CIFAR10}")
    pytest.importorskip("PIL")
    dest = tmp_path_factory.mktemp("cifar10")
    subprocess.run(
        [sys.executable, str(SHARED_CIFAR10 / "make_cifar10.py"), str(dest)],
        check=True,
        capture_output=True,
    )
    return dest


def test_shared_cifar10_lt(shared_cifar10):
    train = cifar_dataset(shared_cifar10, "cifar10", train=True)
    assert len(train) == 50000 and train.class_counts.tolist() == [5000] * 10
    assert train.class_names is not None and train.class_names[0] == "airplane"
    lt = cifar_lt(shared_cifar10, "cifar10", imbalance_ratio=100)
    assert lt.class_counts.tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert len(lt) == 12406
    # the same images as the reference procedure (global np.random.seed(0) + shuffle)
    saved = np.random.get_state()
    np.random.seed(0)
    ref = []
    for c, n in enumerate(lt.class_counts.tolist()):
        idx = np.where(train.labels == c)[0]
        np.random.shuffle(idx)
        ref.append(idx[:n])
    np.random.set_state(saved)
    np.testing.assert_array_equal(lt.images, train.images[np.concatenate(ref)])
    test = cifar_dataset(shared_cifar10, "cifar10", train=False)
    assert len(test) == 10000 and test.class_counts.tolist() == [1000] * 10
    for ratio, total in ((10, 20431), (50, 13996), (200, 11203)):
        counts = long_tailed_counts(5000, 10, ratio)
        assert len(select_long_tailed(train.labels, counts)) == total
