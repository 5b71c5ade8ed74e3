"""Read-only is a rule of the path: eval, analyze, compare, predict and export refuse any output or cache
folder inside any run folder; training never writes through a symlink planted in its
folder; analyze writes analysis.json only at its end; files follow the user's umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from conftest import file_snapshot

from focalsam.cli import main

QUIET = ["progress=false", "tensorboard=false"]
TRAIN = ["train", "--preset", "demo", "--epochs", "1", "model=mlp", *QUIET]
COMPARE = ["compare", "--preset", "demo", "--optimizers", "sgd", "--seeds", "0", "epochs=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runs") / "done"
    assert main([*TRAIN, f"run_dir={folder}"]) == 0
    return folder


# (id, argv, expected fragment); {run}: a finished run, {tmp}: the test's folder
CASES = [
    ("eval --out RUN", ["eval", "{run}", "--corruptions", "generate", "--out", "{run}"], "inside"),
    (
        "eval --out RUN/sub",
        ["eval", "{run}", "--corruptions", "generate", "--out", "{run}/sub"],
        "inside the run folder",
    ),
    (
        "eval --cache RUN/cache",
        ["eval", "{run}", "--corruptions", "generate", "--out", "{tmp}/o", "--cache", "{run}/c"],
        "--cache",
    ),
    (
        "eval --out through a symlink",
        ["eval", "{run}", "--corruptions", "generate", "--out", "{tmp}/link/sub"],
        "inside the run folder",
    ),
    (
        "eval --out FILE/sub",
        ["eval", "{run}", "--corruptions", "generate", "--out", "{tmp}/file/sub"],
        "is a file",
    ),
    ("analyze --out RUN/a", ["analyze", "{run}", "--out", "{run}/a"], "inside the run folder"),
    ("compare --out RUN/cmp", [*COMPARE, "--out", "{run}/cmp"], "inside the run folder"),
    (
        "predict --out RUN/p.csv",
        ["predict", "{run}", "{tmp}", "--out", "{run}/p.csv"],
        "inside the run folder",
    ),
    (
        "predict --out through a symlink",
        ["predict", "{run}", "{tmp}", "--out", "{tmp}/link/p.csv"],
        "inside the run folder",
    ),
    (
        "export --out RUN/m.pt",
        ["export", "{run}", "--format", "torchscript", "--out", "{run}/m.pt"],
        "inside the run folder",
    ),
    ("compare --out FILE/sub", [*COMPARE, "--out", "{tmp}/file/sub"], "is a file"),
    ("compare --out a long name", [*COMPARE, "--out", "{tmp}/" + "x" * 300], "limit of"),
]


@pytest.mark.parametrize("argv,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_an_output_path_inside_a_run_is_refused_in_one_line(
    argv, fragment, run, tmp_path, capsys, monkeypatch
):
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(run)
    monkeypatch.chdir(tmp_path)
    before_tmp, before_run = file_snapshot(tmp_path), file_snapshot(run)
    filled = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(run)) for a in argv]
    assert main(filled) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("focalsam: error: ") and fragment in err[0], err
    assert file_snapshot(tmp_path) == before_tmp and file_snapshot(run) == before_run


@pytest.mark.parametrize("name", ["resumes.jsonl", "tensorboard"])
def test_resume_never_writes_through_a_symlink_out_of_the_run(name, tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, f"run_dir={run}"]) == 0
    outside = tmp_path / "outside"
    outside.write_text("keep\n")
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(outside)
    before = file_snapshot(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "epochs=2"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "symbolic link" in err[0], err
    assert outside.read_text() == "keep\n" and file_snapshot(run) == before


def test_a_failed_analyze_leaves_no_analysis_json(run, tmp_path, monkeypatch):
    import focalsam.analysis.plots as plots

    def broken(*_a, **_k):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(plots, "plot_all", broken)
    out = tmp_path / "an"
    argv = ["analyze", str(run), "--out", str(out), "--measure", "trace", "--no-progress"]
    with pytest.raises(RuntimeError, match="figure failed"):
        main([*argv, "--samples-per-class", "4", "--trace-probes", "2"])
    assert not (out / "analysis.json").exists()


def test_run_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        assert main([*TRAIN, f"run_dir={tmp_path / 'run'}"]) == 0
    finally:
        os.umask(old)
    for name in ("config.yaml", "last.pt", "metrics.jsonl", "report.json", "lock"):
        mode = stat.S_IMODE((tmp_path / "run" / name).stat().st_mode)
        assert mode == 0o644, (name, oct(mode))
