"""Read-only is a rule of the path: commands that read runs (``eval``, ``analyze``,
``compare``, ``predict``, ``export``) never write inside a run folder, and files are
created with the user's umask.

A *run folder* holds the ``lock`` file training writes first (see
:mod:`focalsam.train.runlock`), or a run's ``config.yaml`` beside its ``last.pt``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from focalsam.errors import OutputPathError
from focalsam.train.runlock import LOCK_NAME


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` is a run folder (its lock marker, or config.yaml with last.pt)."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / LOCK_NAME).is_file():
        return True
    return (path / "config.yaml").is_file() and (path / "last.pt").is_file()


def enclosing_run_folder(path: str | Path) -> Path | None:
    """The run folder that ``path`` is, or lies inside (symlinks resolved), else None."""
    real = Path(os.path.realpath(Path(path).expanduser()))
    for folder in (real, *real.parents):
        if is_run_folder(folder):
            return folder
    return None


def check_output_folder(path: str | Path, flag: str, command: str) -> Path:
    """Refuse, in one line, an output folder of a read-only ``command`` that lies inside a
    run folder, that is a file, whose nearest existing parent is a file, that is not
    writable, or whose name is too long. Creates nothing; returns the path."""
    path = Path(path)
    check_name_lengths(path, flag)
    run = enclosing_run_folder(path)
    if run is not None:
        raise OutputPathError(
            f"{flag} {path} is inside the run folder {run}: {command} never writes into a "
            "run; choose a folder outside it"
        )
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{flag} {path} exists and is not a folder")
    parent = next((p for p in [path, *path.absolute().parents] if p.exists()), Path("/"))
    if not parent.is_dir():
        raise OutputPathError(f"{flag} {path} cannot be a folder: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {path} is not writable (no permission at {parent})")
    return path


def check_name_lengths(path: Path, flag: str) -> None:
    """Refuse a path whose name, or one of whose parts, is over the system's limit."""
    anchor = next((p for p in path.absolute().parents if p.exists()), Path("/"))
    try:
        name_max = os.pathconf(anchor, "PC_NAME_MAX")
        path_max = os.pathconf(anchor, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    long_part = next((p for p in path.parts if len(os.fsencode(p)) > name_max), None)
    if long_part is not None:
        raise OutputPathError(
            f"{flag}: a part of the path is {len(os.fsencode(long_part))} bytes long, over "
            f"the system's limit of {name_max} ({os.strerror(errno.ENAMETOOLONG)})"
        )
    if len(os.fsencode(str(path.absolute()))) >= path_max:
        raise OutputPathError(
            f"{flag}: the path is over the system's limit of {path_max} bytes "
            f"({os.strerror(errno.ENAMETOOLONG)})"
        )


def file_mode() -> int:
    """The mode a new file gets under the process's umask (``0o666 & ~umask``): files made
    through a temporary file and a rename keep it, so a colleague can read a shared run."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def refuse_symlink(path: Path, what: str) -> None:
    """Refuse to write through ``path`` when it is a symbolic link (a link planted in a run
    folder must not redirect a write out of it)."""
    if path.is_symlink():
        raise OutputPathError(
            f"{path} is a symbolic link (to {os.readlink(path)}); {what} writes only plain "
            "files inside the run folder: remove the link"
        )
