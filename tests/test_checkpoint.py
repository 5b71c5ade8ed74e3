"""Checkpoint files: every kind of damage is one CheckpointError line; writes fail cleanly."""

from __future__ import annotations

import errno
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import focalsam.train.checkpoint as ckpt_mod
from focalsam.errors import InputError, RunError
from focalsam.train.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    check_finite_state,
    load_checkpoint,
    save_checkpoint,
)


def _payload() -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}


@pytest.fixture()
def saved(tmp_path) -> Path:
    return save_checkpoint(_payload(), tmp_path / "last.pt")


def _error(path: Path, **kw) -> str:
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_error_types():
    assert issubclass(CheckpointError, InputError) and issubclass(CheckpointError, ValueError)
    assert not issubclass(CheckpointError, RuntimeError)
    # a full disk is a failure at run time (exit 1), not bad input (exit 2)
    assert issubclass(CheckpointWriteError, RunError) and not issubclass(
        CheckpointWriteError, InputError
    )
    assert issubclass(CheckpointWriteError, OSError)


def test_round_trip(saved):
    payload = load_checkpoint(saved, require=("model", "optimizer", "epoch"))
    assert payload["epoch"] == 3
    assert torch.equal(payload["model"]["0.weight"], _payload()["model"]["0.weight"])


def test_every_truncation_is_named_truncated(saved, tmp_path):
    data = saved.read_bytes()
    size = len(data)
    cuts = sorted({0, 1, 2, 3, 4, size - 1} | {size * k // 40 for k in range(40)})
    cut_file = tmp_path / "cut.pt"
    for n in cuts:
        cut_file.write_bytes(data[:n])
        msg = _error(cut_file)
        assert "is truncated: a zip archive cut short" in msg and f"({n} bytes" in msg, (n, msg)


def test_damaged_bytes_never_escape_as_raw_errors(saved, tmp_path):
    data = saved.read_bytes()
    bad = tmp_path / "bad.pt"
    for pos in range(0, len(data), max(1, len(data) // 150)):
        for value in (0x00, 0xFF):
            damaged = bytearray(data)
            damaged[pos] = value
            bad.write_bytes(bytes(damaged))
            try:
                load_checkpoint(bad)
            except CheckpointError as e:
                assert "\n" not in str(e)


def test_damaged_tensor_data_is_corrupt(tmp_path):
    path = save_checkpoint({"model": {"w": torch.zeros(10_000)}}, tmp_path / "w.pt")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the 40 kB of tensor data
    path.write_bytes(bytes(data))
    assert re.search(r"is corrupt: bad CRC-32 for \S+/data/0$", _error(path))


@pytest.mark.parametrize(
    ("content", "found"),
    [
        (
            b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n",
            "a text file",
        ),
        (pickle.dumps({"model": {}}), "a plain pickle"),
        (b"\x80\x04garbage" * 10, "a plain pickle"),
        (b"\x00\x01\x02\xff\xfe" * 20, "binary data"),
    ],
)
def test_not_a_checkpoint(tmp_path, content, found):
    path = tmp_path / "thing.pt"
    path.write_bytes(content)
    msg = _error(path)
    assert "is not a checkpoint" in msg and f"found {found}" in msg
    assert "corrupt or not a focalsam checkpoint" in msg  # what the trainer's tests look for


def test_legacy_and_foreign_files(tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": {}}, legacy, _use_new_zipfile_serialization=False)
    assert "not a checkpoint" in _error(legacy)
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("readme.txt", "hello")
    assert "zip archive without torch data" in _error(foreign)


def test_passwd_is_not_a_checkpoint():
    if not Path("/etc/passwd").is_file():
        pytest.skip("no /etc/passwd")
    assert "not a checkpoint" in _error(Path("/etc/passwd"))


def test_unreadable(tmp_path):
    assert "is unreadable: Is a directory" in _error(tmp_path)
    assert "does not exist" in _error(tmp_path / "missing.pt")
    if os.geteuid() == 0:
        return  # root reads anything
    locked = save_checkpoint(_payload(), tmp_path / "locked.pt")
    locked.chmod(0)
    try:
        assert "is unreadable: Permission denied" in _error(locked)
    finally:
        locked.chmod(0o600)


class Foreign:  # not allowed by weights_only loading
    def __init__(self) -> None:
        self.x = 1


def test_not_a_focalsam_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    assert "not a focalsam checkpoint: no 'model' entry (found ['state_dict'])" in _error(path)
    torch.save(torch.ones(3), path)
    assert "not a focalsam checkpoint: expected a dict, found Tensor" in _error(path)
    torch.save({"model": {}}, path)
    assert "no 'optimizer', 'epoch' entry" in _error(path, require=("model", "optimizer", "epoch"))
    torch.save({"model": {}, "extra": Foreign()}, path)
    msg = _error(path)
    assert "not a focalsam checkpoint" in msg and "weights_only" in msg


# ---------------------------------------------------------------- writing
def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_disk_full_keeps_previous_file_and_no_temp(saved, monkeypatch):
    before = saved.read_bytes()
    real_mkstemp = tempfile.mkstemp

    def onto_dev_full(*args, **kwargs):  # the temp file's writes go to /dev/full: ENOSPC
        fd, name = real_mkstemp(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    monkeypatch.setattr(ckpt_mod.tempfile, "mkstemp", onto_dev_full)
    big = {"model": {"w": torch.zeros(1 << 16)}}
    with pytest.raises(CheckpointWriteError) as e:
        save_checkpoint(big, saved)
    msg = str(e.value)
    assert isinstance(e.value, RunError) and e.value.errno == errno.ENOSPC
    assert f"checkpoint {saved} could not be written: No space left on device" in msg
    assert "previous checkpoint was kept" in msg and "\n" not in msg
    assert saved.read_bytes() == before and _leftovers(saved.parent) == ["last.pt"]


def test_fsync_failure(saved, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.os, "fsync", no_space)
    with pytest.raises(CheckpointWriteError, match=f"checkpoint {saved} could not be written") as e:
        save_checkpoint({"model": {"w": torch.zeros(3)}}, saved)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert load_checkpoint(saved)["epoch"] == 3
    assert _leftovers(saved.parent) == ["last.pt"]


def test_unwritable_destination(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointWriteError, match=f"checkpoint {blocker / 'last.pt'} could not"):
        save_checkpoint({"model": {}}, blocker / "last.pt")


def test_interrupt_during_write_leaves_no_temp(saved, monkeypatch):
    def interrupted(obj, f, *a, **k):
        f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {}}, saved)
    assert _leftovers(saved.parent) == ["last.pt"]


# ---------------------------------------------------------------- finite weights
def test_check_finite_state():
    payload = _payload()
    assert check_finite_state(payload["model"]) == []
    assert check_finite_state(payload) == []
    model = payload["model"]
    model["0.weight"][1, 2] = float("nan")
    model["2.bias"][0] = float("-inf")
    assert check_finite_state(model) == ["0.weight", "2.bias"]
    buf = payload["optimizer"]["state"][0]["momentum_buffer"]
    buf[0, 0] = float("inf")
    assert check_finite_state(payload) == [
        "model.0.weight",
        "model.2.bias",
        "optimizer.state.0.momentum_buffer",
    ]
    ints = {"steps": torch.tensor([1, 2]), "empty": torch.empty(0), "list": [torch.ones(1)]}
    assert check_finite_state(ints) == []
    assert check_finite_state({"c": torch.tensor([complex(1, float("nan"))])}) == ["c"]
