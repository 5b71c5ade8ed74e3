"""The runtime of a run: process group, device, mixed precision, signals, run directory
and rank-zero log sinks. It knows nothing of optimizers or models."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from focalsam.errors import InputError, RunDirError
from focalsam.train.paths import file_mode, refuse_symlink
from focalsam.train.runlock import RunLock

CSV_COLUMNS = (
    "epoch",
    "stage",
    "lr",
    "rho",
    "train_loss",
    "train_acc",
    "epoch_seconds",
    "images_per_second",
    "test_overall",
    "test_many",
    "test_medium",
    "test_few",
)


def _dist_env() -> tuple[int, int, int]:
    env = os.environ
    return (
        int(env.get("RANK", "0")),
        int(env.get("LOCAL_RANK", "0")),
        int(env.get("WORLD_SIZE", "1")),
    )


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this rank's GPU when CUDA is available, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"device must be auto, cpu, cuda or cuda:N; got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"run.device={name!r} asked for, but CUDA is not available here")
    if device.type not in ("cpu", "cuda", "meta"):
        backend = getattr(torch, device.type, None) or getattr(torch.backends, device.type, None)
        available = getattr(backend, "is_available", lambda: False)
        if not available():
            raise InputError(
                f"run.device={name!r} asked for, but {device.type} is not available here "
                "(use auto, cpu or cuda)"
            )
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


class Runtime:
    """Process group (started here under torchrun, ended by :meth:`close`), device,
    autocast/GradScaler and stop requests (SIGINT/SIGTERM) for one process."""

    def __init__(self, device: str = "auto", precision: str = "fp32") -> None:
        self.rank, self.local_rank, self.world = _dist_env()
        self.is_main = self.rank == 0
        self.precision = precision
        self.owns_process_group = False
        self.stop_reason: str | None = None
        if self.world > 1 and not dist.is_initialized():
            wants_cuda = device != "cpu" and torch.cuda.is_available()
            dist.init_process_group("nccl" if wants_cuda else "gloo")
            self.owns_process_group = True
        self.device = resolve_device(device, self.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if precision == "auto":  # bf16 autocast where the GPU has it; never fp16 weights
            bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
            self.precision = "bf16" if bf16 else "fp32"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def make_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM request a stop (the current step finishes) while inside."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for sig in old:
            signal.signal(sig, lambda s, _f: self.request_stop(signal.Signals(s).name))
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def close(self, *, clean: bool = True) -> None:
        """End the process group this runtime started; safe to call twice. ``clean``:
        a barrier first, so no rank tears down while a peer has a collective in
        flight (after a failure a dead peer would leave it waiting: pass False)."""
        if self.owns_process_group and dist.is_initialized():
            if clean:
                dist.barrier()
            dist.destroy_process_group()
        self.owns_process_group = False

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(clean=exc_type is None)


def atomic_write(path: Path, data: str) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, file_mode())  # mkstemp's 0600 would hide the file from others
            with os.fdopen(fd, "w") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise RunDirError(f"cannot write {path}: {exc.strerror or exc}") from None


class RunDir:
    """A run's folder; one live process owns it (:class:`~focalsam.train.runlock.RunLock`,
    taken by :meth:`create` and dropped by :meth:`close`). Writes happen on rank 0 only."""

    def __init__(self, path: Path, *, is_main: bool = True) -> None:
        self.path = path
        self.is_main = is_main
        self._tb: Any = None
        self.lock = RunLock(path)

    def check_new(self) -> None:
        """Refuse a folder that already holds files (another run's, or anything)."""
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise RunDirError(
                f"run directory {self.path} already exists and is not empty: continue that run "
                f"with --resume {self.path}, or choose another run.dir"
            )
        parent = next((p for p in [self.path, *self.path.parents] if p.exists()), Path("."))
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise RunDirError(f"run directory {self.path} is not writable (at {parent})")

    def create(self) -> None:
        """Create the folder (if new) and take its lock, before anything is written in it;
        a stale lock (its process gone) is taken over with a one-line warning."""
        if not self.is_main:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            stale = self.lock.acquire()
        except OSError as exc:
            raise RunDirError(
                f"cannot create run directory {self.path}: {exc.strerror or exc}"
            ) from None
        if stale is not None:
            warnings.warn(
                f"took over the stale lock of {self.path} left by {stale} (that process is gone)",
                stacklevel=2,
            )

    def write_text(self, name: str, text: str) -> None:
        if self.is_main:
            atomic_write(self.path / name, text)

    def append_line(self, name: str, line: str) -> None:
        if not self.is_main:
            return
        refuse_symlink(self.path / name, "training")
        try:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
            with os.fdopen(os.open(self.path / name, flags, 0o666), "a") as f:
                f.write(line.rstrip("\n") + "\n")
        except OSError as exc:
            raise RunDirError(f"cannot write {self.path / name}: {exc.strerror or exc}") from None

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """(Re)write ``metrics.jsonl`` and ``metrics.csv`` from the run's history, so the
        files always match the checkpoint they follow."""
        if not self.is_main:
            return
        self.write_text("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        self.write_text("metrics.csv", buf.getvalue())

    def tensorboard(self, row: dict[str, Any], enabled: bool) -> None:
        if not (self.is_main and enabled):
            return
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return
            refuse_symlink(self.path / "tensorboard", "training")
            self._tb = SummaryWriter(str(self.path / "tensorboard"))
        for key, value in row.items():
            if isinstance(value, int | float) and key != "epoch":
                self._tb.add_scalar(key, value, row["epoch"])
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self.lock.release()
