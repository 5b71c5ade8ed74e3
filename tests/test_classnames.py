"""Class names in label order: CIFAR, ImageNet, iNaturalist 2018 (indexed by category id)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from focalsam.data.classnames import cifar_class_names, imagenet_class_names, inat_class_names
from focalsam.data.errors import DataError, DataNotFoundError
from focalsam.errors import InputError

SHARED_CIFAR10 = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10-jpeg.npz"
)


def test_cifar10_names() -> None:
    names = cifar_class_names("cifar10")
    assert len(names) == 10 and len(set(names)) == 10
    assert names[0] == "airplane" and names[3] == "cat" and names[9] == "truck"


@pytest.mark.skipif(not SHARED_CIFAR10.is_file(), reason="no offline CIFAR-10 copy")
def test_cifar10_names_match_the_offline_copy() -> None:
    with np.load(SHARED_CIFAR10, allow_pickle=False) as data:
        assert [str(n) for n in data["label_names"]] == cifar_class_names("cifar10")


def test_cifar100_names() -> None:
    names = cifar_class_names("CIFAR-100")
    assert len(names) == 100 and len(set(names)) == 100
    assert names == sorted(names)  # CIFAR-100's meta lists its fine labels alphabetically
    assert (names[0], names[19], names[55], names[99]) == ("apple", "cattle", "otter", "worm")
    assert all(n == n.strip().lower() and " " not in n for n in names)


def test_cifar_names_from_meta(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        (folder / name).write_bytes(b"")
    fine = [f"name_{i}".encode() for i in range(100)]
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": fine, b"coarse_label_names": []}, f)
    try:
        names = cifar_class_names("cifar100", root=tmp_path)
    except DataError as exc:  # the reader's own checks of the folder layout
        pytest.skip(f"CIFAR reader wants a fuller layout: {exc}")
    assert names == [f"name_{i}" for i in range(100)]


def test_unknown_cifar() -> None:
    with pytest.raises(InputError, match="cifar10, cifar100"):
        cifar_class_names("cifar1000")


def test_imagenet_names() -> None:
    pytest.importorskip("torchvision")
    names = imagenet_class_names()
    assert len(names) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet tissue"


def test_imagenet_openai_names() -> None:
    pytest.importorskip("open_clip")
    names = imagenet_class_names("openai")
    assert len(names) == 1000 and names[0] == "tench"
    with pytest.raises(InputError, match="torchvision, openai"):
        imagenet_class_names("wordnet")


def _write(path: Path, entries: object) -> Path:
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def test_inat_names_are_indexed_by_category_id(tmp_path: Path) -> None:
    # ids listed out of order; alphabetical order of the names differs from id order
    by_id = {0: "Zostera marina", 1: "Abies alba", 2: "Megaptera novaeangliae", 3: "Bufo bufo"}
    order = [2, 0, 3, 1]
    entries = [{"id": i, "name": by_id[i], "supercategory": "x"} for i in order]
    path = _write(tmp_path / "categories.json", entries)
    names = inat_class_names(path)
    for i in range(4):
        assert names[i] == by_id[i]
    alphabetical = sorted(e["name"] for e in entries)  # the public code's fault
    assert any(alphabetical[i] != by_id[i] for i in range(4))
    file_order = [e["name"] for e in entries]
    assert any(file_order[i] != by_id[i] for i in range(4))
    assert inat_class_names(path, num_classes=4) == names


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([{"id": 0, "name": "a"}, {"id": 2, "name": "c"}], r"missing \[1\]"),
        ([{"id": 0, "name": "a"}, {"id": 0, "name": "b"}], "appears twice"),
        ([{"id": 0, "name": "a"}, {"id": "1", "name": "b"}], "integer 'id'"),
        ([{"id": 0}], "'id' and 'name'"),
        ({"id": 0, "name": "a"}, "JSON list"),
    ],
)
def test_inat_bad_categories(tmp_path: Path, entries: object, match: str) -> None:
    path = _write(tmp_path / "categories.json", entries)
    with pytest.raises(DataError, match=match) as exc:
        inat_class_names(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_inat_num_classes_mismatch(tmp_path: Path) -> None:
    path = _write(tmp_path / "categories.json", [{"id": 1, "name": "b"}, {"id": 0, "name": "a"}])
    with pytest.raises(DataError, match=r"0\.\.2"):
        inat_class_names(path, num_classes=3)


def test_inat_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="categories.json"):
        inat_class_names(tmp_path / "nope.json")
