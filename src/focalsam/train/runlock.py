"""One owner per run folder: an OS file lock on ``RUN/lock``, which also names the owner.

Training takes an exclusive ``flock`` on ``RUN/lock`` (and writes ``pid host`` into it)
for as long as it writes the folder; the kernel releases the lock when the process dies,
however it dies. So a folder is *held* exactly when some live process holds that lock,
and a ``lock`` file with a pid in it but no lock on it is *stale*: its writer is gone,
and the next run takes it over (saying so in one line).

The ``lock`` file is never deleted (deleting a locked file lets a third process lock a
new file of the same name while the second still holds the old one); a clean release
empties it. Its presence also marks the folder as a run folder (see
:mod:`focalsam.train.paths`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path

from focalsam.errors import RunFolderHeldError

LOCK_NAME = "lock"


def _owner(fd: int) -> str:
    """``pid N on HOST`` from an open lock file, or ``an unknown process``."""
    try:
        text = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
    except OSError:
        text = []
    if len(text) >= 2 and text[0].isdigit():
        return f"pid {text[0]} on {text[1]}"
    return "an unknown process"


def _open(path: Path, flags: int) -> int:
    """Open ``path`` without following a symlink (a link planted in a run folder must not
    redirect the lock, or its pid line, elsewhere)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RunFolderHeldError(
                f"{path} is a symbolic link; a run folder's lock file must be a plain file"
            ) from None
        raise


def holder(folder: Path, name: str = LOCK_NAME) -> str | None:
    """``pid N on HOST`` when a live process holds ``folder``'s lock, else None (no lock
    file, or a stale one). Reads only: nothing is created or changed."""
    path = Path(folder) / name
    if not path.is_file() or path.is_symlink():
        return None
    try:
        fd = _open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _owner(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def refuse_if_held(folder: Path, what: str, name: str = LOCK_NAME) -> None:
    """Raise :class:`RunFolderHeldError` when a live process holds ``folder``."""
    owner = holder(folder, name)
    if owner is not None:
        raise RunFolderHeldError(
            f"{folder} is in use by {owner}, which is still writing it: {what} waits until "
            "that process ends (stop it first)"
        )


class RunLock:
    """The exclusive lock on ``folder/lock`` held by the process that writes the folder.

    :meth:`acquire` raises :class:`RunFolderHeldError` naming the holder when a live
    process has it; it returns the previous owner (``pid N on HOST``) when it took over a
    stale lock, else None. :meth:`release` empties the file and drops the lock.
    """

    def __init__(self, folder: Path, name: str = LOCK_NAME) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> str | None:
        if self._fd is not None:
            return None
        fd = _open(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(fd)
            os.close(fd)
            raise RunFolderHeldError(
                f"{self.folder} is in use by {owner}, which is still writing it: one process "
                "writes a run folder at a time (stop that process, or choose another folder)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        previous = _owner(fd)
        stale = None if previous == "an unknown process" else previous
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return stale

    def release(self) -> None:
        """Empty the lock file and drop the lock; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor drops the flock

    def __del__(self) -> None:
        self.release()
