"""Checkpoints written atomically and read without unpickling arbitrary objects.

Every problem with a checkpoint file is a :class:`CheckpointError` (an
:class:`~focalsam.errors.InputError`) whose one line says which: the file is *truncated* (a
zip archive cut short), *not a checkpoint* (text, a plain pickle, a foreign zip), *unreadable*
(a directory, no permission), *corrupt* (damaged inside), *not a focalsam checkpoint* (a
torch file without our keys). A checkpoint that *could not be written* (a full disk) is a
:class:`CheckpointWriteError`, a :class:`~focalsam.errors.RunError` (exit code 1): the run
failed, not its input.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from focalsam.errors import CheckpointError, CheckpointWriteError
from focalsam.train.paths import file_mode

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "check_finite_state",
    "load_checkpoint",
    "save_checkpoint",
]

_ZIP_MAGIC = b"PK\x03\x04"
_EXPECTED = "expected a checkpoint written by torch.save (a zip archive)"


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder,
    flushed to disk, then renamed over ``path``. A crash leaves the old file intact.

    An ``OSError`` while writing (e.g. ``ENOSPC``, no space left on device) raises
    :class:`CheckpointWriteError` naming the path and the reason; the previous file is kept
    and no temporary file is left behind.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, file_mode())  # the user's umask, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        kept = "; the previous checkpoint was kept" if path.is_file() else ""
        err = CheckpointWriteError(
            f"checkpoint {path} could not be written: {reason} ({free_space(path)}){kept}"
        )
        err.errno = exc.errno
        raise err from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)
    return path


def free_space(path: Path) -> str:
    """``N MiB free`` on the disk holding ``path`` (or where that cannot be read)."""
    folder = next((p for p in [path.parent, *path.parents] if p.is_dir()), Path("."))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return f"free space at {folder} unknown"
    return f"{free / 2**20:.1f} MiB free at {folder}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0][:200] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _sniff(head: bytes) -> str:
    """What a non-zip file looks like, for the error message."""
    if head[:1] == b"\x80":
        return "a plain pickle"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # a cut-off last character is fine
    except UnicodeDecodeError:
        return "binary data"
    return "a text file" if b"\0" not in head else "binary data"


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    require: Iterable[str] = ("model",),
) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a :class:`CheckpointError` when it is
    missing, unreadable, truncated, corrupt, not a checkpoint, or a dict lacking a key of
    ``require``. Nothing but tensors and plain containers is ever unpickled."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with open(path, "rb") as f:
            head = f.read(512)
        size = path.stat().st_size
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CheckpointError(f"checkpoint {path} is unreadable: {reason}") from None
    if head[: len(_ZIP_MAGIC)] != _ZIP_MAGIC[: len(head)]:
        raise CheckpointError(
            f"checkpoint {path} is not a checkpoint (corrupt or not a focalsam checkpoint): "
            f"{_EXPECTED}, found {_sniff(head)}"
        )
    try:
        if not zipfile.is_zipfile(path):  # no end-of-archive record
            raise CheckpointError(
                f"checkpoint {path} is truncated: a zip archive cut short ({size} bytes, e.g. by "
                f"an interrupted write); {_EXPECTED}. Use an earlier checkpoint"
            )
        with zipfile.ZipFile(path) as zf:
            if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in zf.namelist()):
                raise CheckpointError(
                    f"checkpoint {path} is not a checkpoint (corrupt or not a focalsam "
                    f"checkpoint): {_EXPECTED}, found a zip archive without torch data"
                )
            damaged = zf.testzip()  # checks every member's CRC-32
    except CheckpointError:
        raise
    except Exception as exc:  # zipfile on damaged bytes: BadZipFile, NotImplementedError, ...
        raise CheckpointError(f"checkpoint {path} is corrupt: {_first_line(exc)}") from None
    if damaged is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: bad CRC-32 for {damaged}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load on damaged bytes raises many kinds; all mean "bad file"
        if "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"checkpoint {path} is not a focalsam checkpoint: it holds objects other than "
                "tensors and plain containers, which weights_only loading refuses"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a focalsam checkpoint: {_first_line(exc)}"
        ) from None
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"checkpoint {path} is not a focalsam checkpoint: expected a dict, "
            f"found {type(payload).__name__}"
        )
    missing = [key for key in require if key not in payload]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is not a focalsam checkpoint: no {', '.join(map(repr, missing))} "
            f"entry (found {sorted(map(str, payload))[:8]})"
        )
    return payload


def check_finite_state(state_dict: Mapping[str, Any]) -> list[str]:
    """Names of the floating tensors in ``state_dict`` holding NaN or inf (empty: all finite).

    ``state_dict`` is a ``state_dict`` or any nesting of mappings and lists of tensors (an optimizer
    state, a whole checkpoint payload); nested names are joined with dots (``state.0.momentum``).
    """
    tensors: list[tuple[str, torch.Tensor]] = []

    def walk(value: Any, name: str) -> None:
        if isinstance(value, torch.Tensor):
            if (value.is_floating_point() or value.is_complex()) and value.device.type != "meta":
                tensors.append((name, value))
        elif isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, f"{name}.{key}" if name else str(key))
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                walk(item, f"{name}.{i}" if name else str(i))

    walk(state_dict, "")
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, t) in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    bad: set[int] = set()
    for indices in by_device.values():  # one device-to-host sync per device
        flags = torch.stack([torch.isfinite(tensors[i][1].detach()).all() for i in indices])
        bad.update(i for i, ok in zip(indices, flags.tolist(), strict=True) if not ok)
    return [name for i, (name, _) in enumerate(tensors) if i in bad]
