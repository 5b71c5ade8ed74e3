"""Image lists (ImageNet-LT / iNaturalist format), image folders, transforms, ArrayDataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from focalsam.data import (
    ArrayDataset,
    ImageListDataset,
    image_folder_lt,
    imagenet_lt,
    inaturalist2018,
    parse_image_list,
)

Image = pytest.importorskip("PIL.Image")


def _png(path, value, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color=(value, value, 255 - value)).save(path)


@pytest.fixture()
def image_root(tmp_path):
    root = tmp_path / "images"
    lines = []
    for c in range(3):
        for k in range(4):
            rel = f"train/n{c:03d}/img {k}.png"  # a space in the name
            _png(root / rel, 10 * c + k)
            lines.append(f"{rel} {c}")
    list_file = tmp_path / "ImageNet_LT_train.txt"
    list_file.write_text("\n".join(lines) + "\n\n")
    return root, list_file


def test_list_dataset_reads_images(image_root):
    root, list_file = image_root
    ds = ImageListDataset(root, list_file)
    assert len(ds) == 12 and ds.num_classes == 3
    assert ds.class_counts.tolist() == [4, 4, 4]
    img, label = ds[5]
    assert label == 1 and img.size == (12, 10) and img.mode == "RGB"
    assert img.getpixel((0, 0)) == (11, 11, 244)


def test_list_with_transform_and_standard_helpers(image_root, tmp_path):
    root, list_file = image_root
    from focalsam.data.transforms import imagenet_test_transform, imagenet_train_transform

    train = ImageListDataset(root, list_file, imagenet_train_transform(size=16, color_jitter=True))
    x, _ = train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    test = ImageListDataset(root, list_file, imagenet_test_transform(resize=20, crop=16))
    assert test[0][0].shape == (3, 16, 16)
    lt = imagenet_lt(root, "train", list_file=list_file)
    assert lt.num_classes == 1000 and lt[0][0].shape == (3, 224, 224)
    inat_list = tmp_path / "iNaturalist18_val.txt"
    inat_list.write_text(list_file.read_text())
    inat = inaturalist2018(tmp_path / "images", "val", list_file=inat_list, transform=None)
    assert inat.num_classes == 8142 and inat[0][1] == 0
    with pytest.raises(ValueError, match="split"):
        imagenet_lt(root, "dev")


def test_default_list_location(image_root):
    root, list_file = image_root
    (root / "ImageNet_LT_train.txt").write_text(list_file.read_text())
    assert len(imagenet_lt(root, transform=None)) == 12


@pytest.mark.parametrize(
    ("text", "lineno", "match"),
    [
        ("a.png 0\nb.png\n", 2, "cannot parse 'b.png'"),
        ("a.png 0\n\nb.png x\n", 3, "cannot parse"),
        ("a.png -1\n", 1, "out of range"),
        ("a.png 0\nb.png 5\n", 2, r"label 5 is out of range: expected 0 <= label < 3"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, text, lineno, match):
    f = tmp_path / "list.txt"
    f.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        parse_image_list(f, num_classes=3)
    assert f"{f}:{lineno}:" in str(e.value)


def test_empty_or_missing_list(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        parse_image_list(f)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        parse_image_list(tmp_path / "nope.txt")


def test_missing_image_names_path(image_root):
    root, list_file = image_root
    missing = root / "train/n001/img 2.png"
    missing.unlink()
    ds = ImageListDataset(root, list_file)
    with pytest.raises(FileNotFoundError) as e:
        ds[6]
    assert str(missing) in str(e.value) and f"{list_file}:7" in str(e.value)
    with pytest.raises(FileNotFoundError, match="img 2.png"):
        ImageListDataset(root, list_file, check_files=True)


def test_corrupt_image(image_root):
    root, list_file = image_root
    (root / "train/n000/img 0.png").write_bytes(b"garbage")
    with pytest.raises(OSError, match="cannot decode image"):
        ImageListDataset(root, list_file)[0]


def test_list_long_tailed(image_root):
    root, list_file = image_root
    ds = ImageListDataset(root, list_file)
    lt = ds.long_tailed(4)
    assert lt.class_counts.tolist() == [4, 2, 1]
    assert lt[-1][1] == 2
    assert lt.paths == ds.long_tailed(4).paths


def test_image_folder_lt(tmp_path):
    for c, name in enumerate(["cat", "dog", "emu", "fox"]):
        for k in range(8):
            _png(tmp_path / name / f"{k}.png", c)
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    ds = image_folder_lt(tmp_path, imbalance_ratio=8)
    assert ds.class_names == ["cat", "dog", "emu", "fox"]
    assert ds.class_counts.tolist() == [8, 4, 2, 1]
    img, label = ds[len(ds) - 1]
    assert label == 3 and img.getpixel((0, 0))[0] == 3
    step = image_folder_lt(tmp_path, imbalance_ratio=4, profile="step", seed=1)
    assert step.class_counts.tolist() == [8, 8, 2, 2]
    with pytest.raises(ValueError, match="imbalance_ratio"):
        image_folder_lt(tmp_path, imbalance_ratio=0.1)
    with pytest.raises(ValueError, match="class 0 has 8 samples"):
        image_folder_lt(tmp_path, imbalance_ratio=2, n_max=9)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        image_folder_lt(tmp_path / "nope")
    with pytest.raises(ValueError, match="no class sub-folders"):
        image_folder_lt(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        image_folder_lt(tmp_path)


def test_array_dataset():
    images = np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3)
    ds = ArrayDataset(images, [0, 1, 1, 2], class_names=["a", "b", "c"])
    assert len(ds) == 4 and ds.class_counts.tolist() == [1, 2, 1]
    img, y = ds[1]
    assert y == 1 and np.array_equal(img, images[1])
    from focalsam.data.transforms import cifar_test_transform

    ds.transform = cifar_test_transform(mean=(0, 0, 0), std=(1, 1, 1))
    x, _ = ds[1]
    assert torch.allclose(x, torch.from_numpy(images[1]).permute(2, 0, 1) / 255.0)
    t_images, t_labels = ds.tensors()
    assert t_images.shape == (4, 2, 2, 3) and t_labels.dtype == torch.int64
    assert "ArrayDataset(n=4" in repr(ds)
    with pytest.raises(ValueError, match="uint8"):
        ArrayDataset(images.astype(np.float32), [0, 1, 1, 2])
    with pytest.raises(ValueError, match="out of range"):
        ArrayDataset(images, [0, 1, 1, 3], num_classes=3)
    with pytest.raises(ValueError, match="class names"):
        ArrayDataset(images, [0, 1, 1, 2], num_classes=3, class_names=["a"])


def test_array_dataset_long_tailed():
    labels = np.repeat(np.arange(4), 10)
    images = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1).repeat(2, 1)
    ds = ArrayDataset(images, labels)
    lt = ds.long_tailed(10)
    assert lt.class_counts.tolist() == [10, 4, 2, 1]
    assert np.array_equal(lt.labels, labels[lt.images[:, 0, 0, 0]])
    assert lt.long_tailed(1, n_max=1).class_counts.tolist() == [1, 1, 1, 1]
