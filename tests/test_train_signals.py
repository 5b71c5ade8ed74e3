"""Real signals to a real ``focalsam train`` process: SIGTERM (saved mid-epoch) and
SIGKILL (nothing saved but the last checkpoint) both resume to the uninterrupted
run's exact weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from focalsam.train import load_checkpoint

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

ARGS = [
    "--preset",
    "demo",
    "--model",
    "mlp",
    "--epochs",
    "12",
    "--batch-size",
    "16",
    "--eval-every",
    "4",
    "progress=false",
    "tensorboard=false",
]


def _train(run: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "focalsam", "train", *ARGS, f"run_dir={run}", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _resume(run: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "focalsam", "train", "--resume", str(run)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _after_epochs(run: Path, proc: subprocess.Popen[str], n: int) -> None:
    deadline = time.monotonic() + 120
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        time.sleep(0.01)
    pytest.fail(f"the run ended or stalled before epoch {n}: {proc.communicate()[1][-2000:]}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    run = tmp_path_factory.mktemp("ref") / "run"
    proc = _train(run)
    assert proc.wait(timeout=300) == 0, proc.communicate()[1][-2000:]
    return load_checkpoint(run / "last.pt")["model"]


def _same_weights(run: Path, reference: dict[str, torch.Tensor]) -> None:
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 12
    for key, value in reference.items():
        assert torch.equal(value, ckpt["model"][key]), key
    epochs = [
        int(line.split('"epoch": ')[1].split(",")[0])
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == list(range(1, 13))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_signalled_run_resumes_to_the_uninterrupted_weights(sig, tmp_path, reference):
    run = tmp_path / "run"
    proc = _train(run)
    _after_epochs(run, proc, 2)
    proc.send_signal(sig)
    rc = proc.wait(timeout=120)
    err = proc.communicate()[1]
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
    else:
        assert rc == 130 and "--resume" in err, err[-2000:]
    assert load_checkpoint(run / "last.pt")["epoch"] < 12
    _resume(run)
    _same_weights(run, reference)
