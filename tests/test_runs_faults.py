"""Disk full and other OS errors end in one line naming the path (free space for a
checkpoint) and keep the previous checkpoint; a full stdout is one line; an interrupt
after the training loop gives 130 and says what was saved."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from focalsam.cli import main
from focalsam.errors import RunError
from focalsam.train import load_checkpoint
from focalsam.train.checkpoint import CheckpointWriteError

QUIET = ["progress=false", "tensorboard=false"]
TRAIN = ["train", "--preset", "demo", "--epochs", "1", "model=mlp", *QUIET]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    import focalsam.train.checkpoint as checkpoint

    real_save, calls = checkpoint.torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 2:  # the checkpoint of epoch 2
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    run = tmp_path / "run"
    rc = main([*TRAIN, "--epochs", "2", f"run_dir={run}"])
    err = _lines(capsys.readouterr().err)
    assert issubclass(CheckpointWriteError, RunError) and rc == 1  # a run-time failure
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert str(run / "last.pt") in err[0] and "No space left on device" in err[0]
    assert "MiB free at" in err[0] and "previous checkpoint was kept" in err[0]
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_no_permission_to_write_a_checkpoint_is_one_line_exit_1(tmp_path, monkeypatch, capsys):
    """EACCES (simulated: the tests run as root, whom file modes do not stop)."""
    import focalsam.train.checkpoint as checkpoint

    def save(*_a, **_k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(checkpoint.torch, "save", save)
    run = tmp_path / "run"
    rc = main([*TRAIN, f"run_dir={run}"])
    err = _lines(capsys.readouterr().err)
    assert rc == 1 and len(err) == 1 and "Traceback" not in err[0], err
    assert str(run / "last.pt") in err[0] and "Permission denied" in err[0], err
    assert not (run / "last.pt").exists()
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_a_name_over_the_os_limit_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main([*TRAIN, f"run_dir={tmp_path / ('x' * 300)}"])
    err = _lines(capsys.readouterr().err)
    assert rc in (1, 2) and len(err) == 1 and "File name too long" in err[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_stdout_is_one_line():
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "focalsam", "presets"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=120,
        )
    err = _lines(proc.stderr)
    assert proc.returncode == 1 and len(err) == 1, proc.stderr
    assert "cannot write to standard output" in err[0]


def test_sigterm_after_the_training_loop_gives_130_saying_what_was_saved(
    tmp_path, monkeypatch, capsys
):
    import focalsam.train.trainer as trainer

    real = trainer.build_report

    def terminated(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the report is being made
        return real(*a, **k)

    monkeypatch.setattr(trainer, "build_report", terminated)
    run = tmp_path / "run"
    assert main([*TRAIN, f"run_dir={run}"]) == 130
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "holds all 1 epochs" in err[0] and "--resume" in err[0], err
    assert not (run / "report.json").exists()
    monkeypatch.setattr(trainer, "build_report", real)
    assert main(["train", "--resume", str(run)]) == 0
    assert (run / "report.json").is_file()


COMPARE = ["compare", "--preset", "demo", "--optimizers", "sgd", "--seeds", "0", "epochs=1"]
#: commands that create their folder in the working directory by default
DEFAULT_FOLDER = {"compare without --out": [*COMPARE, "model=mlp", *QUIET], "bare demo": ["train"]}


def _refuse_in(folder: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Make ``folder`` unwritable as the OS would for a user without write permission:
    ``access``: ``os.access`` says so (the up-front check); ``mkdir``: creating a folder in
    it fails with EACCES (the tests run as root, whom file modes do not stop)."""
    if how == "access":
        real_access = os.access

        def access(path, mode, *a, **k):
            if Path(path).absolute() == folder and mode & os.W_OK:
                return False
            return real_access(path, mode, *a, **k)

        monkeypatch.setattr(os, "access", access)
        return
    real_mkdir = os.mkdir

    def mkdir(path, mode=0o777, *a, **k):
        if Path(path).absolute().parent == folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_mkdir(path, mode, *a, **k)

    monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.mark.parametrize("how", ["access", "mkdir"])
@pytest.mark.parametrize("argv", DEFAULT_FOLDER.values(), ids=DEFAULT_FOLDER.keys())
def test_an_unwritable_working_directory_is_one_line_naming_the_path(
    argv, how, tmp_path, monkeypatch, capsys
):
    """Exit 2 like a run directory that is not writable (docs/reference/exit-codes.md:
    RunDirError), whether the up-front check or the OS at mkdir finds it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    _refuse_in(cwd, monkeypatch, how)
    rc = main(argv)
    err = capsys.readouterr().err
    lines = _lines(err)
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("focalsam: error: ") and "runs" in lines[0], lines[0]
    assert "not writable" in lines[0] or "Permission denied" in lines[0], lines[0]
    assert "--out" not in lines[0], "the user gave no --out"
    assert list(cwd.iterdir()) == []
