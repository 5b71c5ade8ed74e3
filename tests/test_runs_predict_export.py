"""Bad inputs of predict and export: each is exit 2, exactly one line on stderr with its
message, no traceback, and nothing written (the run, the data and the working folder keep
every file as it was)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import file_snapshot

from focalsam.cli import main

QUIET = ["progress=false", "tensorboard=false"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with example data (``ex``) and a finished one-epoch run on it (``run``)."""
    root = tmp_path_factory.mktemp("pe")
    assert main(["make-example", str(root / "ex")]) == 0
    run = root / "run"
    args = ["train", "data.name=folder", f"data.root={root / 'ex'}", f"run.dir={run}"]
    assert main([*args, "train.epochs=1", "model=small_cnn", *QUIET]) == 0
    return root


# (id, argv, expected fragment); {w}: the folder holding ex/, run/, empty/ and exists.csv
CASES = [
    ("predict no images", ["predict", "{w}/run", "{w}/empty", "--out", "{w}/p.csv"], "no files"),
    (
        "predict --out suffix",
        ["predict", "{w}/run", "{w}/ex/test", "--out", "{w}/p.txt"],
        "must end in .csv or .jsonl",
    ),
    (
        "predict --out exists",
        ["predict", "{w}/run", "{w}/ex/test", "--out", "{w}/exists.csv"],
        "--force to replace it",
    ),
    (
        "predict --out folder missing",
        ["predict", "{w}/run", "{w}/ex/test", "--out", "{w}/nodir/p.csv"],
        "does not exist",
    ),
    (
        "predict --out inside the run",
        ["predict", "{w}/run", "{w}/ex/test", "--out", "{w}/run/p.csv"],
        "inside the run folder",
    ),
    (
        "predict no run",
        ["predict", "{w}/nope", "{w}/ex/test", "--out", "{w}/p.csv"],
        "nope does not exist: expected a focalsam run directory",
    ),
    (
        "predict --top-k 0",
        ["predict", "{w}/run", "{w}/ex/test", "--out", "{w}/p.csv", "--top-k", "0"],
        "must be >= 1",
    ),
    (
        "predict --batch-size 0",
        ["predict", "{w}/run", "{w}/ex/test", "--out", "{w}/p.csv", "--batch-size", "0"],
        "must be >= 1",
    ),
    (
        "export --format",
        ["export", "{w}/run", "--format", "pickle", "--out", "{w}/m.pt"],
        "invalid choice: 'pickle'",
    ),
    (
        "export --out exists",
        ["export", "{w}/run", "--format", "torchscript", "--out", "{w}/exists.csv"],
        "--force to replace it",
    ),
    (
        "export --out inside the run",
        ["export", "{w}/run", "--format", "torchscript", "--out", "{w}/run/m.pt"],
        "inside the run folder",
    ),
    (
        "export --out folder missing",
        ["export", "{w}/run", "--format", "torchscript", "--out", "{w}/nodir/m.pt"],
        "does not exist",
    ),
    (
        "export no run",
        ["export", "{w}/nope", "--format", "torchscript", "--out", "{w}/m.pt"],
        "nope does not exist: expected a focalsam run directory",
    ),
]


@pytest.mark.parametrize("argv,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_predict_and_export_input_is_one_line_exit_2_nothing_written(
    argv: list[str], fragment: str, world: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    (world / "empty").mkdir(exist_ok=True)
    (world / "exists.csv").write_text("kept\n")
    monkeypatch.chdir(world)
    before = file_snapshot(world)
    capsys.readouterr()
    assert main([a.replace("{w}", str(world)) for a in argv]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("focalsam: error: "), err
    assert fragment in err[0] and "Traceback" not in err[0], err
    assert file_snapshot(world) == before, "something was written"
