"""Your own data: folder and table readers, the stratified split, and every bad input of
``data.name=folder|table`` refused with exit code 2, one line and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from focalsam.cli import main
from focalsam.data.own import read_folder, read_table, stratified_split

PIL = pytest.importorskip("PIL.Image")


def _png(path: Path, value: int = 0, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    PIL.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def _folder(root: Path, counts: dict[str, int], split: str = "train", ext: str = ".png") -> None:
    for name, n in counts.items():
        (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _png(root / split / name / f"{i}{ext}", i)


def test_stratified_split_keeps_each_class_on_both_sides_and_is_seeded() -> None:
    labels = np.repeat(np.arange(6), [50, 20, 7, 3, 2, 1])
    tr, te = stratified_split(labels, 0.2, seed=3)
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(labels.size))
    test_counts = np.bincount(labels[te], minlength=6)
    train_counts = np.bincount(labels[tr], minlength=6)
    assert test_counts.tolist() == [10, 4, 1, 1, 1, 0]  # round(n * 0.2) clipped to 1..n-1
    assert train_counts.tolist() == [40, 16, 6, 2, 1, 1]
    again = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(again[1], te)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=4)[1], te)


def test_folder_classes_are_sorted_train_folders_and_extensions_any_case(tmp_path: Path) -> None:
    _folder(tmp_path, {"zebra": 2, "ant": 3})
    _png(tmp_path / "train" / "ant" / "UPPER.JPG")  # a PNG under a .JPG name still counts
    _png(tmp_path / "train" / "ant" / ".hidden" / "x.png")  # dot-folders are skipped
    _folder(tmp_path, {"ant": 1}, split="test")
    names, splits = read_folder(tmp_path)
    assert names == ["ant", "zebra"]
    assert np.bincount([y for _, y in splits["train"]]).tolist() == [4, 2]
    assert [y for _, y in splits["test"]] == [0]
    assert "val" not in splits


def test_table_paths_relative_to_the_file_or_root_and_label_kinds(tmp_path: Path) -> None:
    _png(tmp_path / "t" / "a.png")
    _png(tmp_path / "images" / "b.png")
    csv = tmp_path / "t" / "train.csv"
    csv.write_text("path,label\na.png,cat\nb.png,dog\n")
    names, samples = read_table(csv, None, root=tmp_path / "images")
    assert names == ["cat", "dog"]
    assert [Path(p).name for p, _ in samples] == ["a.png", "b.png"]
    jsonl = tmp_path / "t" / "ints.jsonl"
    jsonl.write_text('{"path": "a.png", "label": 2}\n{"path": "a.png", "label": 0}\n')
    names, samples = read_table(jsonl, None)
    assert names == ["0", "1", "2"] and [y for _, y in samples] == [2, 0]
    tsv = tmp_path / "t" / "given.tsv"
    tsv.write_text("path\tlabel\na.png\tdog\n")
    assert read_table(tsv, ["dog", "cat"])[1][0][1] == 0


def _bad(tmp_path: Path, *overrides: str) -> tuple[int, str]:
    run = tmp_path / "run"
    code = main(
        [
            "train",
            f"run_dir={run}",
            "epochs=1",
            "device=cpu",
            "num_workers=0",
            "progress=false",
            *overrides,
        ]
    )
    assert not run.exists(), "nothing may be written on bad input"
    return code, run.as_posix()


BAD_FOLDERS = {
    "empty class folder": (
        lambda r: (_folder(r, {"a": 2}), (r / "train" / "b").mkdir()),
        "is empty",
    ),
    "class only in test": (
        lambda r: (_folder(r, {"a": 2}), _folder(r, {"a": 1, "ghost": 1}, "test")),
        "'ghost' is in",
    ),
    "unreadable image": (
        lambda r: (_folder(r, {"a": 2, "b": 2}), (r / "train" / "b" / "9.png").write_text("no")),
        "undecodable",
    ),
    "non-image file": (
        lambda r: (_folder(r, {"a": 2, "b": 2}), (r / "train" / "a" / "notes.txt").write_text("x")),
        "is not an image (1 non-image file(s)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_bad_folder_exits_2_with_one_line(tmp_path: Path, case: str, capsys) -> None:
    make, fragment = BAD_FOLDERS[case]
    data = tmp_path / "data"
    make(data)
    code, _ = _bad(tmp_path, "dataset=folder", f"data_root={data}")
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and fragment in err, err


def _table_case(root: Path, body: str, name: str = "train.csv") -> Path:
    _png(root / "a.png")
    _png(root / "b.png", 1)
    path = root / name
    path.write_text(body)
    return path


BAD_TABLES = {
    "missing column": ("path,class\na.png,x\n", "missing column 'label'"),
    "label not in list": ("path,label\na.png,cat\nb.png,cow\n", "label 'cow' is not in"),
    "path missing": ("path,label\na.png,cat\nnope.png,dog\n", "image nope.png does not exist"),
    "mixed labels": ("path,label\na.png,1\nb.png,dog\n", "labels mix integers and names"),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_table_exits_2_with_one_line(tmp_path: Path, case: str, capsys) -> None:
    body, fragment = BAD_TABLES[case]
    data = tmp_path / "data"
    data.mkdir()
    table = _table_case(data, body)
    extra = []
    if case == "label not in list":
        (data / "classes.txt").write_text("cat\ndog\n")
        extra = [f"data.class_names={data / 'classes.txt'}"]
    code, _ = _bad(tmp_path, "dataset=table", f"data.train={table}", *extra)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert str(table.name) in err or "nope.png" in err


def test_bad_model_names_and_weights_exit_2(tmp_path: Path, capsys) -> None:
    pytest.importorskip("timm")
    import torch

    data = tmp_path / "data"
    _folder(data, {"a": 2, "b": 2})
    code, _ = _bad(tmp_path, "dataset=folder", f"data_root={data}", "model=timm:resnet1t")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "timm has no model 'resnet1t'" in err and "timm:resnet10t" in err, err
    weights = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), weights)
    code, _ = _bad(
        tmp_path,
        "dataset=folder",
        f"data_root={data}",
        "model=timm:test_vit",
        "data.image_size=16",
        "batch_size=2",  # the tiny folder's training set: the weights are what is wrong
        f"model.weights={weights}",
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "is not a timm:test_vit state dict" in err and "missing" in err, err
    assert len(err.splitlines()) == 1


def test_split_written_into_the_run_is_what_eval_reads(tmp_path: Path) -> None:
    """Without a test folder the split is made once, written to RUN/split and read back:
    an image added to the folder later does not change what the run evaluates."""
    data = tmp_path / "data"
    _folder(data, {"a": 6, "b": 3, "c": 2})
    run = tmp_path / "run"
    args = ["dataset=folder", f"data_root={data}", "model=small_cnn", "batch_size=4"]
    args += ["data.image_size=8", f"run_dir={run}", "epochs=1", "device=cpu"]
    args += ["num_workers=0", "progress=false", "tensorboard=false"]
    assert main(["train", *args]) == 0
    test_rows = (run / "split" / "test.csv").read_text().splitlines()[1:]
    assert len(test_rows) == 1 + 1 + 1  # round(6 * .2) = 1, b: 1, c: 1
    assert (run / "split" / "classes.txt").read_text().split() == ["a", "b", "c"]
    _png(data / "train" / "c" / "new.png", 7)
    from focalsam.train.evaluation import load_run

    loaded = load_run(run, device="cpu")
    try:
        assert len(loaded.data.split("test").labels) == 3
        assert len(loaded.data.split("train").labels) == 8
        assert loaded.data.class_counts == [5, 2, 1]
    finally:
        loaded.rt.close()
    report = json.loads((run / "report.json").read_text())
    assert report["class_counts"] == [5, 2, 1]


def test_resume_keeps_the_runs_split(tmp_path: Path) -> None:
    """--resume reads RUN/split: images added to the folder meanwhile are not trained on."""
    data = tmp_path / "data"
    _folder(data, {"a": 5, "b": 3})
    run = tmp_path / "run"
    args = ["dataset=folder", f"data_root={data}", "model=small_cnn", "batch_size=2"]
    args += ["data.image_size=8", f"run_dir={run}", "epochs=1", "device=cpu"]
    args += ["num_workers=0", "progress=false", "tensorboard=false"]
    assert main(["train", *args]) == 0
    before = (run / "split" / "train.csv").read_text()
    _folder(data, {"b": 6})  # three more images of b (names 3.png .. 5.png)
    assert main(["train", "--resume", str(run), "epochs=2"]) == 0
    assert (run / "split" / "train.csv").read_text() == before
    report = json.loads((run / "report.json").read_text())
    assert report["class_counts"] == [4, 2]
