"""Build every part of a run from its config, checked before anything is written;
the checkpoint payload and its restore."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from focalsam.losses import LongTailLoss
from focalsam.optim import canonical_name
from focalsam.train.checkpoint import CheckpointError, check_finite_state
from focalsam.train.checkpoint_fields import check_fields, check_finite_weights, check_position
from focalsam.train.config import ConfigError, TrainConfig, config_yaml, to_dict
from focalsam.train.data_setup import TrainData, build_data
from focalsam.train.limits import check_batch_fits, check_config_limits
from focalsam.train.model_setup import (
    build_model,
    describe_counts,
    is_clip,
    load_model_state,
    model_state,
    parameter_counts,
)
from focalsam.train.paths import refuse_symlink
from focalsam.train.resume import experiment_changes, resume_record
from focalsam.train.runlock import refuse_if_held
from focalsam.train.runtime import RunDir, Runtime
from focalsam.train.stages import build_stages

FORMAT = "focalsam-checkpoint-2"


@dataclass
class RunParts:
    """What a run is made of; the trainer only orchestrates these."""

    cfg: TrainConfig
    rt: Runtime
    run_dir: RunDir
    data: TrainData
    model: nn.Module
    train_model: nn.Module
    loss_fn: LongTailLoss
    stages: list[Any]
    method: str
    counts: dict[str, Any] = field(default_factory=dict)
    _balanced: Any = field(default=None, repr=False)

    def loader(self, name: str, stage_epoch: int) -> Any:
        """The stage's loader, shuffled for its epoch."""
        if name == "balanced":
            if self._balanced is None:
                assert self.data.make_balanced is not None
                self._balanced = self.data.make_balanced()
            loader = self._balanced
        else:
            loader = self.data.train
        loader.set_epoch(stage_epoch)
        return loader

    def stage_at(self, epoch: int) -> tuple[Any, int]:
        """The stage of 0-based ``epoch`` and the epoch within it."""
        for stage in self.stages:
            if epoch < stage.epochs:
                return stage, epoch
            epoch -= stage.epochs
        raise IndexError(epoch)

    def open_run_dir(
        self, resumed: tuple[int, int, list[dict[str, Any]]] | None, changes: dict[str, Any]
    ) -> None:
        """Create the run directory with its config; a resume instead rewrites the metrics
        from the checkpoint's history and records its changes in ``resumes.jsonl``."""
        for name in ("resumes.jsonl", "tensorboard"):  # never write through a planted link
            refuse_symlink(self.run_dir.path / name, "training")
        self.run_dir.create()
        if resumed is None:
            self.run_dir.write_text("config.yaml", config_yaml(self.cfg))
            self.run_dir.write_text("model.json", json.dumps(self.counts, indent=2))
            for name, text in self.data.run_files.items():  # e.g. the split of own data
                if self.rt.is_main:
                    (self.run_dir.path / name).parent.mkdir(parents=True, exist_ok=True)
                self.run_dir.write_text(name, text)
            return
        epoch, step, history = resumed
        self.run_dir.write_metrics(history)
        self.run_dir.append_line("resumes.jsonl", json.dumps(resume_record(epoch, step, changes)))

    def eval_epochs(self) -> set[int]:
        """1-based epochs always evaluated: the end of every stage."""
        ends, total = set(), 0
        for stage in self.stages:
            total += stage.epochs
            ends.add(total)
        return ends

    def non_finite_weights(self) -> list[str]:
        return check_finite_state(self.model.state_dict())

    def kept_checkpoint(self) -> str:
        last = self.run_dir.path / "last.pt"
        if last.exists():
            return f"The last good checkpoint {last} was kept."
        return "No checkpoint was written."

    @contextlib.contextmanager
    def progress(self, epoch: int, total_epochs: int, steps: int, initial: int) -> Iterator[Any]:
        if not (self.rt.is_main and self.cfg.run.progress):
            yield None
            return
        from tqdm.auto import tqdm

        bar = tqdm(
            total=steps,
            initial=initial,
            leave=False,
            dynamic_ncols=True,
            desc=f"epoch {epoch + 1}/{total_epochs}",
        )
        try:
            yield bar
        finally:
            bar.close()

    def _ratio(self) -> float:
        """``data.imbalance_ratio``, or for own data the training split's n_max / n_min."""
        if not self.data.run_files:
            return float(self.cfg.data.imbalance_ratio)
        counts = [c for c in self.data.class_counts if c > 0]
        return max(counts) / min(counts)

    def describe(self, epoch: int, step: int) -> str:
        cfg, d = self.cfg, self.cfg.data
        if epoch or step:
            return f"resuming {self.run_dir.path} at epoch {epoch + 1}, step {step + 1}"
        later = sum(s.epochs for s in self.stages[1:])
        return (
            f"run {self.run_dir.path}: {d.name} (ratio {self._ratio():g}), {cfg.model.name}, "
            f"{self.method}/{cfg.optim.base}, loss {cfg.loss.name}, {cfg.train.epochs} epochs"
            + (f" + {later} of stage 2" if later else "")
            + f" on {self.rt.device}"
            + (f" x {self.rt.world} processes" if self.rt.world > 1 else "")
            + f"; {describe_counts(self.counts)}"
        )


def default_run_dir(cfg: TrainConfig) -> Path:
    """``runs/NAME-METHOD-TIME``, with ``-2``, ``-3``, ... when that folder exists."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{cfg.preset or cfg.data.name}-{canonical_name(cfg.optim.name)}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def build_run(
    cfg: TrainConfig,
    rt: Runtime,
    *,
    resume: str | Path | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> RunParts:
    """Every part of the run; raises before anything is written if any input is bad."""
    check_config_limits(cfg, clip=is_clip(cfg))
    if resume is not None:
        folder = Path(resume) if Path(resume).is_dir() else Path(resume).parent
        cfg.run.dir = str(folder)
        assert checkpoint is not None
        _check_same_experiment(checkpoint, cfg, folder)
        check_finite_weights(checkpoint, folder / "last.pt")
        refuse_if_held(folder, "--resume")
        run_dir = RunDir(folder, is_main=rt.is_main)
    else:
        path = Path(cfg.run.dir) if cfg.run.dir else rt.broadcast(default_run_dir(cfg))
        run_dir = RunDir(path, is_main=rt.is_main)
        run_dir.check_new()
        cfg.run.dir = str(path)
    data = build_data(cfg, rt.device, rt.rank, rt.world)
    stage_2 = canonical_name(cfg.optim.name) == "ccsam"
    what = "the training set" + (" (also CC-SAM's stage 2 batches)" if stage_2 else "")
    check_batch_fits(cfg.train.batch_size, int(sum(data.class_counts)), rt.world, what)
    steps = len(data.train)
    if steps == 0:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} leaves 0 steps per epoch: each of the "
            f"{rt.world} process(es) has fewer training images than one batch"
        )
    torch.manual_seed(cfg.run.seed)
    # a resumed model's head comes from its checkpoint: no text features needed
    model = build_model(cfg, data, rt.device, text_init=resume is None)
    train_model: nn.Module = model
    if rt.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [rt.device.index] if rt.device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=ids)
    if cfg.run.compile:  # the same parameters, traced; checkpoints hold the plain module's
        import torch._functorch.config as functorch_config

        # a SAM-family step's first backward may free the graph the next one reuses
        functorch_config.donated_buffer = False
        train_model = torch.compile(train_model, mode=cfg.run.compile_mode)  # type: ignore[assignment]
    loss_fn = cfg.loss.build(data.class_counts).to(rt.device)
    stages = build_stages(cfg, model, train_model, loss_fn, data.class_counts, steps, rt)
    method = canonical_name(cfg.optim.name)
    counts = parameter_counts(model)
    return RunParts(cfg, rt, run_dir, data, model, train_model, loss_fn, stages, method, counts)


def _check_same_experiment(ckpt: dict[str, Any], cfg: TrainConfig, folder: Path) -> None:
    if ckpt.get("format") != FORMAT or not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(
            f"{folder / 'last.pt'} was not written by this version of focalsam "
            f"(format {ckpt.get('format')!r}, expected {FORMAT!r})"
        )
    check_fields(ckpt, folder / "last.pt")
    changed = experiment_changes(ckpt["config"], to_dict(cfg))
    if changed:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changed.items())[:4])
        raise ConfigError(
            f"the config differs from the one {folder / 'last.pt'} was made with ({shown}); "
            "a run resumes only as it was started: start a new run for a new experiment"
        )


def to_payload(trainer: Any) -> dict[str, Any]:
    """The checkpoint: weights, every stage's optimizer state, position, history, config."""
    return {
        "format": FORMAT,
        **model_state(trainer.model),
        "stages": [s.state_dict() for s in trainer.parts.stages],
        "epoch": trainer.epoch,
        "step_in_epoch": trainer.step_in_epoch,
        "best": trainer.best,
        "history": trainer.history,
        "epoch_partial": trainer.epoch_partial,
        "config": to_dict(trainer.cfg),
    }


def restore(trainer: Any, ckpt: dict[str, Any]) -> None:
    """Load ``ckpt`` into the trainer's parts; the lr schedule is replayed when the run's
    length changed on resume (it follows the new length from the current step)."""
    stages, p = trainer.parts.stages, trainer.parts
    total = sum(s.epochs for s in stages)
    epoch = ckpt["epoch"]
    steps = (
        len(p.loader(p.stage_at(epoch)[0].loader_name, p.stage_at(epoch)[1]))
        if epoch < total
        else 0
    )
    check_position(ckpt, p.run_dir.path / "last.pt", total, steps)
    same_length = ckpt["config"]["train"]["epochs"] == trainer.cfg.train.epochs
    try:
        load_model_state(trainer.model, ckpt, "the checkpoint")
        if len(ckpt["stages"]) != len(stages):
            raise ValueError(f"{len(ckpt['stages'])} stages saved, {len(stages)} in this run")
        for stage, state in zip(stages, ckpt["stages"]):
            stage.load_state_dict(state, keep_schedule=same_length)
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"checkpoint does not match this run's model or optimizer: {str(exc)[:300]}"
        ) from None
    trainer.epoch = int(ckpt["epoch"])
    trainer.step_in_epoch = int(ckpt.get("step_in_epoch", 0))
    trainer.best = ckpt.get("best")
    trainer.history = list(ckpt.get("history", []))
    trainer.epoch_partial = ckpt.get("epoch_partial") if trainer.step_in_epoch else None
    if not same_length:
        first = stages[0]
        done = min(trainer.epoch, first.epochs) * len(trainer.parts.data.train)
        if trainer.epoch < first.epochs:
            done += trainer.step_in_epoch
        first.fast_forward(done)
