"""The fields of a focalsam checkpoint, checked before a resume or an evaluation trusts them:
types, the position (epoch, step) inside the run, and finite weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from focalsam.errors import CheckpointFieldError
from focalsam.train.checkpoint import check_finite_state

#: field -> the types it may hold
TYPES: dict[str, tuple[type, ...]] = {
    "model": (dict,),
    "stages": (list,),
    "epoch": (int,),
    "step_in_epoch": (int,),
    "best": (dict, type(None)),
    "history": (list,),
    "config": (dict,),
}


def check_fields(ckpt: dict[str, Any], path: Path) -> None:
    """Every field of :data:`TYPES` present with its type (``bool`` is not an int)."""
    for key, types in TYPES.items():
        if key not in ckpt:
            raise CheckpointFieldError(f"checkpoint {path} has no {key!r} field")
        value = ckpt[key]
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise CheckpointFieldError(
                f"checkpoint {path}: {key!r} must be {names}, found {type(value).__name__}"
            )
    if not all(isinstance(row, dict) for row in ckpt["history"]):
        raise CheckpointFieldError(f"checkpoint {path}: 'history' must be a list of rows")
    partial = ckpt.get("epoch_partial")
    if partial is not None and not _is_partial(partial):
        raise CheckpointFieldError(
            f"checkpoint {path}: 'epoch_partial' must hold 'totals' (3 numbers), 'seconds' "
            "and 'row' (a dict)"
        )
    train = ckpt["config"].get("train")
    if not isinstance(train, dict) or not isinstance(train.get("epochs"), int):
        raise CheckpointFieldError(f"checkpoint {path}: its config has no train.epochs")


def check_position(ckpt: dict[str, Any], path: Path, total_epochs: int, steps: int) -> None:
    """``0 <= epoch <= total_epochs`` and ``0 <= step_in_epoch < steps`` (the steps of
    that epoch; 0 at an epoch's end), naming the field and its range."""
    epoch, step = ckpt["epoch"], ckpt["step_in_epoch"]
    if not 0 <= epoch <= total_epochs:
        raise CheckpointFieldError(
            f"checkpoint {path}: epoch {epoch} is outside 0..{total_epochs}, this run's length "
            "(a resume cannot end a run before the epochs it has done)"
        )
    if not 0 <= step < max(steps, 1) or (epoch == total_epochs and step != 0):
        raise CheckpointFieldError(
            f"checkpoint {path}: step_in_epoch {step} is outside 0..{steps - 1} (the steps of "
            f"epoch {epoch + 1})"
        )


def check_finite_weights(ckpt: dict[str, Any], path: Path) -> None:
    """Refuse NaN/inf in the model's weights, naming the first tensors that hold them."""
    bad = check_finite_state(ckpt["model"])
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointFieldError(
            f"checkpoint {path} holds NaN/inf weights in {', '.join(bad[:3])}{more}: it is "
            "not a usable checkpoint (use an earlier one)"
        )


def _is_partial(value: Any) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("row"), dict):
        return False
    totals, seconds = value.get("totals"), value.get("seconds")
    if not isinstance(totals, list) or len(totals) != 3 or not isinstance(seconds, float):
        return False
    return all(isinstance(v, float) and v >= 0 for v in totals)
