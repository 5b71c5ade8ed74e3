"""``focalsam predict RUN INPUT... --out FILE``: a trained run's classes for new images.

INPUT is images, folders (read recursively; dot-files skipped) or list files (``.txt``: one
path a line; ``.csv`` / ``.tsv`` / ``.jsonl``: a ``path`` column; relative to the list's
folder). Each image goes through the run's test transform (``Resize`` + ``CenterCrop``,
its mean/std) and the model; the output, CSV or JSONL by ``--out``'s extension, has one row
per input: ``path``, ``class``, ``index``, the top-k classes with their softmax
probabilities, and ``error`` for a file that could not be read as an image. Nothing else
is written, and never into the run.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from focalsam.errors import InputError
from focalsam.train.paths import check_output_folder

__all__ = ["PredictResult", "collect_inputs", "predict"]

LIST_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl")
OUT_SUFFIXES = (".csv", ".jsonl")


@dataclass
class PredictResult:
    """The rows written and how many inputs could not be read."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: int = 0


def _list_entries(path: Path) -> list[Path]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".txt":
        raw = [line.strip() for line in text.splitlines() if line.strip()]
    elif path.suffix.lower() == ".jsonl":
        raw = [str(json.loads(line)["path"]) for line in text.splitlines() if line.strip()]
    else:
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if path.suffix == ".tsv" else ",")
        if "path" not in (reader.fieldnames or []):
            raise InputError(f"{path}: missing column 'path' (a list of images to predict)")
        raw = [row["path"].strip() for row in reader if (row["path"] or "").strip()]
    return [Path(r) if Path(r).is_absolute() else path.parent / r for r in raw]


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Every file named by ``inputs``, in order; a missing input is refused."""
    from focalsam.data.own import OWN_IMAGE_EXTENSIONS

    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out += sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts)
            )
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix in LIST_SUFFIXES and suffix not in OWN_IMAGE_EXTENSIONS:
                out += _list_entries(path)
            else:
                out.append(path)
        else:
            raise InputError(f"input {item} does not exist: expected images, folders or list files")
    if not out:
        raise InputError(f"no files found in {', '.join(inputs)}")
    return out


def _check_out(out: Path, run: Path, force: bool) -> None:
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise InputError(f"--out {out} must end in .csv or .jsonl")
    check_output_folder(out.parent, "--out", "predict")  # never inside any run folder
    if out.exists() and not force:
        raise InputError(f"--out {out} exists: choose another file, or --force to replace it")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: the folder {out.parent} does not exist")


def _load(path: Path, preprocess: Any) -> tuple[torch.Tensor | None, str | None]:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return preprocess(img.convert("RGB")), None
    except Exception as e:  # whatever Pillow raises on a damaged or foreign file
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


def _batches(
    paths: list[Path], preprocess: Any, size: int
) -> Iterator[list[tuple[Path, Any, Any]]]:
    for lo in range(0, len(paths), size):
        yield [(p, *_load(p, preprocess)) for p in paths[lo : lo + size]]


def predict(
    run: str | Path,
    inputs: list[str],
    out: str | Path,
    *,
    top_k: int = 5,
    batch_size: int = 64,
    device: str | None = None,
    checkpoint: str = "last",
    force: bool = False,
) -> PredictResult:
    """Predict every input with ``run``'s checkpoint and write ``out`` (CSV or JSONL).

    Raises :class:`InputError` before writing anything when an input is missing, ``out``
    is not allowed, or no image could be read."""
    from focalsam.train.evaluation import load_run

    run, out = Path(run), Path(out)
    if top_k < 1 or batch_size < 1:
        raise InputError(f"--top-k and --batch-size must be >= 1, got {top_k} and {batch_size}")
    _check_out(out, run, force)
    paths = collect_inputs(inputs)
    loaded = load_run(run, checkpoint, device)
    try:
        preprocess = loaded.data.preprocess
        if preprocess is None:
            raise InputError(
                f"{run} was trained on data.name={loaded.cfg.data.name}; predict takes runs "
                "trained on images (data.name=folder, table or hf)"
            )
        names = loaded.data.class_names() if loaded.data.class_names else []
        k = min(top_k, len(names))
        model, dev = loaded.model.eval(), loaded.rt.device
        result = PredictResult()
        with torch.no_grad():
            for batch in _batches(paths, preprocess, batch_size):
                good = [x for _, x, _ in batch if x is not None]
                probs = (
                    torch.softmax(model(torch.stack(good).to(dev)).float(), dim=1).cpu()
                    if good
                    else None
                )
                i = 0
                for path, x, error in batch:
                    if x is None:
                        result.rows.append({"path": str(path), "error": error})
                        result.errors += 1
                        continue
                    assert probs is not None
                    p, idx = probs[i].topk(k)
                    i += 1
                    result.rows.append(
                        {
                            "path": str(path),
                            "class": names[int(idx[0])],
                            "index": int(idx[0]),
                            "top_k": [(names[int(j)], float(q)) for q, j in zip(p, idx)],
                        }
                    )
    finally:
        loaded.rt.close()
    if result.errors == len(paths):
        first = result.rows[0]
        raise InputError(
            f"none of the {len(paths)} input(s) could be read as an image "
            f"(first: {first['path']}: {first['error']})"
        )
    _write(out, result.rows, k)
    return result


def _write(out: Path, rows: list[dict[str, Any]], k: int) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix.lower() == ".jsonl":
        lines = []
        for row in rows:
            item = dict(row)
            if "top_k" in item:
                item["top_k"] = [{"class": c, "probability": q} for c, q in item["top_k"]]
            lines.append(json.dumps(item))
        tmp.write_text("".join(line + "\n" for line in lines))
    else:
        columns = ["path", "class", "index"]
        for j in range(1, k + 1):
            columns += [f"top{j}_class", f"top{j}_probability"]
        columns.append("error")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            for row in rows:
                flat = {c: row.get(c, "") for c in ("path", "class", "index", "error")}
                for j, (c, q) in enumerate(row.get("top_k", []), start=1):
                    flat[f"top{j}_class"], flat[f"top{j}_probability"] = c, f"{q:.6g}"
                writer.writerow(flat)
    tmp.replace(out)
