"""Bad data gives one DataError line naming the input: CIFAR files, downloads, settings."""

from __future__ import annotations

import hashlib
import http.client
import io
import pickle
import socket
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from fake_cifar import make_cifar_archive, make_fake_cifar10

import focalsam.data.cifar as cifar_mod
from focalsam.data import (
    DataError,
    DataNotFoundError,
    DeviceLoader,
    DownloadError,
    cifar_class_names,
    cifar_lt,
    digits_lt,
    download_cifar,
    load_cifar,
    long_tailed_counts,
    long_tailed_indices,
)
from focalsam.errors import InputError


def _write_cifar10(root: Path, per_batch: int = 10) -> Path:
    make_fake_cifar10(root, per_batch)
    return root / "cifar-10-batches-py"


def _one_line(err: BaseException) -> str:
    msg = str(err)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


# ---------------------------------------------------------------- CIFAR files
def test_truncated_batch_is_a_data_error_naming_the_file(tmp_path):
    d = _write_cifar10(tmp_path)
    path = d / "data_batch_2"
    full = path.read_bytes()
    for cut in sorted({0, 1, 2, 10, len(full) // 3, len(full) // 2, len(full) - 1}):
        path.write_bytes(full[:cut])
        with pytest.raises(DataError) as e:
            load_cifar(tmp_path)
        msg = _one_line(e.value)
        assert str(path) in msg and "truncated" in msg, (cut, msg)
        assert "cifar-10-python.tar.gz" in msg  # how to get a good copy


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize(
    "payload",
    [
        lambda m: pickle.dumps({"data": _RunsCode(m), "labels": []}, protocol=2),
        lambda m: pickle.dumps(_RunsCode(m), protocol=4),
        # a hand-written pickle calling builtins.exec
        lambda m: b"cbuiltins\nexec\n(V" + f"open({str(m)!r}, 'w')".encode() + b"\ntR.",
        # numpy's own reconstructor with a forbidden subtype
        lambda m: b"cnumpy.core.multiarray\n_reconstruct\n(cos\nsystem\n(I0\ntVb\ntR.",
    ],
)
def test_malicious_pickle_never_runs_code(tmp_path, payload):
    d = _write_cifar10(tmp_path / "data")
    marker = tmp_path / "marker.txt"
    path = d / "data_batch_1"
    path.write_bytes(payload(marker))
    with pytest.raises(DataError, match="not allowed") as e:
        load_cifar(tmp_path / "data")
    assert str(path) in _one_line(e.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [[0], [1, 2]]}, "not an array"),
        ({b"data": {"a": 1}, b"labels": [0]}, "uint8 of shape"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": ["x"]}, "integer labels"),
    ],
)
def test_malformed_batch_contents(tmp_path, obj, match):
    d = _write_cifar10(tmp_path)
    (d / "data_batch_4").write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DataError, match=match) as e:
        load_cifar(tmp_path)
    assert str(d / "data_batch_4") in _one_line(e.value)


def test_malformed_meta_file(tmp_path):
    d = _write_cifar10(tmp_path)
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": 5}, protocol=2))
    with pytest.raises(DataError, match="label_names"):
        cifar_class_names(tmp_path)


def test_missing_data_keeps_file_not_found_and_is_a_data_error(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        load_cifar(tmp_path)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, InputError)
    msg = _one_line(e.value)
    assert "cifar-10-batches-py/{data_batch_1" in msg and "batches.meta}" in msg


# ---------------------------------------------------------------- downloads
@pytest.mark.parametrize(
    "failure",
    [
        urllib.error.URLError(OSError(101, "Network is unreachable")),
        urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution")),
        TimeoutError("timed out"),
        ConnectionResetError(104, "Connection reset by peer"),
        http.client.IncompleteRead(b"partial"),
    ],
)
def test_offline_download_says_how_to_get_the_data(tmp_path, monkeypatch, failure):
    calls = []

    def offline(url, timeout=None):
        calls.append(url)
        raise failure

    monkeypatch.setattr(cifar_mod.urllib.request, "urlopen", offline)
    with pytest.raises(DownloadError) as e:
        load_cifar(tmp_path / "root", "cifar10", download=True)
    assert isinstance(e.value, DataError) and isinstance(e.value, OSError)
    msg = _one_line(e.value)
    url = cifar_mod.CIFAR_SPECS["cifar10"].url
    assert calls == [url]
    assert f"could not download CIFAR-10 from {url}" in msg
    assert "by hand" in msg and str(tmp_path / "root") in msg
    assert "cifar-10-batches-py/{data_batch_1" in msg
    assert not any((tmp_path / "root").iterdir())  # no .part file left


def test_http_error_download(tmp_path, monkeypatch):
    def not_found(url, timeout=None):
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)  # type: ignore[arg-type]

    monkeypatch.setattr(cifar_mod.urllib.request, "urlopen", not_found)
    with pytest.raises(DownloadError) as e:
        download_cifar(tmp_path, "cifar100")
    msg = _one_line(e.value)
    url = cifar_mod.CIFAR_SPECS["cifar100"].url
    assert f"could not download CIFAR-100 from {url}" in msg and "by hand" in msg


def test_checksum_mismatch_is_a_data_error(tmp_path):
    archive, _ = make_cifar_archive(tmp_path)
    with pytest.raises(DataError, match="checksum mismatch") as e:
        download_cifar(tmp_path / "dest", url=archive.as_uri(), md5="0" * 32)
    assert "by hand" in _one_line(e.value)


def test_corrupt_archive_is_a_data_error(tmp_path):
    archive, _ = make_cifar_archive(tmp_path)
    cut = tmp_path / "cut" / archive.name
    cut.parent.mkdir()
    cut.write_bytes(archive.read_bytes()[:200])
    md5 = hashlib.md5(cut.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="cannot extract") as e:
        download_cifar(tmp_path / "dest", url=cut.as_uri(), md5=md5)
    _one_line(e.value)


def test_unsafe_member_is_a_data_error(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(
        DataError, match=r"'\.\./escaped\.txt' would be extracted to .*outside the destination"
    ):
        download_cifar(tmp_path / "d", url=archive.as_uri(), md5=md5)
    assert not (tmp_path / "escaped.txt").exists()


# ---------------------------------------------------------------- settings
def test_bad_settings_are_data_errors(tmp_path):
    _write_cifar10(tmp_path)
    with pytest.raises(DataError, match="imbalance_ratio"):
        cifar_lt(tmp_path, imbalance_ratio=0.5)
    with pytest.raises(DataError, match="profile"):
        cifar_lt(tmp_path, imbalance_ratio=2, profile="linear")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="unknown CIFAR name 'cifar20'"):
        load_cifar(tmp_path, "cifar20")
    with pytest.raises(DataError, match="class 0 has 6 samples"):
        long_tailed_indices([0] * 6, 1, 1, n_max=7)
    with pytest.raises(DataError, match="test_per_class"):
        digits_lt(test_per_class=0)
    with pytest.raises(DataError, match="batch_size"):
        DeviceLoader(np.zeros((2, 4, 4, 3), np.uint8), [0, 1], batch_size=0)


def test_profile_leaving_a_class_empty(tmp_path):
    assert long_tailed_counts(10, 3, 20) == [10, 2, 0]
    with pytest.raises(
        DataError, match=r"leaves 1 class\(es\) with no training images \(classes 2\)"
    ):
        long_tailed_indices(np.repeat(np.arange(3), 10), 3, 20)
