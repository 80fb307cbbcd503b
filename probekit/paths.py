"""Where probekit keeps things: the feature store and the data root.

Command-line flags win, then environment variables, then the defaults, so the same
code serves notebooks, the CLI and clusters with shared scratch space.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from probekit.errors import UserError

CACHE_ENV = "PROBEKIT_CACHE"
DATA_ENV = "PROBEKIT_DATA"


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The feature-store folder: `explicit`, else $PROBEKIT_CACHE, else ./cache."""
    return Path(explicit or os.environ.get(CACHE_ENV) or "cache").expanduser()


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The folder holding on-disk datasets: `explicit`, else $PROBEKIT_DATA, else ./data."""
    return Path(explicit or os.environ.get(DATA_ENV) or "data").expanduser()


def output_dir(path: str | os.PathLike, what: str = "output folder", *, option: str = "--out") -> Path:
    """Create folder `path` (and its parents) for writing, or a `UserError` saying why it cannot be used.

    Called before any work, so an unusable --out fails in a second instead of after the run."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file; pass a folder to {option}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probekit-write-test-{os.getpid()}"
        try:
            with open(probe, "wb") as f:  # one byte: a full disk refuses it, an empty file it may not
                f.write(b"x")
                f.flush()
                os.fsync(f.fileno())
        finally:
            if probe.exists():
                probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {what} {path} ({_reason(e)}); pass another {option}") from None
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output folder", *, option: str = "--out") -> Path:
    """Like `output_dir`, but creates nothing: the folder, or where it would be created, must be a writable folder."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file; pass a folder to {option}")
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create {what} {path}: {parent} is a file; pass another {option}")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write to {what} {path} (read-only or permission denied at {parent}); pass another {option}")
    return path


def output_file(path: str | os.PathLike, what: str = "output file", *, option: str = "--out") -> Path:
    """Check that file `path` can be written (its folder created): not a folder, on a writable disk."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; pass a file name to {option}")
    output_dir(path.parent, f"folder of {what}", option=option)
    return path


def input_file(path: str | os.PathLike, what: str, *, hint: str = "") -> Path:
    """An existing regular file to read, or a `UserError` naming it (missing, a folder)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file{'; ' + hint if hint else ''}")
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist{'; ' + hint if hint else ''}")
    return path


def _reason(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on device"
    if e.errno == errno.EROFS:
        return "read-only file system"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a part of the path is a file"
    return os.strerror(e.errno).lower() if e.errno else str(e)
