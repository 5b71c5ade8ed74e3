"""``focalsam eval RUN --corruptions``: a tiny demo run under generated and stored
corruptions; clean accuracy reproduced at severity 0; nothing written into the run."""

from __future__ import annotations

import importlib.util
import io
import json
import pickle
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


def _truncated(path: Path, good: np.ndarray) -> None:
    np.save(path, good)
    path.write_bytes(path.read_bytes()[:-7])


def _npz(path: Path, good: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, good)
    path.write_bytes(buffer.getvalue())


def _later_severity_reordered(path: Path, good: np.ndarray) -> None:
    blocks = good.reshape(5, -1).copy()
    blocks[3] = blocks[3][::-1]
    np.save(path, blocks.reshape(-1))


# (id, file, write(path, the file's correct array), fragment); labels.npy and contrast.npy
# are correct unless the row writes them; jpeg_compression.npy, the last corruption
# evaluated, is written by the image rows, so a bad last file must fail before the first
MALFORMED_CIFAR_C = [
    ("labels text", "labels.npy", lambda p, a: p.write_text("3,8,8\n"), "not a .npy file"),
    ("labels empty", "labels.npy", lambda p, a: p.write_bytes(b""), "is empty"),
    (
        "labels pickle",
        "labels.npy",
        lambda p, a: p.write_bytes(pickle.dumps(a.tolist())),
        "a Python pickle",
    ),
    (
        "labels object array",
        "labels.npy",
        lambda p, a: np.save(p, a.astype(object), allow_pickle=True),
        "holds Python objects",
    ),
    ("labels npz", "labels.npy", _npz, "zip archive"),
    (
        "labels damaged header",
        "labels.npy",
        lambda p, a: p.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': <i8'"),
        "damaged .npy header",
    ),
    ("labels float", "labels.npy", lambda p, a: np.save(p, a.astype(np.float64)), "float64"),
    ("labels 4 severities", "labels.npy", lambda p, a: np.save(p, a[: len(a) * 4 // 5]), "shape"),
    ("labels 2-d", "labels.npy", lambda p, a: np.save(p, a.reshape(5, -1)), "shape (5,"),
    ("labels truncated", "labels.npy", _truncated, "is truncated"),
    ("labels severity 4 reordered", "labels.npy", _later_severity_reordered, "does not match"),
    ("images text", "jpeg_compression.npy", lambda p, a: p.write_text("x"), "not a .npy file"),
    (
        "images pickle",
        "jpeg_compression.npy",
        lambda p, a: p.write_bytes(pickle.dumps(a)),
        "a Python pickle",
    ),
    (
        "images object array",
        "jpeg_compression.npy",
        lambda p, a: np.save(p, a.astype(object), allow_pickle=True),
        "holds Python objects",
    ),
    (
        "images float",
        "jpeg_compression.npy",
        lambda p, a: np.save(p, a.astype(np.float32)),
        "holds float32",
    ),
    (
        "images uint16",
        "jpeg_compression.npy",
        lambda p, a: np.save(p, a.astype(np.uint16)),
        "holds uint16",
    ),
    (
        "images 4 severities",
        "jpeg_compression.npy",
        lambda p, a: np.save(p, a[: len(a) * 4 // 5]),
        "shape",
    ),
    (
        "images one pixel wider",
        "jpeg_compression.npy",
        lambda p, a: np.save(p, np.concatenate([a, a[:, :, :1]], axis=2)),
        "shape",
    ),
    ("images truncated", "jpeg_compression.npy", _truncated, "is truncated"),
]


@pytest.mark.parametrize(
    "name, write, fragment",
    [c[1:] for c in MALFORMED_CIFAR_C],
    ids=[c[0] for c in MALFORMED_CIFAR_C],
)
def test_a_malformed_cifar_c_file_is_one_line_exit_2_before_any_evaluation(
    run, tmp_path, capsys, name, write, fragment
):
    from focalsam.train.evaluation import load_run

    test = load_run(run).data.split("test")
    good = {
        "labels.npy": np.tile(test.labels, 5),
        "contrast.npy": np.concatenate([test.images] * 5),
        "jpeg_compression.npy": np.concatenate([test.images] * 5),
    }
    root = tmp_path / "c"
    root.mkdir()
    for file, array in good.items():
        if file != name:
            np.save(root / file, array)
    write(root / name, good[name])
    before_run, before_root = file_snapshot(run), file_snapshot(root)
    out = tmp_path / "out"
    capsys.readouterr()

    rc = main(
        ["eval", str(run), "--corruptions", str(root), "--out", str(out), "--severities", "1"]
    )
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert rc == 2, captured.err
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith(f"focalsam: error: {root / name} "), lines[0]
    assert fragment in lines[0], lines[0]
    if fragment != "does not match":
        assert "expected a .npy array of " in lines[0], lines[0]
    assert "severity" not in captured.out, "an evaluation ran before the check"
    assert not out.exists()
    assert file_snapshot(run) == before_run and file_snapshot(root) == before_root
