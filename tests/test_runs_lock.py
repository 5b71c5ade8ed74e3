"""A run folder has one owner: a live holder is refused by name, a stale lock is taken
over in one line, a killed ``compare --parallel`` leaves no children behind and its re-run
finishes with the results of an uninterrupted compare."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from focalsam.cli import main
from focalsam.compare import CompareSpec
from focalsam.compare.run import run_compare
from focalsam.compare.spec import RECORD
from focalsam.train import load_checkpoint
from focalsam.train.runlock import RunFolderHeldError, RunLock, holder

QUIET = ["progress=false", "tensorboard=false"]
TRAIN = ["train", "--preset", "demo", "--epochs", "1", "model=mlp", *QUIET]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture
def held(tmp_path) -> Iterator[tuple[Path, int]]:
    """A folder whose lock another live process holds; yields (folder, its pid)."""
    folder = tmp_path / "held"
    folder.mkdir()
    code = (
        "import sys, time\nfrom focalsam.train.runlock import RunLock\n"
        "lock = RunLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, env=_env()
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"held"
        yield folder, proc.pid
    finally:
        proc.kill()
        proc.wait()


def _one_error(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_the_lock_names_its_holder_and_a_second_lock_is_refused(held):
    folder, pid = held
    assert holder(folder) == f"pid {pid} on {os.uname().nodename}"
    with pytest.raises(RunFolderHeldError, match=f"in use by pid {pid}"):
        RunLock(folder).acquire()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "done"
    assert main([*TRAIN, f"run_dir={run}"]) == 0
    return run


READERS = {
    "resume": ["train", "--resume", "{run}", "epochs=2"],
    "analyze": ["analyze", "{run}", "--out", "{tmp}/an", "--no-progress"],
    "eval --corruptions": ["eval", "{run}", "--corruptions", "generate", "--out", "{tmp}/ev"],
}


@pytest.mark.parametrize("argv", list(READERS.values()), ids=list(READERS))
def test_a_folder_a_live_process_holds_is_refused_naming_the_pid(
    argv, finished, tmp_path, held, capsys
):
    folder, pid = held
    for f in finished.iterdir():  # the finished run's files, under the held folder's lock
        if f.name != "lock":
            shutil.copy2(f, folder / f.name)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    capsys.readouterr()
    filled = [a.replace("{run}", str(folder)).replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(filled) == 2
    assert f"pid {pid}" in _one_error(capsys)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert not (tmp_path / "an").exists() and not (tmp_path / "ev").exists()


def test_a_stale_lock_is_taken_over_with_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, f"run_dir={run}"]) == 0
    assert (run / "lock").read_text() == ""  # a clean end empties the lock
    (run / "lock").write_text("999999999 otherhost\n")  # a process that died holding it
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "epochs=2"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "stale lock" in err[0] and "pid 999999999 on otherhost" in err[0]
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_a_compare_rerun_never_deletes_a_folder_another_process_holds(tmp_path, held):
    import yaml

    folder, pid = held
    spec = CompareSpec.create("demo", "sgd", "0", ["epochs=1", "model=mlp", *QUIET])
    out = tmp_path / "cmp"
    out.mkdir()
    (out / RECORD).write_text(yaml.safe_dump(spec.record(), sort_keys=False))
    folder.rename(out / "plain-seed0")  # the run folder a live process still writes
    with pytest.raises(RunFolderHeldError, match=f"pid {pid}"):
        run_compare(spec, out, log=lambda _m: None)
    assert (out / "plain-seed0" / "lock").is_file()


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_a_killed_parallel_compare_leaves_no_children_and_its_rerun_completes(tmp_path):
    settings = ["epochs=2", "eval_every=2", "model=mlp", *QUIET]
    argv = ["compare", "--preset", "demo", "--optimizers", "sgd,sam", "--seeds", "0"]
    killed = tmp_path / "killed"
    parent = subprocess.Popen(
        [sys.executable, "-m", "focalsam", *argv, "--parallel", "2", "--out", str(killed)]
        + settings,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    children: list[int] = []
    while time.monotonic() < deadline and len(children) < 2:
        children = _children_of(parent.pid)
        time.sleep(0.05)
    assert len(children) == 2, "the compare did not start its two runs"
    while time.monotonic() < deadline and not all(
        (killed / r / "lock").exists() for r in ("plain-seed0", "sam-seed0")
    ):
        time.sleep(0.05)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    while time.monotonic() < deadline and any(_alive(c) for c in children):
        time.sleep(0.1)
    assert not any(_alive(c) for c in children), "a run outlived its compare"

    assert main([*argv, "--parallel", "2", "--out", str(killed), *settings]) == 0
    whole = tmp_path / "whole"
    assert main([*argv, "--out", str(whole), *settings]) == 0
    for run in ("plain-seed0", "sam-seed0"):
        a, b = (load_checkpoint(d / run / "last.pt")["model"] for d in (killed, whole))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), run
        ra, rb = (json.loads((d / run / "report.json").read_text()) for d in (killed, whole))
        assert ra["last_epoch"] == rb["last_epoch"], run
