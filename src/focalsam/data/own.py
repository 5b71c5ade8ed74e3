"""Your own long-tailed data: an image folder, a table of ``path,label`` rows, or a Hugging
Face dataset, read into one :class:`OwnData` (class names, train and test samples).

- ``folder``: torchvision's ImageFolder layout, ``ROOT/train/<class>/*`` and
  ``ROOT/test/<class>/*`` and/or ``ROOT/val/<class>/*``; class names are the training
  folders, sorted; images are ``.jpg .jpeg .png .webp .bmp`` in any case.
- ``table``: CSV, TSV or JSONL files with columns ``path`` and ``label``; a label is a class
  name or an integer; a path is relative to the file's folder, else to ``data.root``.
- ``hf``: see :mod:`focalsam.data.own_hf`.

Without a test split, :func:`stratified_split` holds out ``data.test_fraction`` of every
class (at least one image of each class with two or more). The split the run trained on is
written into the run directory (:func:`split_files`) and read back from there by ``eval``,
``predict`` and ``--resume`` (:func:`read_run_split`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from focalsam.data.errors import DataError, DataNotFoundError

__all__ = [
    "OWN_DATASETS",
    "OWN_IMAGE_EXTENSIONS",
    "OwnData",
    "check_own_data_config",
    "read_folder",
    "read_own_data",
    "read_run_split",
    "read_table",
    "split_files",
    "stratified_split",
]

OWN_DATASETS = ("folder", "table", "hf")
OWN_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CACHE_MODES = ("auto", "ram", "off")
#: the folder of the run directory that holds the split the run trained on
SPLIT_DIR = "split"
_TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")
_FOLDER_LAYOUT = "expected ROOT/train/<class>/<image> and ROOT/test/<class>/<image> (or val/)"

Sample = tuple[str, int]


@dataclass
class OwnData:
    """Class names in label order and ``(path, label)`` samples of each split.

    ``test_from``: ``"test"``, ``"val"`` (the folder or file the test split came from),
    ``"split"`` (held out of the training data) or ``"run"`` (read from a run directory).
    For a Hugging Face dataset a path is ``hf:<row index>`` into :attr:`hf_rows`'s table.
    """

    class_names: list[str]
    train: list[Sample]
    test: list[Sample]
    test_from: str
    source: Any = None  # a Hugging Face dataset's image column, when data.name=hf

    @property
    def class_counts(self) -> list[int]:
        labels = np.asarray([s[1] for s in self.train], dtype=np.int64)
        return np.bincount(labels, minlength=len(self.class_names)).tolist()


# ---------------------------------------------------------------------------- config


def check_own_data_config(d: Any) -> None:
    """The settings of ``data.name=folder|table|hf``, checked whole (files exist, keys
    belong to the kind, ranges); raises :class:`DataError` with one line."""
    kind = d.name.strip().lower()
    if not 0 < d.test_fraction < 1:
        raise DataError(f"data.test_fraction must be in (0, 1), got {d.test_fraction!r}")
    if str(d.cache).lower() in ("false", "no"):  # YAML reads a bare `off` as false
        d.cache = "off"
    if d.cache not in CACHE_MODES:
        raise DataError(f"data.cache must be one of {', '.join(CACHE_MODES)}; got {d.cache!r}")
    if not d.cache_limit_gb > 0:
        raise DataError(f"data.cache_limit_gb must be > 0, got {d.cache_limit_gb!r}")
    for key in ("mean", "std"):
        value = getattr(d, key)
        if value is not None and len(value) != 3:
            raise DataError(f"data.{key} must be 3 numbers (R, G, B), got {list(value)}")
    if d.std is not None and min(d.std) <= 0:
        raise DataError(f"data.std must be > 0, got {list(d.std)}")
    table_keys = [k for k in ("train", "test", "val", "class_names") if getattr(d, k) is not None]
    if kind != "table" and table_keys:
        raise DataError(
            f"data.{table_keys[0]} is for data.name=table; data.name is {d.name!r} "
            "(a folder is read from data.root)"
        )
    if kind == "folder":
        root = Path(d.root)
        if not (root / "train").is_dir():
            raise DataNotFoundError(
                f"data.root: {root / 'train'} is not a folder; {_FOLDER_LAYOUT}"
            )
    elif kind == "table":
        if d.train is None:
            raise DataError("data.name=table needs data.train=FILE (a CSV, TSV or JSONL table)")
        for key in ("train", "test", "val", "class_names"):
            value = getattr(d, key)
            if value is None:
                continue
            if not Path(value).is_file():
                raise DataNotFoundError(f"data.{key}: {value} is not a file")
            if key != "class_names" and Path(value).suffix.lower() not in _TABLE_SUFFIXES:
                raise DataError(
                    f"data.{key}: {value} must be a .csv, .tsv or .jsonl file of path,label rows"
                )
    elif kind == "hf" and not Path(d.root).is_dir():
        raise DataNotFoundError(
            f"data.root: {d.root} is not a folder (expected a dataset saved with "
            "save_to_disk, or a folder of parquet files)"
        )


# ---------------------------------------------------------------------------- folders


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in OWN_IMAGE_EXTENSIONS


def _class_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (recursively, dot-files skipped); a non-image is refused."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    others = [p for p in files if not _is_image(p)]
    if others:
        raise DataError(
            f"{others[0]} is not an image ({len(others)} non-image file(s) under {folder}, "
            f"refused): expected only {', '.join(OWN_IMAGE_EXTENSIONS)} files"
        )
    return files


def read_folder(root: str | Path) -> tuple[list[str], dict[str, list[Sample]]]:
    """Class names (the ``train`` sub-folders, sorted) and the samples of each split folder
    present (``train``, and ``val`` / ``test`` when they exist)."""
    root = Path(root)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataNotFoundError(f"{train_dir} is not a folder; {_FOLDER_LAYOUT}")
    names = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{train_dir} has no class folders; {_FOLDER_LAYOUT}")
    index = {n: i for i, n in enumerate(names)}
    splits: dict[str, list[Sample]] = {}
    for split in ("train", "val", "test"):
        folder = root / split
        if not folder.is_dir():
            continue
        samples: list[Sample] = []
        for class_dir in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
            if not class_dir.is_dir():
                raise DataError(f"{class_dir} is a file; {_FOLDER_LAYOUT}")
            if class_dir.name not in index:
                raise DataError(
                    f"class {class_dir.name!r} is in {folder} but not in {train_dir}: "
                    "expected every class to have training images"
                )
            files = _class_files(class_dir)
            if not files and split == "train":
                raise DataError(
                    f"class folder {class_dir} is empty: expected at least one image "
                    f"({', '.join(OWN_IMAGE_EXTENSIONS)})"
                )
            samples += [(str(p.resolve()), index[class_dir.name]) for p in files]
        splits[split] = samples
    return names, splits


# ---------------------------------------------------------------------------- tables


def _table_rows(path: Path) -> list[tuple[str, str, int]]:
    """``(path, label, line)`` of every row of a CSV / TSV / JSONL table."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} as UTF-8 text: {e}") from None
    rows: list[tuple[str, str, int]] = []
    if path.suffix.lower() == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not a JSON object ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object with path and label")
            for col in ("path", "label"):
                if col not in row:
                    raise DataError(
                        f"{path}:{lineno}: missing column {col!r} (expected path, label)"
                    )
            rows.append((str(row["path"]), str(row["label"]), lineno))
    else:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("path", "label") if c not in columns]
        if missing:
            raise DataError(
                f"{path}: missing column {', '.join(map(repr, missing))}; expected a header "
                f"with path and label, got {columns}"
            )
        for row in reader:
            row = {k.strip(): v for k, v in row.items() if k is not None}
            if not (row.get("path") or "").strip():
                continue
            rows.append((row["path"].strip(), (row["label"] or "").strip(), reader.line_num))
    if not rows:
        raise DataError(f"{path}: the table has no rows; expected path,label rows")
    return rows


def _is_int(label: str) -> bool:
    return label.lstrip("+-").isdigit()


def _resolve_path(raw: str, table: Path, root: Path | None, lineno: int) -> str:
    p = Path(raw)
    candidates = [p] if p.is_absolute() else [table.parent / p] + ([root / p] if root else [])
    for c in candidates:
        if c.is_file():
            return str(c.resolve())
    where = " or ".join(str(c) for c in candidates)
    raise DataNotFoundError(f"{table}:{lineno}: image {raw} does not exist (looked at {where})")


def read_table(
    path: str | Path,
    class_names: list[str] | None,
    root: str | Path | None = None,
) -> tuple[list[str], list[Sample]]:
    """The samples of one table and the class names (given, else from these labels: the
    sorted names, or ``0 .. max`` for integer labels)."""
    path = Path(path)
    rows = _table_rows(path)
    ints = [_is_int(r[1]) for r in rows]
    if any(ints) and not all(ints):
        a = rows[ints.index(True)]
        b = rows[ints.index(False)]
        raise DataError(
            f"{path}: labels mix integers and names (line {a[2]}: {a[1]!r}, line {b[2]}: "
            f"{b[1]!r}); expected all class names or all integers"
        )
    if class_names is None:
        if all(ints):
            top = max(int(r[1]) for r in rows)
            class_names = [str(i) for i in range(top + 1)]
        else:
            class_names = sorted({r[1] for r in rows})
    index = {n: i for i, n in enumerate(class_names)}
    base = Path(root) if root is not None else None
    samples: list[Sample] = []
    for raw, label, lineno in rows:
        if all(ints):
            value = int(label)
            if not 0 <= value < len(class_names):
                raise DataError(
                    f"{path}:{lineno}: label {value} is not a class: expected 0 <= label < "
                    f"{len(class_names)}"
                )
        elif label in index:
            value = index[label]
        else:
            raise DataError(
                f"{path}:{lineno}: label {label!r} is not in the class list "
                f"({len(class_names)} classes, e.g. {', '.join(class_names[:3])})"
            )
        samples.append((_resolve_path(raw, path, base, lineno), value))
    return class_names, samples


def _read_class_names(path: str | Path) -> list[str]:
    names = [n.strip() for n in Path(path).read_text(encoding="utf-8-sig").splitlines()]
    names = [n for n in names if n]
    if not names or len(set(names)) != len(names):
        raise DataError(f"data.class_names: {path} must list distinct class names, one a line")
    return names


# ---------------------------------------------------------------------------- splits


def stratified_split(
    labels: list[int] | np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)``: per class (in class order, one ``default_rng(seed)``), a
    permutation's first ``clip(round(n * test_fraction), 1, n - 1)`` go to test; a class
    with one image stays in train.

    >>> tr, te = stratified_split([0, 0, 0, 0, 1, 1, 2], 0.25, seed=0)
    >>> sorted(np.asarray([0, 0, 0, 0, 1, 1, 2])[te].tolist())
    [0, 1]
    """
    y = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    train: list[int] = []
    test: list[int] = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        order = members[rng.permutation(members.size)]
        k = (
            0
            if members.size < 2
            else int(np.clip(round(members.size * test_fraction), 1, members.size - 1))
        )
        test += order[:k].tolist()
        train += order[k:].tolist()
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(test, dtype=np.int64))


def _with_split(
    names: list[str], train: list[Sample], held: list[Sample] | None, held_from: str, d: Any
) -> OwnData:
    missing = [
        names[c]
        for c, n in enumerate(np.bincount([s[1] for s in train], minlength=len(names)))
        if n == 0
    ]
    if missing:
        raise DataError(
            f"class {missing[0]!r} has no training images ({len(missing)} such classes): "
            "expected every class in the training split"
        )
    if held is not None:
        return OwnData(names, train, held, held_from)
    tr, te = stratified_split([s[1] for s in train], d.test_fraction, d.split_seed)
    return OwnData(names, [train[i] for i in tr], [train[i] for i in te], "split")


def read_own_data(d: Any) -> OwnData:
    """Class names and train/test samples of ``data.name=folder|table|hf``."""
    kind = d.name.strip().lower()
    if kind == "folder":
        names, splits = read_folder(d.root)
        held_from = "test" if "test" in splits else "val" if "val" in splits else "split"
        return _with_split(names, splits["train"], splits.get(held_from), held_from, d)
    if kind == "table":
        root = Path(d.root) if d.root else None
        given = _read_class_names(d.class_names) if d.class_names else None
        names, train = read_table(d.train, given, root)
        held_file = d.test or d.val
        held = read_table(held_file, names, root)[1] if held_file else None
        return _with_split(names, train, held, "test" if d.test else "val", d)
    if kind == "hf":
        from focalsam.data.own_hf import read_hf_data

        return read_hf_data(d, _with_split)
    raise DataError(f"data.name must be one of {', '.join(OWN_DATASETS)}; got {d.name!r}")


# ---------------------------------------------------------------------------- run lists


def _csv(samples: list[Sample], names: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "label"])
    writer.writerows((p, names[y]) for p, y in samples)
    return out.getvalue()


def split_files(own: OwnData) -> dict[str, str]:
    """The run directory's copy of the split: ``split/train.csv``, ``split/test.csv``
    (``path,label`` with class names) and ``split/classes.txt`` (label order)."""
    return {
        f"{SPLIT_DIR}/classes.txt": "".join(f"{n}\n" for n in own.class_names),
        f"{SPLIT_DIR}/train.csv": _csv(own.train, own.class_names),
        f"{SPLIT_DIR}/test.csv": _csv(own.test, own.class_names),
    }


def read_run_split(run_dir: str | Path | None) -> OwnData | None:
    """The split a run directory holds (:func:`split_files`), or ``None`` if it holds none."""
    if run_dir is None:
        return None
    folder = Path(run_dir) / SPLIT_DIR
    if not (folder / "classes.txt").is_file():
        return None
    names = _read_class_names(folder / "classes.txt")
    index = {n: i for i, n in enumerate(names)}

    def read(name: str) -> list[Sample]:
        with open(folder / name, newline="", encoding="utf-8") as f:
            return [(row["path"], index[row["label"]]) for row in csv.DictReader(f)]

    return OwnData(names, read("train.csv"), read("test.csv"), "run")
