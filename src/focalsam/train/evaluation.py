"""``focalsam eval``: a run's weights on its test set, reading the run and writing nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from focalsam.models import create_model
from focalsam.train.checkpoint import CheckpointError, load_checkpoint
from focalsam.train.data_setup import build_data
from focalsam.train.epoch import evaluate
from focalsam.train.resume import load_run_config
from focalsam.train.runtime import Runtime


def checkpoint_of(run: Path, which: str) -> Path:
    """``last`` / ``best`` in ``run``, or a path."""
    if which in ("last", "best"):
        return (run if run.is_dir() else run.parent) / f"{which}.pt"
    return Path(which)


def evaluate_run(
    run: str | Path, checkpoint: str = "last", device: str | None = None
) -> dict[str, Any]:
    """Overall, many/medium/few and per-class test accuracy of a run's checkpoint.

    The run's ``config.yaml`` says how to build the data and the model; ``device``
    changes only where this evaluation runs. Nothing is written.
    """
    cfg = load_run_config(Path(run))
    if device is not None:
        cfg.run.device = device
    cfg.data.verify_images = False  # only the test images are read, and they were checked
    path = checkpoint_of(Path(run), checkpoint)
    rt = Runtime(cfg.run.device, cfg.run.precision)
    try:
        payload = load_checkpoint(path, map_location=rt.device)
        data = build_data(cfg, rt.device, rt.rank, rt.world)
        model = create_model(
            cfg.model.name, data.num_classes, data.in_channels, data.image_size,
            normed_linear=cfg.model.normed_linear,
        ).to(rt.device)  # fmt: skip
        try:
            model.load_state_dict(payload["model"])
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0][:200]
            raise CheckpointError(
                f"checkpoint {path} is for another model than {cfg.model.name} with "
                f"{data.num_classes} classes ({first})"
            ) from None
        from focalsam.metrics import LongTailAccuracy

        metric = LongTailAccuracy(data.num_classes, data.class_counts, preset=data.shot_preset)
        result = evaluate(model, data.test, metric, rt.autocast)
    finally:
        rt.close()
    return {
        "checkpoint": str(path),
        "epoch": payload.get("epoch"),
        "shot_preset": data.shot_preset,
        **result,
    }
