"""Image-list runs (ImageNet-LT / iNaturalist layout): the data is checked before any
training is spent, and a bad list or image is one line, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from focalsam.cli import main
from focalsam.data import DataError
from focalsam.train import ConfigError, Trainer, make_config

Image = pytest.importorskip("PIL.Image")


def _png(path: Path, value: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color=(value, value, 255 - value)).save(path)
    return str(path)


@pytest.fixture()
def lists(tmp_path):
    root = tmp_path / "imagenet"
    for split, per_class in (("train", 4), ("test", 2)):
        lines = []
        for c in range(3):
            for k in range(per_class):
                rel = f"{split}/n{c:03d}/{k}.png"
                _png(root / rel, 20 * c + k)
                lines.append(f"{rel} {c}")
        (root / f"ImageNet_LT_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def overrides(root: Path, run: Path, *extra: str) -> list[str]:
    return [
        "dataset=imagenet_lt",
        f"data_root={root}",
        "model=mlp",
        "num_workers=0",
        f"run_dir={run}",
        "progress=false",
        "tensorboard=false",
        *extra,
    ]


def test_10_a_batch_larger_than_the_list_is_an_error_not_an_untrained_model(lists, tmp_path):
    cfg = make_config(None, None, overrides(lists, tmp_path / "run", "batch_size=64"))
    with pytest.raises(ConfigError, match="batch_size=64 is larger than the 12 images"):
        Trainer(cfg, log=lambda _m: None)
    assert not (tmp_path / "run").exists()


def test_11_a_missing_test_image_fails_before_training(lists, tmp_path):
    (lists / "test/n001/1.png").unlink()
    cfg = make_config(None, None, overrides(lists, tmp_path / "run", "batch_size=4"))
    with pytest.raises(DataError, match=r"test/n001/1\.png"):
        Trainer(cfg, log=lambda _m: None)
    assert not (tmp_path / "run").exists()


def test_an_unknown_shot_preset_fails_at_the_config():
    with pytest.raises(ConfigError, match="data.shot_preset: unknown shot preset"):
        make_config("demo", overrides=["shot_preset=cifar-lt-medium"])


def _bad_line(root: Path) -> None:
    (root / "ImageNet_LT_train.txt").write_text("train/n000/0.png zero\n")


def _missing_class(root: Path) -> None:
    text = (root / "ImageNet_LT_train.txt").read_text()
    (root / "ImageNet_LT_train.txt").write_text(
        "".join(line + "\n" for line in text.splitlines() if not line.endswith(" 1"))
    )


def _undecodable(root: Path) -> None:
    (root / "train/n002/3.png").write_bytes(b"not a png at all")


def _missing_list(root: Path) -> None:
    (root / "ImageNet_LT_test.txt").unlink()


@pytest.mark.parametrize("spoil", [_bad_line, _missing_class, _undecodable, _missing_list])
def test_bad_lists_and_images_are_one_line_exit_2(spoil, lists, tmp_path, capsys, monkeypatch):
    spoil(lists)
    monkeypatch.chdir(tmp_path)
    rc = main(["train", *overrides(lists, tmp_path / "run", "batch_size=4")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("focalsam: error: "), err
    assert not (tmp_path / "run").exists()
