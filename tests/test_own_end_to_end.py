"""Your own data from the command line: a generated long-tailed folder (10 classes, ratio 20)
trains, evaluates, predicts and exports with ResNet-32, a timm model and tiny CLIP (LoRA,
AdaptFormer); the table path the same way. One epoch on 16-px images keeps it small."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from focalsam.cli import main

pytest.importorskip("PIL")

QUIET = ["device=cpu", "num_workers=0", "progress=false", "tensorboard=false", "epochs=1"]


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("own") / "example"
    assert main(["make-example", str(folder), "--size", "16", "--test-per-class", "5"]) == 0
    return folder


def _train(tmp: Path, name: str, *keys: str) -> Path:
    run = tmp / name
    args = ["train", f"run_dir={run}", "data.image_size=16", "batch_size=64", *QUIET, *keys]
    assert main(args) == 0
    return run


def _eval_predictions(run: Path) -> tuple[list[int], torch.nn.Module, Any]:
    from focalsam.train.evaluation import load_run

    loaded = load_run(run, device="cpu")
    model = loaded.model.eval()
    with torch.no_grad():
        preds = [int(i) for x, _ in loaded.data.test for i in model(x).argmax(1)]
    loaded.rt.close()
    return preds, model, loaded.data


def _check_predict_equals_eval(run: Path, tmp: Path, capsys: Any) -> None:
    """predict on the run's own test list gives eval's predictions, row for row."""
    preds, _, data = _eval_predictions(run)
    out = tmp / f"{run.name}-pred.csv"
    assert main(["predict", str(run), str(run / "split" / "test.csv"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    names = data.class_names()
    assert [int(r["index"]) for r in rows] == preds
    assert all(r["class"] == names[int(r["index"])] == r["top1_class"] for r in rows)
    probs = np.array([[float(r[f"top{j}_probability"]) for j in range(1, 6)] for r in rows])
    assert np.all(np.diff(probs, axis=1) <= 1e-9) and np.all(probs.sum(1) <= 1 + 1e-5)
    assert "predicted" in capsys.readouterr().out


def _check_exports(run: Path, tmp: Path, formats: tuple[str, ...]) -> None:
    """Each exported model's logits equal the run model's to 1e-5 on random inputs."""
    from focalsam.export import merged_model

    _, model, data = _eval_predictions(run)
    x = torch.randn(3, 3, data.image_size, data.image_size)
    with torch.no_grad():
        ref = model(x)
    for fmt in formats:
        out = tmp / f"{run.name}.{fmt}"
        assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
        side = json.loads(out.with_name(out.name + ".json").read_text())
        assert side["class_names"] == data.class_names()
        assert side["input"]["image_size"] == data.image_size and len(side["input"]["mean"]) == 3
        if fmt == "torchscript":
            got = torch.jit.load(str(out))(x)
        elif fmt == "onnx":
            ort = pytest.importorskip("onnxruntime")
            session = ort.InferenceSession(str(out))
            got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        else:
            from safetensors.torch import load_file

            fresh = merged_model(model)
            for p in fresh.parameters():
                p.data.zero_()
            fresh.load_state_dict(load_file(str(out)))
            with torch.no_grad():
                got = fresh(x)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 2  # no --force


def test_folder_resnet32_trains_evaluates_predicts_exports(
    example: Path, tmp_path: Path, capsys: Any
) -> None:
    run = _train(
        tmp_path,
        "r32",
        "dataset=folder",
        f"data_root={example}",
        "model=resnet32",
        "data.cache=ram",
    )
    report = json.loads((run / "report.json").read_text())
    counts = report["class_counts"]
    assert len(counts) == 10 and max(counts) / min(counts) >= 19  # ratio 20 (rounded counts)
    # the per-class figures are named: the training folders, sorted, in label order
    folders = sorted(p.name for p in (example / "train").iterdir())
    assert report["class_names"] == folders == (run / "split" / "classes.txt").read_text().split()
    assert len(report["last_epoch"]["per_class"]) == len(folders)
    assert main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    preds, _, _ = _eval_predictions(run)
    labels = [int(r["label"] != "") for r in csv.DictReader((run / "split" / "test.csv").open())]
    assert len(preds) == len(labels) == 50
    assert 0 <= result["overall"] <= 1
    _check_predict_equals_eval(run, tmp_path, capsys)
    _check_exports(run, tmp_path, ("torchscript", "onnx", "safetensors"))


def test_folder_timm_backbone_end_to_end(example: Path, tmp_path: Path, capsys: Any) -> None:
    pytest.importorskip("timm")
    run = _train(
        tmp_path,
        "vit",
        "dataset=folder",
        f"data_root={example}",
        "model=timm:test_vit",
        "optimizer=sgd",
    )
    assert main(["eval", str(run)]) == 0
    _check_predict_equals_eval(run, tmp_path, capsys)
    _check_exports(run, tmp_path, ("torchscript", "onnx", "safetensors"))


@pytest.mark.parametrize("tuning", ["lora", "adaptformer"])
def test_tiny_clip_exports_with_lora_merged_and_adaptformer(
    example: Path, tmp_path: Path, tuning: str
) -> None:
    pytest.importorskip("open_clip")
    run = _train(
        tmp_path,
        f"clip-{tuning}",
        "dataset=folder",
        f"data_root={example}",
        "model=clip_tiny",
        "clip_weights=random",
        f"tuning={tuning}",
        "optimizer=sgd",
        "lr=0.01",
    )
    _check_exports(run, tmp_path, ("torchscript", "onnx", "safetensors"))
    if tuning == "lora":
        from safetensors.torch import load_file

        keys = load_file(str(tmp_path / f"{run.name}.safetensors"))
        assert not any("parametrizations" in k for k in keys)  # merged into plain weights


def test_table_path_end_to_end(example: Path, tmp_path: Path, capsys: Any) -> None:
    """The example folder as tables (names as labels, paths relative to the table), test
    split held out by the stratified split, cache off: workers decode."""
    table = tmp_path / "table"
    table.mkdir()
    rows = sorted((example / "train").rglob("*.png"))
    with open(table / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows((str(p), p.parent.name) for p in rows)
    run = _train(
        tmp_path,
        "table-run",
        "dataset=table",
        f"data.train={table / 'train.csv'}",
        "model=resnet32",
        "data.cache=off",
    )
    split = list(csv.DictReader((run / "split" / "test.csv").open()))
    per_class = {r["label"] for r in split}
    assert len(per_class) == 10  # every class (>= 2 images) has a test image
    assert main(["eval", str(run)]) == 0
    _check_predict_equals_eval(run, tmp_path, capsys)
    _check_exports(run, tmp_path, ("safetensors",))


def test_predict_rows_for_unreadable_files_and_refusals(
    example: Path, tmp_path: Path, capsys: Any
) -> None:
    run = _train(tmp_path, "small", "dataset=folder", f"data_root={example}", "model=small_cnn")
    bad = tmp_path / "inputs"
    bad.mkdir()
    (bad / "notes.txt").write_text("not an image")
    (bad / "broken.png").write_bytes(b"\x89PNG broken")
    good = next((example / "test" / "three").iterdir())
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(run), str(bad), str(good), "--out", str(out), "--top-k", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [("error" in r) for r in rows] == [True, True, False]
    assert len(rows[2]["top_k"]) == 2
    assert "2 file(s) could not be read" in capsys.readouterr().out
    # refused, nothing written: no image at all, an existing --out, --out inside the run
    none = tmp_path / "none.csv"
    assert main(["predict", str(run), str(bad), "--out", str(none)]) == 2
    assert not none.exists()
    assert main(["predict", str(run), str(good), "--out", str(out)]) == 2
    assert main(["predict", str(run), str(good), "--out", str(run / "p.csv")]) == 2
    assert not (run / "p.csv").exists()
    err = capsys.readouterr().err
    assert "none of the 2 input(s)" in err and "exists" in err and "inside the run" in err


def test_predict_and_export_on_a_run_whose_model_cannot_be_built(
    example: Path, tmp_path: Path, capsys: Any
) -> None:
    run = _train(tmp_path, "gone", "dataset=folder", f"data_root={example}", "model=small_cnn")
    text = (run / "config.yaml").read_text().replace("name: small_cnn", "name: timm:nope_net")
    (run / "config.yaml").write_text(text)
    out = tmp_path / "x.csv"
    assert main(["predict", str(run), str(example / "test"), "--out", str(out)]) == 2
    assert main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "m")]) == 2
    assert not out.exists() and not (tmp_path / "m").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("timm has no model 'nope_net'" in e for e in err)


def _hf_dataset(example: Path, target: Path, *, with_test: bool) -> None:
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    names = sorted(p.name for p in (example / "train").iterdir())
    features = datasets.Features(
        {"picture": datasets.Image(), "kind": datasets.ClassLabel(names=names)}
    )

    def split(name: str) -> Any:
        files = sorted((example / name).rglob("*.png"))
        rows = {
            "picture": [Image.open(p).convert("RGB") for p in files],
            "kind": [names.index(p.parent.name) for p in files],
        }
        return datasets.Dataset.from_dict(rows, features=features)

    parts = {"train": split("train")}
    if with_test:
        parts["test"] = split("test")
    datasets.DatasetDict(parts).save_to_disk(str(target))


def test_hf_path_end_to_end(example: Path, tmp_path: Path, capsys: Any) -> None:
    """A save_to_disk dataset with its own column names and a ClassLabel trains from the
    RAM cache, evaluates, predicts image files and exports; the class names come from the
    ClassLabel. Without the named columns: exit 2, one line, nothing written."""
    data = tmp_path / "hf"
    _hf_dataset(example, data, with_test=True)
    capsys.readouterr()  # the datasets library's own progress output
    keys = ["dataset=hf", f"data_root={data}", "model=resnet32", "data.cache=ram"]
    bad_run = tmp_path / "bad"
    code = main(["train", f"run_dir={bad_run}", *QUIET, *keys])
    assert code == 2 and not bad_run.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no column 'image' (data.image_column)" in err, err
    run = _train(tmp_path, "hf-run", *keys, "data.image_column=picture", "data.label_column=kind")
    assert (run / "split" / "classes.txt").read_text().split()[:2] == ["eight", "five"]
    assert (run / "split" / "test.csv").read_text().splitlines()[1].startswith("hf:test:")
    assert main(["eval", str(run)]) == 0
    out = tmp_path / "hf-pred.jsonl"
    assert main(["predict", str(run), str(example / "test" / "two"), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 5
    _check_exports(run, tmp_path, ("safetensors",))


def test_hf_parquet_folder_reads_like_save_to_disk(example: Path, tmp_path: Path) -> None:
    """The same dataset as parquet files (train-*.parquet, test-*.parquet) gives the same
    splits, class names and labels as its save_to_disk copy: the ClassLabel survives."""
    datasets = pytest.importorskip("datasets")
    from focalsam.data.own_hf import _open

    saved = tmp_path / "saved"
    _hf_dataset(example, saved, with_test=True)
    parquet = tmp_path / "parquet"
    parquet.mkdir()
    for name, split in datasets.load_from_disk(str(saved)).items():
        split.to_parquet(str(parquet / f"{name}-00000-of-00001.parquet"))
    a, b = _open(saved), _open(parquet)
    assert sorted(a) == sorted(b) == ["test", "train"]
    for name in a:
        assert b[name].features["kind"].names == a[name].features["kind"].names
        assert b[name]["kind"] == a[name]["kind"]
