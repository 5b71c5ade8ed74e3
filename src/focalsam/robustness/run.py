"""``focalsam eval RUN --corruptions generate|DIR --out DIR``: a trained run's accuracy and
error under corruptions, per severity and per shot group, into ``corruptions.json`` and
``corruptions.png`` in a folder the user names.

Sources: ``generate`` (the 15 standard corruptions of Hendrycks & Dietterich 2019 made
from the run's in-memory test set with ``imagecorruptions``, seeded and cached), a
CIFAR-10-C style folder (``labels.npy`` and ``<corruption>.npy``, severities 1..5 stacked)
or an ImageNet-C folder (``corruption/severity/wnid/image``) for ImageNet-LT runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from focalsam.errors import DataError, InputError
from focalsam.metrics import shot_groups
from focalsam.names import normalize_name
from focalsam.train.epoch import evaluate
from focalsam.train.evaluation import LoadedRun, load_run
from focalsam.train.paths import check_output_folder
from focalsam.train.runlock import refuse_if_held
from focalsam.train.runtime import atomic_write

GROUPS = ("overall", "many", "medium", "few")


def parse_severities(text: str) -> list[int]:
    """``"1-5"`` or ``"0,3"`` -> sorted severities in 0..5 (0: the clean images).

    >>> parse_severities("1-3"), parse_severities("5,0")
    ([1, 2, 3], [0, 5])
    """
    try:
        if "-" in text:
            low, high = (int(v) for v in text.split("-", 1))
            values = list(range(low, high + 1))
        else:
            values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--severities must look like 1-5 or 1,3,5; got {text!r}") from None
    if not values or any(not 0 <= v <= 5 for v in values):
        raise InputError(f"severities must lie in 0..5 (0: clean), got {text!r}")
    return sorted(set(values))


def _cell(model: Any, batches: Iterable[Any], run: LoadedRun) -> dict[str, Any]:
    data = run.data
    metric = data.new_metric()
    result = evaluate(model, batches, metric, run.rt.autocast)
    correct, total = (t.cpu() for t in metric.counts())
    groups = shot_groups(data.class_counts, data.shot_preset)
    counts = {"overall": [int(correct.sum()), int(total.sum())]}
    for name, mask in groups.as_dict().items():
        counts[name] = [int(correct[mask].sum()), int(total[mask].sum())]
    out = {k: result[k] for k in GROUPS}
    out["error"] = 1.0 - out["overall"]
    out["counts"] = counts
    return out


def evaluate_corruptions(
    run_dir: str | Path,
    source: str,
    out: str | Path,
    *,
    severities: list[int],
    names: list[str] | None = None,
    seed: int = 0,
    checkpoint: str = "last",
    device: str | None = None,
    cache: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate a run under corruptions; writes ``out/corruptions.json`` and ``.png``."""
    from focalsam.robustness.corruptions import CORRUPTIONS

    out = check_output_folder(out, "--out", "eval")
    if cache is not None:
        check_output_folder(cache, "--cache", "eval")
    refuse_if_held(Path(run_dir) if Path(run_dir).is_dir() else Path(run_dir).parent, "eval")
    wanted = list(names) if names else list(CORRUPTIONS)
    unknown = [n for n in wanted if n not in CORRUPTIONS]
    if unknown:
        raise InputError(
            f"unknown corruption {', '.join(unknown)}; valid: {', '.join(CORRUPTIONS)}"
        )
    run = load_run(run_dir, checkpoint, device)
    try:
        cells_of, skipped, note = _plan(run, source, wanted, severities, seed, out, cache)
        model = run.model.eval()
        doc: dict[str, Any] = {
            "run_dir": str(Path(run_dir)),
            "checkpoint": str(run.checkpoint),
            "dataset": run.cfg.data.name,
            "optimizer": run.cfg.optim.name,
            "shot_preset": run.data.shot_preset,
            "source": note,
            "seed": seed,
            "severities": severities,
            "skipped": skipped,
            "cells": [],
        }
        t0 = time.perf_counter()
        for corruption, severity, batches in cells_of():
            cell = _cell(model, batches(), run)
            doc["cells"].append({"corruption": corruption, "severity": severity, **cell})
            log(f"  {corruption:<18} severity {severity}: error {100 * cell['error']:5.1f}%")
        doc["seconds"] = round(time.perf_counter() - t0, 2)
    finally:
        run.rt.close()
    doc["summary"] = _summary(doc, normalize_name(run.cfg.data.name))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "corruptions.json", json.dumps(doc, indent=1))
    from focalsam.robustness.plots import plot_corruptions

    plot_corruptions(doc, out / "corruptions.png")
    return doc


def _plan(
    run: LoadedRun,
    source: str,
    wanted: list[str],
    severities: list[int],
    seed: int,
    out: Path,
    cache: str | Path | None,
) -> tuple[Callable[[], Iterable[Any]], dict[str, str], str]:
    """What to evaluate: a generator of ``(corruption, severity, batches())``, the
    corruptions skipped with their reasons, and a line saying where images came from."""
    assert run.data.split is not None
    dataset = normalize_name(run.cfg.data.name)
    if source == "generate":
        return _generated(run, wanted, severities, seed, out, cache)
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"--corruptions {root}: no such folder (or give 'generate')")
    if (root / "labels.npy").is_file():
        return _cifar_c(run, root, wanted, severities)
    if dataset == "imagenet_lt":
        return _imagenet_c(run, root, wanted, severities)
    raise DataError(
        f"{root} holds neither labels.npy (CIFAR-10-C layout) nor is this an ImageNet-LT run "
        "(ImageNet-C layout corruption/severity/wnid/image)"
    )


def _generated(
    run: LoadedRun,
    wanted: list[str],
    severities: list[int],
    seed: int,
    out: Path,
    cache: str | Path | None,
) -> tuple[Callable[[], Iterable[Any]], dict[str, str], str]:
    from focalsam.robustness.corruptions import (
        CorruptionCache,
        available_corruptions,
        corrupted,
    )

    assert run.data.split is not None
    try:
        test = run.data.split("test")
        images = test.images
    except InputError:
        images = None
    if images is None:
        raise InputError(
            f"--corruptions generate needs an in-memory test set (digits, CIFAR); for "
            f"{run.cfg.data.name} give a folder such as ImageNet-C"
        )
    ok, skipped = available_corruptions(wanted, size=tuple(images.shape[1:3]))
    store = CorruptionCache(Path(cache) if cache else out / "cache")
    every = np.arange(len(test.labels))

    def cells() -> Iterable[Any]:
        for corruption in ok:
            for severity in severities:

                def batches(c: str = corruption, s: int = severity) -> list[Any]:
                    arrays = corrupted(images, c, s, seed=seed, cache=store)
                    return test.with_images(arrays).batches(every, 1000)

                yield corruption, severity, batches

    return cells, skipped, f"generated with imagecorruptions, seed {seed}"


def _cifar_c(
    run: LoadedRun, root: Path, wanted: list[str], severities: list[int]
) -> tuple[Callable[[], Iterable[Any]], dict[str, str], str]:
    from focalsam.robustness.cifar_c import open_cifar_c

    assert run.data.split is not None
    test = run.data.split("test")
    if test.images is None:
        raise InputError(
            f"--corruptions {root} is a CIFAR-10-C folder (labels.npy), which needs an "
            f"in-memory test set (digits, CIFAR); {run.cfg.data.name} is read from image files"
        )
    folder = open_cifar_c(root, wanted, test.labels, tuple(test.images.shape[1:]))
    every = np.arange(len(test.labels))

    def cells() -> Iterable[Any]:
        for corruption in folder.images:
            for severity in severities:

                def batches(c: str = corruption, s: int = severity) -> list[Any]:
                    if s == 0:
                        return test.batches(every, 1000)
                    return test.with_images(folder.severity(c, s)).batches(every, 1000)

                yield corruption, severity, batches

    return cells, folder.skipped, f"CIFAR-10-C layout at {root}"


def _imagenet_c(
    run: LoadedRun, root: Path, wanted: list[str], severities: list[int]
) -> tuple[Callable[[], Iterable[Any]], dict[str, str], str]:
    from torch.utils.data import DataLoader

    from focalsam.data.transforms import imagenet_test_transform
    from focalsam.robustness.imagenet_c import (
        ImageNetCDataset,
        imagenet_c_corruptions,
        imagenet_c_samples,
        wnid_labels_from_list,
    )

    cfg = run.cfg
    train_list = Path(cfg.data.train_list or Path(cfg.data.root) / "ImageNet_LT_train.txt")
    wnids = wnid_labels_from_list(train_list)
    present = [c for c in wanted if c in imagenet_c_corruptions(root)]
    skipped = {c: f"{root / c} not found" for c in wanted if c not in present}
    if not present:
        raise DataError(f"{root} holds none of the corruptions asked for ({', '.join(wanted)})")
    if 0 in severities:
        raise InputError("severity 0 (clean) is for generated corruptions; use focalsam eval")
    device, transform = run.rt.device, imagenet_test_transform()

    def cells() -> Iterable[Any]:
        for corruption in present:
            for severity in severities:
                found = imagenet_c_samples(root, corruption, severity, wnids)

                def batches(f: Any = found) -> Iterable[Any]:
                    loader = DataLoader(
                        ImageNetCDataset(f.samples, transform),
                        256,
                        num_workers=cfg.data.num_workers,
                    )
                    return ((x.to(device), y.to(device)) for x, y in loader)

                yield corruption, severity, batches

    return cells, skipped, f"ImageNet-C layout at {root}, labels from {train_list}"


def _summary(doc: dict[str, Any], dataset: str) -> dict[str, Any]:
    from focalsam.robustness.scores import corruption_error, mean_corruption_error, summarize

    corrupted_cells = {(c["corruption"], c["severity"]): c for c in doc["cells"] if c["severity"]}
    if not corrupted_cells:
        return {}
    summary = summarize(corrupted_cells)
    if dataset == "imagenet_lt":
        ce: dict[str, float] = {}
        for name in dict.fromkeys(c for c, _s in corrupted_cells):
            by_severity = {
                s: cell["error"] for (c, s), cell in corrupted_cells.items() if c == name
            }
            if sorted(by_severity) == [1, 2, 3, 4, 5]:
                ce[name] = corruption_error(by_severity, name)
        if ce:
            summary["CE"] = ce
            summary["mCE"] = mean_corruption_error(ce)
            summary["mCE_over"] = sorted(ce)
            summary["mCE_note"] = (
                "normalised by AlexNet's ImageNet-C errors (Hendrycks & Dietterich 2019); "
                "measured on the ImageNet-LT test classes"
            )
    return summary
