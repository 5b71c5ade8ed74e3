"""A run directory's own config, and what a resume may change."""

from __future__ import annotations

import contextlib
from datetime import datetime
from pathlib import Path
from typing import Any

from focalsam.train.config import (
    ConfigError,
    TrainConfig,
    expand_key,
    flatten,
    make_config,
    to_dict,
)
from focalsam.train.limits import loads_json

#: keys a resume may change: how the run is carried out, never what it computes
#: (``train.epochs`` extends or shortens the run; the lr schedule follows the new length)
RESUMABLE = frozenset(
    {
        "train.epochs",
        "run.device",
        "run.progress",
        "run.tensorboard",
        "data.num_workers",
        "data.root",
        "data.verify_images",
        "run.dir",
    }
)


def run_config_path(run: Path) -> Path:
    """``RUN/config.yaml`` for a run directory or a checkpoint inside it."""
    if not run.exists():
        raise ConfigError(f"{run} does not exist: expected a focalsam run directory")
    folder = run if run.is_dir() else run.parent
    path = folder / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} not found: is {run} a focalsam run directory?")
    return path


def load_run_config(run: Path) -> TrainConfig:
    """The config a run was started with, as written (its preset is not re-applied)."""
    path = run_config_path(run)
    cfg = make_config(None, path, apply_preset_key=False)
    cfg.run.dir = str(path.parent)
    return cfg


def experiment_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys (outside :data:`RESUMABLE`) whose values differ: key -> (old, new)."""
    a, b = flatten(old), flatten(new)
    # a key added to the schema after the run started holds its default there
    defaults = flatten(to_dict(TrainConfig()))
    a |= {k: defaults[k] for k in set(b) - set(a) if k in defaults}
    keys = (set(a) | set(b)) - RESUMABLE
    return {k: (a.get(k), b.get(k)) for k in sorted(keys) if a.get(k) != b.get(k)}


def resume_config(run: Path, overrides: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """The run's config, with the lengths set by earlier resumes (``resumes.jsonl``) and
    the allowed ``overrides``; refuses any that would change the experiment. Returns
    the config and this resume's changes (key -> new value)."""
    cfg = load_run_config(run)
    new = {expand_key(k): v for k, v in overrides.items()}
    refused = sorted(k for k in new if k not in RESUMABLE or k == "run.dir")
    if refused:
        allowed = ", ".join(sorted(RESUMABLE - {"run.dir"}))
        raise ConfigError(
            f"--resume continues {run} as its config.yaml says; {', '.join(refused)} would "
            f"change the experiment (a resume may change only: {allowed})"
        )
    earlier: dict[str, Any] = {}
    log = Path(cfg.run.dir or ".") / "resumes.jsonl"
    if log.is_file():  # a length set by an earlier resume stays the run's length
        for line in log.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                changes = loads_json(line, str(log))["changes"]
                earlier.update({k: v for k, v in changes.items() if k == "train.epochs"})
    before = flatten(to_dict(cfg)) | earlier
    changes = {k: v for k, v in new.items() if before.get(k) != v}
    if not earlier and not new:
        return cfg, {}
    merged = make_config(
        None,
        run_config_path(run),
        {**earlier, **new, "run.dir": cfg.run.dir},
        apply_preset_key=False,
    )
    return merged, changes


def resume_record(epoch: int, step: int, changes: dict[str, Any]) -> dict[str, Any]:
    """One line of ``RUN/resumes.jsonl``."""
    return {
        "time": datetime.now().isoformat(timespec="seconds"),
        "from_epoch": epoch,
        "from_step": step,
        "changes": changes,
    }


def _last_record(log: Path) -> dict[str, Any] | None:
    """The last well-formed line of ``resumes.jsonl`` (None: no file or no such line)."""
    if not log.is_file():
        return None
    last = None
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = loads_json(line, str(log))
            last = record if isinstance(record, dict) else last
    return last


def check_resume_agrees(
    path: Path, ckpt: dict[str, Any], cfg: TrainConfig, changes: dict[str, Any]
) -> None:
    """Refuse a resume whose length (``config.yaml`` with the lengths of ``resumes.jsonl``)
    disagrees with the checkpoint's own, unless this resume sets ``epochs`` itself or the
    last resume record (made after this checkpoint) explains it."""
    config = ckpt.get("config")
    train = config.get("train") if isinstance(config, dict) else None
    saved = train.get("epochs") if isinstance(train, dict) else None
    if "train.epochs" in changes or saved is None or saved == cfg.train.epochs:
        return
    record = _last_record(path.parent / "resumes.jsonl")
    if (
        record is not None
        and (record.get("from_epoch"), record.get("from_step"))
        == (ckpt.get("epoch"), ckpt.get("step_in_epoch"))
        and isinstance(record.get("changes"), dict)
        and record["changes"].get("train.epochs") == cfg.train.epochs
    ):
        return  # resumed with a new length and stopped before the next checkpoint
    raise ConfigError(
        f"{path.parent}'s config.yaml and resumes.jsonl give train.epochs={cfg.train.epochs}, "
        f"but {path} was saved with {saved}: one was edited by hand (give epochs=N on "
        "--resume to choose the length)"
    )
