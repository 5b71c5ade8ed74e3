"""A malformed file in a folder being resumed (a compare's ``compare.yaml`` or a run's
``report.json``, an analysis's ``analysis.json``) is one line naming the file, exit 2, no
traceback, and the folder is left exactly as it was."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import file_snapshot

from focalsam.cli import main

QUIET = ["progress=false", "tensorboard=false"]
COMPARE = [
    "compare",
    "--preset",
    "demo",
    "--optimizers",
    "sgd",
    "--seeds",
    "0",
    "epochs=1",
    "model=mlp",
    *QUIET,
]
ANALYZE = ["--measure", "hessian", "--samples-per-class", "4", "--lanczos-steps", "2"]
ANALYZE += ["--max-iter", "2", "--no-progress"]
DEEP = "[" * 3000 + "]" * 3000


def _edit_json(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """A writer that applies ``change`` to the file's current JSON document."""

    def write(path: Path) -> None:
        doc = json.loads(path.read_text())
        change(doc)
        path.write_text(json.dumps(doc))

    return write


def _text(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text)


def _drop_seeds(path: Path) -> None:
    record = yaml.safe_load(path.read_text())
    del record["seeds"]
    path.write_text(yaml.safe_dump(record, sort_keys=False))


def _first_run(analysis: dict[str, Any]) -> dict[str, Any]:
    return next(iter(analysis["runs"].values()))


NOT_UTF8: Callable[[Path], None] = lambda path: path.write_bytes(b"\xff\xfe\x00{")  # noqa: E731

# (id, file in the folder, how to damage it, fragment of the one line)
COMPARE_CASES = [
    ("compare.yaml not YAML", "compare.yaml", _text("preset: [demo\n"), "cannot be read"),
    ("compare.yaml not UTF-8", "compare.yaml", NOT_UTF8, "cannot be read"),
    ("compare.yaml a list", "compare.yaml", _text("- demo\n"), "not a compare record"),
    ("compare.yaml a number", "compare.yaml", _text("3\n"), "not a compare record"),
    ("compare.yaml empty mapping", "compare.yaml", _text("{}\n"), "lacks format, preset"),
    ("compare.yaml without seeds", "compare.yaml", _drop_seeds, "lacks seeds"),
    ("compare.yaml nested 3000 deep", "compare.yaml", _text(f"a: {DEEP}\n"), "nested deeper"),
    ("compare.yaml alias", "compare.yaml", _text("a: &x [1]\nb: *x\n"), "aliases"),
    ("report.json not JSON", "plain-seed0/report.json", _text("{"), "not valid JSON"),
    ("report.json not UTF-8", "plain-seed0/report.json", NOT_UTF8, "cannot be read"),
    ("report.json a list", "plain-seed0/report.json", _text("[]\n"), "not a run report"),
    ("report.json empty object", "plain-seed0/report.json", _text("{}\n"), "lacks config"),
    (
        "report.json seed a string",
        "plain-seed0/report.json",
        _edit_json(lambda d: d["config"]["run"].update(seed="zero")),
        "config.run.seed",
    ),
    (
        "report.json last_epoch a number",
        "plain-seed0/report.json",
        _edit_json(lambda d: d.update(last_epoch=5)),
        "last_epoch",
    ),
    (
        "report.json accuracy a string",
        "plain-seed0/report.json",
        _edit_json(lambda d: d["last_epoch"].update(overall="high")),
        "last_epoch.overall",
    ),
    (
        "report.json per_class a dict",
        "plain-seed0/report.json",
        _edit_json(lambda d: d["last_epoch"].update(per_class={"a": 1})),
        "last_epoch.per_class",
    ),
    ("report.json nested 3000 deep", "plain-seed0/report.json", _text(DEEP), "nested 3000"),
]


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compare") / "cmp"
    assert main([*COMPARE, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    "name, damage, fragment",
    [c[1:] for c in COMPARE_CASES],
    ids=[c[0] for c in COMPARE_CASES],
)
def test_a_malformed_file_in_a_compare_being_resumed_is_one_line_exit_2(
    compared, tmp_path, capsys, monkeypatch, name, damage, fragment
):
    out = tmp_path / "cmp"
    shutil.copytree(compared, out)
    damage(out / name)
    monkeypatch.chdir(tmp_path)
    before = file_snapshot(tmp_path)
    capsys.readouterr()

    rc = main([*COMPARE, "--out", str(out)])
    _assert_one_line_naming(capsys, rc, out / name, fragment)
    assert file_snapshot(tmp_path) == before, "something was written"


# (id, file in the analysis folder, how to damage it, fragment of the one line)
ANALYSIS_CASES = [
    ("analysis.json not JSON", "analysis.json", _text("{"), "not valid JSON"),
    ("analysis.json a list", "analysis.json", _text("[]"), "not an analysis.json"),
    ("analysis.json empty object", "analysis.json", _text("{}"), "lacks settings"),
    ("analysis.json nested 3000 deep", "analysis.json", _text(DEEP), "nested 3000"),
    (
        "analysis.json runs a string",
        "analysis.json",
        _edit_json(lambda d: d.update(runs="x")),
        "runs",
    ),
    (
        "analysis.json a run a number",
        "analysis.json",
        _edit_json(lambda d: d["runs"].update(plain=5)),
        "runs.plain",
    ),
    (
        "analysis.json targets a list",
        "analysis.json",
        _edit_json(lambda d: _first_run(d).update(targets=[])),
        "is not a JSON object with targets",
    ),
    (
        "analysis.json a measure a number",
        "analysis.json",
        _edit_json(lambda d: next(iter(_first_run(d)["targets"].values())).update(hessian=1)),
        "hessian",
    ),
    (
        "analysis.json eigenvalues strings",
        "analysis.json",
        _edit_json(lambda d: _first_target(d)["hessian"].update(values=["big"])),
        ".hessian.values is not a list of numbers",
    ),
    (
        "analysis.json loss a string",
        "analysis.json",
        _edit_json(lambda d: _first_target(d)["basic"].update(loss="0.5")),
        ".basic.loss is not a number",
    ),
    (
        "analysis.json converged numbers",
        "analysis.json",
        _edit_json(lambda d: _first_target(d)["hessian"].update(converged=[1])),
        ".hessian.converged is not a list of booleans",
    ),
    (
        "analysis.json train_count missing",
        "analysis.json",
        _edit_json(lambda d: _first_target(d).pop("train_count")),
        "lacks train_count",
    ),
    ("partial file not JSON", ".analysis.partial.json", _text("{"), "not valid JSON"),
]


def _first_target(analysis: dict[str, Any]) -> dict[str, Any]:
    return next(iter(_first_run(analysis)["targets"].values()))


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> tuple[Path, Path]:
    """(a finished run, a finished analysis of it)."""
    root = tmp_path_factory.mktemp("analyse")
    run, out = root / "run", root / "an"
    train = ["train", "--preset", "demo", "--epochs", "1", "model=mlp", *QUIET]
    assert main([*train, f"run_dir={run}"]) == 0
    assert main(["analyze", str(run), "--out", str(out), *ANALYZE]) == 0
    return run, out


@pytest.mark.parametrize(
    "name, damage, fragment",
    [c[1:] for c in ANALYSIS_CASES],
    ids=[c[0] for c in ANALYSIS_CASES],
)
def test_a_malformed_analysis_being_resumed_is_one_line_exit_2(
    analysed, tmp_path, capsys, monkeypatch, name, damage, fragment
):
    run, finished = analysed
    out = tmp_path / "an"
    shutil.copytree(finished, out)
    damage(out / name)
    monkeypatch.chdir(tmp_path)
    before, before_run = file_snapshot(tmp_path), file_snapshot(run)
    capsys.readouterr()

    rc = main(["analyze", str(run), "--out", str(out), *ANALYZE])
    _assert_one_line_naming(capsys, rc, out / name, fragment)
    assert file_snapshot(tmp_path) == before and file_snapshot(run) == before_run


def _assert_one_line_naming(capsys: Any, rc: int, path: Path, fragment: str) -> None:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("focalsam: error: "), lines[0]
    assert str(path) in lines[0] and fragment in lines[0], lines[0]


def test_every_measure_analyze_writes_has_the_shape_a_resume_checks(analysed, tmp_path):
    """The check of a resumed analysis.json accepts what analyze itself writes, every
    measure included, and a resume of that folder keeps the measures."""
    from focalsam.analysis.saved import MEASURE_FIELDS, malformed

    run, _ = analysed
    out = tmp_path / "all"
    every = ["--measure", "hessian,trace,density,sharpness,landscape", "--top-k", "1"]
    every += ["--samples-per-class", "4", "--lanczos-steps", "2", "--max-iter", "2"]
    every += ["--trace-probes", "2", "--density-probes", "1", "--grid", "3", "--no-progress"]
    assert main(["analyze", str(run), "--out", str(out), *every]) == 0
    doc = json.loads((out / "analysis.json").read_text())
    assert malformed(doc) is None
    slot = _first_target(doc)
    assert set(MEASURE_FIELDS) <= set(slot)
    before = (out / "analysis.json").read_bytes()
    assert main(["analyze", str(run), "--out", str(out), *every]) == 0  # all kept
    assert json.loads((out / "analysis.json").read_bytes())["runs"] == json.loads(before)["runs"]
