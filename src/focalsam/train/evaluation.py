"""Reading a finished run back (``focalsam eval``, ``focalsam analyze``): its config,
data and weights, with nothing written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from focalsam.train.checkpoint import CheckpointError, load_checkpoint
from focalsam.train.checkpoint_fields import check_finite_weights
from focalsam.train.config import TrainConfig
from focalsam.train.data_setup import TrainData, build_data
from focalsam.train.epoch import evaluate
from focalsam.train.model_setup import build_model, load_model_state
from focalsam.train.resume import load_run_config
from focalsam.train.runtime import Runtime


def checkpoint_of(run: Path, which: str) -> Path:
    """``last`` / ``best`` in ``run``, or a path."""
    if which in ("last", "best"):
        return (run if run.is_dir() else run.parent) / f"{which}.pt"
    return Path(which)


@dataclass
class LoadedRun:
    """A run as its config builds it, with the checkpoint's weights loaded."""

    cfg: TrainConfig
    model: nn.Module
    data: TrainData
    checkpoint: Path
    payload: dict[str, Any]
    rt: Runtime


def load_run(run: str | Path, checkpoint: str = "last", device: str | None = None) -> LoadedRun:
    """Build a run's data and model from its ``config.yaml`` and load a checkpoint;
    ``device`` changes only where this happens. Reads, never writes. The caller
    closes ``.rt`` (one process: a no-op)."""
    cfg = load_run_config(Path(run))
    if device is not None:
        cfg.run.device = device
    cfg.data.verify_images = False  # only reading; the images were checked at training
    cfg.data.cache = "off"  # own data: the training images are not decoded to be read back
    path = checkpoint_of(Path(run), checkpoint)
    rt = Runtime(cfg.run.device, cfg.run.precision)
    try:
        payload = load_checkpoint(path, map_location=rt.device)
        if isinstance(payload.get("model"), dict):
            check_finite_weights(payload, path)
        data = build_data(cfg, rt.device, rt.rank, rt.world)
        with torch.random.fork_rng(devices=[]):  # as training built it: a randomly
            torch.manual_seed(cfg.run.seed)  # initialised frozen backbone is not saved
            model = build_model(cfg, data, rt.device, text_init=False)
        try:
            load_model_state(model, payload, f"checkpoint {path}")
        except CheckpointError as exc:
            raise CheckpointError(
                f"{exc} (the run's model is {cfg.model.name} with {data.num_classes} classes)"
            ) from None
    except BaseException:
        rt.close(clean=False)
        raise
    return LoadedRun(cfg, model, data, path, payload, rt)


def evaluate_run(
    run: str | Path, checkpoint: str = "last", device: str | None = None
) -> dict[str, Any]:
    """Overall, many/medium/few and per-class test accuracy of a run's checkpoint."""
    loaded = load_run(run, checkpoint, device)
    try:
        data = loaded.data
        result = evaluate(loaded.model, data.test, data.new_metric(), loaded.rt.autocast)
    finally:
        loaded.rt.close()
    return {
        "checkpoint": str(loaded.checkpoint),
        "epoch": loaded.payload.get("epoch"),
        "shot_preset": data.shot_preset,
        "class_counts": data.class_counts,
        **result,
    }
