"""``focalsam analyze`` on two tiny demo runs: the JSON and every figure, resumability,
and one clear line (exit 2, nothing written) for each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import demo_config, file_snapshot, silent_trainer

from focalsam.cli import main

SMALL = [
    "--samples-per-class",
    "12",
    "--grid",
    "3",
    "--trace-probes",
    "4",
    "--lanczos-steps",
    "4",
    "--max-iter",
    "8",
    "--rho",
    "0.05,0.1",
    "--no-progress",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, model in (("sgd", "mlp"), ("focal_sam", "mlp"), ("cnn", "small_cnn")):
        opt = "focal_sam" if name == "cnn" else name
        cfg = demo_config(root / name, optimizer=opt, model=model, epochs=1)
        silent_trainer(cfg).fit()
        out[name] = root / name
    return out


def test_two_runs_side_by_side_write_the_json_and_every_figure(runs, tmp_path, capsys):
    out = tmp_path / "analysis"
    before = [file_snapshot(runs["sgd"]), file_snapshot(runs["focal_sam"])]
    argv = ["analyze", str(runs["sgd"]), str(runs["focal_sam"]), "--out", str(out), *SMALL]
    assert main(argv) == 0
    doc = json.loads((out / "analysis.json").read_text())
    assert set(doc["runs"]) == {"plain", "focal_sam"}
    assert "eval() mode" in doc["conventions"]
    for label, run in doc["runs"].items():
        assert list(run["targets"]) == ["head (class 0)", "tail (class 9)"]
        for slot in run["targets"].values():
            assert {"basic", "hessian", "trace", "density", "sharpness", "landscape"} <= set(slot)
            assert slot["hessian"]["hvps"] > 0 and slot["hessian"]["seconds"] >= 0
            assert len(slot["landscape"]["loss"]) == 3
            assert slot["sharpness"]["rho"] == [0.05, 0.1]
        sharp = run["targets"]["tail (class 9)"]["sharpness"]
        assert (sharp["run"] is None) == (label == "plain")
    for png in (
        "curvature_vs_class_size.png",
        "sharpness_vs_class_size.png",
        "spectral_density.png",
        "loss_landscapes.png",
    ):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png
    assert "top eigenvalue" in capsys.readouterr().out
    assert [
        file_snapshot(runs["sgd"]),
        file_snapshot(runs["focal_sam"]),
    ] == before  # runs untouched


def test_finished_measures_are_not_recomputed(runs, tmp_path, monkeypatch):
    import focalsam.analysis.measures as measures

    out = tmp_path / "analysis"
    argv = ["analyze", str(runs["sgd"]), "--out", str(out), "--measure", "hessian", *SMALL]
    assert main(argv) == 0
    first = json.loads((out / "analysis.json").read_text())
    calls = []
    real = measures.run_measure
    monkeypatch.setattr(measures, "run_measure", lambda *a: calls.append(a[0]) or real(*a))
    assert main(argv) == 0
    assert calls == []
    assert json.loads((out / "analysis.json").read_text()) == first


def test_the_same_seed_gives_the_same_numbers(runs, tmp_path):
    docs = []
    for name in ("a", "b"):
        argv = [
            "analyze",
            str(runs["focal_sam"]),
            "--out",
            str(tmp_path / name),
            "--measure",
            "hessian,sharpness",
            *SMALL,
        ]
        assert main(argv) == 0
        docs.append(json.loads((tmp_path / name / "analysis.json").read_text()))
    strip = lambda d: {  # noqa: E731
        n: {
            m: {k: v for k, v in val.items() if k != "seconds"}
            for m, val in s.items()
            if isinstance(val, dict)
        }
        for n, s in d["runs"]["focal_sam"]["targets"].items()
    }
    assert strip(docs[0]) == strip(docs[1])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--measure", "curvature"], "unknown measure curvature"),
        (["--classes", "0,42"], "class 42 does not exist"),
        (["--classes", "torso"], "unknown class selector"),
        (["--samples-per-class", "0"], "samples_per_class must be >= 1"),
        (["--rho", "a,b"], "--rho must be a comma list"),
        (["--checkpoint", "best"], "best.pt does not exist"),
    ],
)
def test_bad_inputs_are_one_line_exit_2_nothing_written(runs, tmp_path, capsys, extra, message):
    out = tmp_path / "analysis"
    before = file_snapshot(runs["sgd"])
    rc = main(["analyze", str(runs["sgd"]), "--out", str(out), *SMALL, *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists() and file_snapshot(runs["sgd"]) == before


def test_runs_of_two_architectures_share_no_landscape(runs, tmp_path, capsys):
    out = tmp_path / "analysis"
    rc = main(["analyze", str(runs["sgd"]), str(runs["cnn"]), "--out", str(out), *SMALL])
    assert rc == 2 and "one architecture" in capsys.readouterr().err
    assert not out.exists()


def test_out_inside_a_run_and_unreadable_runs_are_refused(runs, tmp_path, capsys):
    rc = main(["analyze", str(runs["sgd"]), "--out", str(runs["sgd"] / "analysis"), *SMALL])
    assert rc == 2 and "never writes into a run" in capsys.readouterr().err
    rc = main(["analyze", str(tmp_path / "nope"), "--out", str(tmp_path / "a"), *SMALL])
    assert rc == 2 and "nope does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()  # a folder, but no run in it
    rc = main(["analyze", str(tmp_path / "empty"), "--out", str(tmp_path / "a"), *SMALL])
    assert rc == 2 and "empty/config.yaml not found" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_targets_name_classes_head_to_tail_and_refuse_an_empty_class():
    import numpy as np

    from focalsam.analysis.targets import resolve_targets, sample_indices
    from focalsam.errors import InputError

    counts = [500, 120, 40, 6]
    targets = resolve_targets("few,many,medium", counts, "standard")
    assert [(t.name, t.classes) for t in targets] == [
        ("many", (0, 1)),
        ("medium", (2,)),
        ("few", (3,)),
    ]
    labels = np.array([0, 0, 1, 2, 2, 2])
    idx = sample_indices(labels, targets[0], 1, seed=0, split="test")
    assert sorted(labels[idx].tolist()) == [0, 1]
    assert sample_indices(labels, targets[0], 1, 0, "test").tolist() == idx.tolist()
    with pytest.raises(InputError, match="class 3 \\(few\\) has no samples in the test split"):
        sample_indices(labels, targets[2], 5, seed=0, split="test")
