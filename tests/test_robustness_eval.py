"""``focalsam eval RUN --corruptions``: a tiny demo run under generated and stored
corruptions; clean accuracy reproduced at severity 0; nothing written into the run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import demo_config, file_snapshot, silent_trainer

from focalsam.cli import main

if importlib.util.find_spec("imagecorruptions") is None:
    pytest.skip("imagecorruptions is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "run"
    silent_trainer(demo_config(path, model="mlp", epochs=2)).fit()
    return path


def test_generated_corruptions_per_group_with_clean_accuracy_at_severity_0(run, tmp_path, capsys):
    before = file_snapshot(run)
    assert main(["eval", str(run), "--json"]) == 0
    clean = json.loads(capsys.readouterr().out)
    out = tmp_path / "c"
    argv = [
        "eval",
        str(run),
        "--corruptions",
        "generate",
        "--out",
        str(out),
        "--severities",
        "0,1,3",
        "--corruption-list",
        "gaussian_noise,contrast,pixelate",
    ]
    assert main(argv) == 0
    doc = json.loads((out / "corruptions.json").read_text())
    assert (out / "corruptions.png").read_bytes()[:4] == b"\x89PNG"
    ran = {c["corruption"] for c in doc["cells"]}
    assert ran | set(doc["skipped"]) == {"gaussian_noise", "contrast", "pixelate"} and ran
    for cell in doc["cells"]:
        counts = cell["counts"]
        for i in (0, 1):  # correct and total: many + medium + few = overall
            assert sum(counts[g][i] for g in ("many", "medium", "few")) == counts["overall"][i]
        assert cell["overall"] == pytest.approx(counts["overall"][0] / counts["overall"][1])
        if cell["severity"] == 0:
            assert cell["overall"] == clean["overall"]
            assert [cell[g] for g in ("many", "medium", "few")] == [
                clean[g] for g in ("many", "medium", "few")
            ]
    noisy = [c for c in doc["cells"] if c["corruption"] == "gaussian_noise" and c["severity"] == 3]
    assert noisy and noisy[0]["overall"] < clean["overall"]
    assert doc["summary"]["mean_error"] > 1 - clean["overall"]
    assert file_snapshot(run) == before

    # a second evaluation reads the cache and gives the same numbers
    assert main(argv) == 0
    again = json.loads((out / "corruptions.json").read_text())
    assert [c["overall"] for c in again["cells"]] == [c["overall"] for c in doc["cells"]]


def test_a_cifar_c_style_folder_is_read_and_checked(run, tmp_path, capsys):
    from focalsam.train.evaluation import load_run

    loaded = load_run(run)
    test = loaded.data.split("test")
    root = tmp_path / "digits-c"
    root.mkdir()
    np.save(root / "labels.npy", np.tile(test.labels, 5))
    np.save(root / "contrast.npy", np.concatenate([test.images] * 5))  # "corrupted" = clean
    out = tmp_path / "out"
    argv = ["eval", str(run), "--corruptions", str(root), "--out", str(out), "--severities", "1,2"]
    assert main(argv) == 0
    doc = json.loads((out / "corruptions.json").read_text())
    assert [c["corruption"] for c in doc["cells"]] == ["contrast", "contrast"]
    assert len(doc["skipped"]) == 14 and "not found" in doc["skipped"]["fog"]
    assert main(["eval", str(run), "--json"]) == 0
    capsys.readouterr()
    np.save(root / "labels.npy", np.tile(test.labels[::-1], 5))
    assert main(argv) == 2
    assert "does not match this run's test labels" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--corruptions", "generate"], "--corruptions and --out go together"),
        (["--corruptions", "{tmp}/missing", "--out", "{tmp}/o"], "no such folder"),
        (["--corruptions", "generate", "--out", "{tmp}/o", "--severities", "1-9"], "0..5"),
        (
            ["--corruptions", "generate", "--out", "{tmp}/o", "--corruption-list", "rain"],
            "unknown corruption rain",
        ),
    ],
)
def test_bad_corruption_inputs_are_one_line_exit_2(run, tmp_path, capsys, extra, message):
    before = file_snapshot(run)
    argv = ["eval", str(run), *[a.replace("{tmp}", str(tmp_path)) for a in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists() and file_snapshot(run) == before
