"""Image lists and image files: parse errors, missing classes, up-front checks, worker errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from focalsam.data import (
    DataError,
    DataNotFoundError,
    ImageDecodeError,
    ImageListDataset,
    image_folder_lt,
    imagenet_lt,
    inaturalist2018,
    parse_image_list,
    verify_images,
)

Image = pytest.importorskip("PIL.Image")


def _one_line(err: BaseException) -> str:
    msg = str(err)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def _jpeg(size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture()
def listed(tmp_path):
    """8 JPEGs of 2 classes under ``root`` and the list naming them (line k+1: image k)."""
    root = tmp_path / "root"
    lines = []
    for k in range(8):
        rel = f"c{k % 2}/img {k}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_jpeg(seed=k))
        lines.append(f"{rel} {k % 2}")
    list_file = tmp_path / "train.txt"
    list_file.write_text("\n".join(lines) + "\n")
    return root, list_file


# ---------------------------------------------------------------- list files
@pytest.mark.parametrize(
    ("text", "lineno", "match"),
    [
        ("a.png 0\nb.png\n", 2, "cannot parse 'b.png'"),
        ("a.png 0\nb.png 1.5\n", 2, "integer label"),
        ("a.png 0\nb.png 0x1\n", 2, "cannot parse"),
        ("a.png 0\r\n\r\nb.png one\r\n", 3, "cannot parse"),
        ("a.png 1\nb.png -2\n", 2, "label -2 is out of range: expected 0 <= label < 3"),
        ("a.png 0\nb.png 7\n", 2, "label 7 is out of range: expected 0 <= label < 3"),
    ],
)
def test_bad_lines_are_data_errors_with_file_and_line(tmp_path, text, lineno, match):
    f = tmp_path / "list.txt"
    f.write_text(text, newline="")
    with pytest.raises(DataError, match=match) as e:
        parse_image_list(f, num_classes=3)
    assert _one_line(e.value).startswith(f"{f}:{lineno}: ")


def test_unreadable_lists(tmp_path):
    f = tmp_path / "list.txt"
    f.write_bytes(b"a.png 0\nb\xff\xfe.png 1\n")
    with pytest.raises(DataError, match=r"list\.txt:2: not UTF-8"):
        parse_image_list(f)
    f.write_text("\n  \n")
    with pytest.raises(DataError, match="empty"):
        parse_image_list(f)
    with pytest.raises(DataNotFoundError, match="nope.txt") as e:
        parse_image_list(tmp_path / "nope.txt")
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(DataError, match="not a file"):
        parse_image_list(tmp_path)
    with pytest.raises(DataError, match="split"):
        imagenet_lt(tmp_path, "dev", list_file=f)


def test_list_missing_classes(tmp_path, listed):
    root, _ = listed
    f = tmp_path / "gaps.txt"
    f.write_text("c0/img 0.jpg 0\nc1/img 1.jpg 3\nc0/img 2.jpg 5\n")
    with pytest.raises(DataError) as e:
        ImageListDataset(root, f)
    msg = _one_line(e.value)
    assert str(f) in msg and "3 of classes 0..5 have no images (classes 1, 2, 4)" in msg
    # accepted when asked; ``True`` checks every class up to num_classes
    assert ImageListDataset(root, f, require_all_classes=False).num_classes == 6
    with pytest.raises(DataError, match=r"classes 0\.\.6 .*classes 1, 2, 4, 6\)"):
        ImageListDataset(root, f, num_classes=7, require_all_classes=True)
    many = tmp_path / "many.txt"
    many.write_text("c0/img 0.jpg 0\nc0/img 2.jpg 30\n")
    with pytest.raises(DataError, match=r"\(classes 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, \.\.\.\)"):
        ImageListDataset(root, many)
    # the standard readers: the train split checks, the others do not
    with pytest.raises(DataError, match="have no images"):
        imagenet_lt(root, "train", list_file=f, transform=None)
    assert len(imagenet_lt(root, "val", list_file=f, transform=None)) == 3
    with pytest.raises(DataError, match=r"8139 of classes 0\.\.8141"):
        inaturalist2018(root, "train", list_file=f, transform=None, require_all_classes=True)


def test_subset_skips_the_class_check(listed):
    root, list_file = listed
    ds = ImageListDataset(root, list_file)
    assert ds.subset([0, 2]).class_counts.tolist() == [2, 0]  # keeps its classes, no check


# ---------------------------------------------------------------- verify_images
def test_verify_images_reports_missing_and_undecodable(listed):
    root, list_file = listed
    ds = ImageListDataset(root, list_file)
    assert verify_images(ds) is None and ds.verify_images(full=True) is None
    (root / "c1/img 3.jpg").unlink()
    (root / "c1/img 5.jpg").unlink()
    (root / "c0/img 4.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageDecodeError) as e:
        verify_images(ds)
    msg = _one_line(e.value)
    assert isinstance(e.value, DataError) and isinstance(e.value, OSError)
    assert f"3 of 8 images listed in {list_file}" in msg
    assert "2 missing" in msg and "1 undecodable" in msg
    assert f"{root / 'c1/img 3.jpg'} (listed at {list_file}:4)" in msg
    assert f"{root / 'c0/img 4.jpg'} (listed at {list_file}:5): UnidentifiedImageError" in msg
    assert len(e.value.missing) == 2 and len(e.value.undecodable) == 1
    # missing files only (decode=False skips decoding): a FileNotFoundError
    with pytest.raises(DataNotFoundError, match="2 of 8 images") as e2:
        verify_images(ds, decode=False)
    assert isinstance(e2.value, FileNotFoundError)
    with pytest.raises(DataNotFoundError, match="img 3.jpg"):
        ImageListDataset(root, list_file, check_files=True)


def test_verify_images_max_report_and_full_decode(listed):
    root, list_file = listed
    ds = ImageListDataset(root, list_file)
    for k in range(8):
        (root / f"c{k % 2}/img {k}.jpg").unlink()
    with pytest.raises(DataNotFoundError) as e:
        verify_images(ds, max_report=2)
    msg = _one_line(e.value)
    assert "8 missing" in msg and msg.count("listed at") == 2 and msg.endswith(", ...)")
    # a JPEG cut short passes Image.verify() (header only) but not a full decode
    for k in range(8):
        data = _jpeg(seed=k)
        (root / f"c{k % 2}/img {k}.jpg").write_bytes(data[: len(data) * 3 // 4] if k == 6 else data)
    verify_images(ds)
    with pytest.raises(ImageDecodeError, match=r"1 of 8 .*img 6\.jpg.*truncated"):
        verify_images(ds, full=True, workers=1)


# ---------------------------------------------------------------- loading
def test_bad_image_at_load_time(listed):
    root, list_file = listed
    ds = ImageListDataset(root, list_file)
    (root / "c0/img 2.jpg").unlink()
    data = _jpeg(seed=4)
    (root / "c0/img 4.jpg").write_bytes(data[: len(data) // 2])
    (root / "c0/img 6.jpg").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(DataNotFoundError, match=f"listed at {list_file}:3") as e:
        ds[2]
    assert str(root / "c0/img 2.jpg") in _one_line(e.value)
    for index in (4, 6):
        with pytest.raises(ImageDecodeError, match=f"cannot decode image .*img {index}.jpg") as e:
            ds[index]
        assert isinstance(e.value, OSError) and f"{list_file}:{index + 1}" in _one_line(e.value)


@pytest.mark.parametrize(
    ("index", "kind"), [(3, DataNotFoundError), (5, ImageDecodeError)], ids=["missing", "corrupt"]
)
def test_worker_errors_keep_their_type_and_one_line(listed, index, kind):
    root, list_file = listed
    ds = ImageListDataset(root, list_file)
    path = root / f"c{index % 2}/img {index}.jpg"
    if kind is DataNotFoundError:
        path.unlink()
    else:
        path.write_bytes(b"garbage")
    loader = DataLoader(ds, batch_size=None, num_workers=2)  # PIL images, no collation
    with pytest.raises(kind) as e:
        for _ in loader:
            pass
    msg = _one_line(e.value)
    assert isinstance(e.value, DataError)
    assert str(path) in msg and f"{list_file}:{index + 1}" in msg
    assert msg.endswith(f"(in DataLoader worker process {index % 2})")
    assert e.value.worker_traceback and "Traceback" in e.value.worker_traceback


def test_message_kept_when_not_from_a_worker():
    err = ImageDecodeError("Caught something odd")
    assert str(err) == "Caught something odd" and err.worker_traceback is None
    assert str(DataNotFoundError("x")) == "x"


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="nope"):
        image_folder_lt(tmp_path / "nope")
    with pytest.raises(DataError, match="no class sub-folders"):
        image_folder_lt(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        image_folder_lt(tmp_path)
    with pytest.raises(DataError, match=r"\(relative_path, int label\) pairs"):
        ImageListDataset(tmp_path, samples=[("a.png", "cat")])  # type: ignore[list-item]
    with pytest.raises(DataError, match="exactly one"):
        ImageListDataset(tmp_path)


def test_errors_are_one_line_for_paths_with_spaces(tmp_path: Path):
    f = tmp_path / "my list.txt"
    f.write_text("a b c\n")
    with pytest.raises(DataError) as e:
        parse_image_list(f)
    assert _one_line(e.value).startswith(f"{f}:1: cannot parse 'a b c'")
