"""The command line's exit codes, one real case each: 0 done, 1 a failure at run time
(a diverged loss, a full disk), 2 bad input, 130 interrupted (docs/reference/exit-codes.md)."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

import pytest

import focalsam.train.trainer as trainer_mod
from focalsam.cli import main
from focalsam.errors import (
    CheckpointWriteError,
    ConfigError,
    Interrupted,
    NonFiniteLossError,
    exit_code,
)

QUIET = ["progress=false", "tensorboard=false"]
TINY = ["train", "--preset", "demo", "--epochs", "1", "model=mlp", *QUIET]


def _err(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_0_done(tmp_path, capsys):
    assert main([*TINY, f"run_dir={tmp_path / 'run'}"]) == 0
    assert (tmp_path / "run" / "last.pt").is_file()


def test_1_diverged(tmp_path, capsys):
    """A learning rate that blows the weights up: a NaN, one line, exit 1."""
    assert main([*TINY, "lr=1e30", f"run_dir={tmp_path / 'run'}"]) == 1
    err = _err(capsys)
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("focalsam: training stopped: ")
    assert "NaN/inf" in err[0] or "non-finite loss at epoch 1" in err[0], err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_1_disk_full(tmp_path, capsys, monkeypatch):
    """The checkpoint's bytes go to /dev/full (every write: ENOSPC): a RunError, exit 1."""
    real_mkstemp = tempfile.mkstemp

    def onto_dev_full(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        if not kwargs.get("prefix", "").startswith(".last.pt"):
            return fd, name
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(tempfile, "mkstemp", onto_dev_full)
    assert main([*TINY, f"run_dir={tmp_path / 'run'}"]) == 1
    err = _err(capsys)
    assert len(err) == 1 and err[0].startswith("focalsam: failed: checkpoint "), err
    assert "No space left on device" in err[0]


def test_2_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "lr=0"]) == 2
    err = _err(capsys)
    assert err == ["focalsam: error: optim.lr must be a finite number > 0, got 0.0"], err
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_130_interrupted(tmp_path, capsys, monkeypatch):
    """A real SIGINT during the first epoch: the run saves and exits 130."""
    real = trainer_mod.train_one_epoch

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # handled by the run: stop after this step
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_one_epoch", signalled)
    run = tmp_path / "run"
    assert main([*TINY, f"run_dir={run}"]) == 130
    err = _err(capsys)
    assert len(err) == 1 and "--resume" in err[0], err
    assert (run / "last.pt").is_file()


def test_the_table_of_exit_codes():
    assert exit_code(ConfigError("x")) == 2
    assert exit_code(CheckpointWriteError("x")) == 1
    assert exit_code(NonFiniteLossError("x")) == 1
    assert exit_code(Interrupted("x")) == exit_code(KeyboardInterrupt()) == 130
    assert exit_code(ZeroDivisionError()) == 1  # a bug


def test_every_error_class_lives_in_focalsam_errors_and_in_the_documented_tree():
    """A library user catches errors by kind from one module: every exception class that
    focalsam defines (importing each of its modules) is a class of ``focalsam.errors``, and
    docs/reference/exit-codes.md's tree names each of them."""
    import importlib
    import inspect
    import pkgutil
    import re

    import focalsam
    import focalsam.errors as errors

    for info in pkgutil.walk_packages(focalsam.__path__, "focalsam."):
        if info.name.endswith("__main__"):  # runs the command line when imported
            continue
        try:
            importlib.import_module(info.name)
        except ImportError:  # a module of an optional extra that is not installed
            continue
    defined = {
        cls
        for module in list(sys.modules.values())
        if getattr(module, "__name__", "").startswith("focalsam")
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, errors.FocalsamError)
    }
    strays = sorted(
        f"{c.__module__}.{c.__qualname__}" for c in defined if c.__module__ != "focalsam.errors"
    )
    assert not strays, f"error classes defined outside focalsam.errors: {strays}"
    tree = (Path(__file__).parents[1] / "docs" / "reference" / "exit-codes.md").read_text()
    public = sorted(c.__name__ for c in defined if not c.__name__.startswith("_"))
    missing = [name for name in public if not re.search(rf"^[│├└─ ]*{name}\b", tree, re.M)]
    assert not missing, f"not in the tree of docs/reference/exit-codes.md: {missing}"
