"""``data.name=hf``: a Hugging Face dataset with an image column and a ClassLabel column,
saved with ``save_to_disk`` or as a folder of parquet files (the ``hf`` extra: ``datasets``).

Splits: ``train``, and ``test`` (else ``validation``) when present, else the stratified
split of :mod:`focalsam.data.own`. Class names come from the ClassLabel. A sample's path is
``hf:<split>:<row>``, the same in the run directory's split lists.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from focalsam.data.errors import DataError

__all__ = ["HFImageDataset", "open_hf_images", "read_hf_data"]


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(
            "data.name=hf needs the datasets library: pip install 'focalsam[hf]'"
        ) from None
    return datasets


def _open(root: str | Path) -> dict[str, Any]:
    """The splits of the dataset at ``root`` by name."""
    ds = _datasets()
    root = Path(root)
    try:
        if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
            loaded = ds.load_from_disk(str(root))
        elif any(root.rglob("*.parquet")):
            loaded = ds.load_dataset("parquet", data_dir=str(root))
        else:
            raise DataError(
                f"data.root: {root} holds no dataset: expected one saved with save_to_disk "
                "(dataset_dict.json or state.json) or parquet files"
            )
    except DataError:
        raise
    except Exception as e:  # whatever datasets raises on a foreign folder
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DataError(
            f"data.root: cannot read {root} as a Hugging Face dataset: {first}"
        ) from None
    if isinstance(loaded, ds.Dataset):
        return {"train": loaded}
    return dict(loaded)


def _check_columns(splits: dict[str, Any], d: Any, root: Any) -> list[str]:
    ds = _datasets()
    if "train" not in splits:
        raise DataError(f"{root}: no 'train' split (splits: {', '.join(splits)})")
    features = splits["train"].features
    for key in ("image_column", "label_column"):
        column = getattr(d, key)
        if column not in features:
            raise DataError(
                f"{root}: no column {column!r} (data.{key}); the dataset has {', '.join(features)}"
            )
    label = features[d.label_column]
    if not isinstance(label, ds.ClassLabel):
        raise DataError(
            f"{root}: column {d.label_column!r} is {type(label).__name__}, expected a ClassLabel "
            "(its names are the class names)"
        )
    return list(label.names)


def open_hf_images(d: Any) -> dict[str, Any]:
    """The dataset's splits, each reduced to the image column (what training reads)."""
    splits = _open(d.root)
    _check_columns(splits, d, d.root)
    return {name: split.select_columns([d.image_column]) for name, split in splits.items()}


def read_hf_data(d: Any, with_split: Callable[..., Any]) -> Any:
    """:class:`~focalsam.data.own.OwnData` of an HF dataset (``with_split`` makes the split)."""
    splits = _open(d.root)
    names = _check_columns(splits, d, d.root)

    def samples(split: str) -> list[tuple[str, int]]:
        labels = np.asarray(splits[split][d.label_column], dtype=np.int64)
        return [(f"hf:{split}:{i}", int(y)) for i, y in enumerate(labels)]

    held_from = "test" if "test" in splits else "validation" if "validation" in splits else None
    held = samples(held_from) if held_from else None
    own = with_split(names, samples("train"), held, held_from or "split", d)
    own.source = {n: s.select_columns([d.image_column]) for n, s in splits.items()}
    return own


class HFImageDataset(Dataset[tuple[Any, int]]):
    """``(transform(RGB image), label)`` for samples ``("hf:<split>:<row>", label)``."""

    def __init__(
        self,
        source: dict[str, Any],
        samples: list[tuple[str, int]],
        num_classes: int,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.source = source
        self.rows = [(p.split(":")[1], int(p.split(":")[2])) for p, _ in samples]
        self.labels = np.asarray([y for _, y in samples], dtype=np.int64)
        self.num_classes = num_classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        split, row = self.rows[index]
        record = self.source[split][row]
        image = next(iter(record.values())).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])
