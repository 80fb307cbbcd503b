"""Fetch a public dataset file only when the user asked, and say where to put it otherwise."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from probekit.atomic import file_mode
from probekit.errors import UserError


def missing(what: str, expected: Path | str, how: str, url: str | None = None) -> UserError:
    """The error for data that is not on disk: what, where it is expected, how to get it."""
    where = f" (public download: {url}; or pass --download)" if url else ""
    return UserError(f"{what} not found at {expected}; {how}{where}")


def fetch(url: str, dest: Path, *, timeout: float = 60.0) -> Path:
    """Download `url` to `dest` atomically (temp file + rename); UserError when offline."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        os.fchmod(fd, file_mode())  # as readable as any file the user creates, not mkstemp's 0600
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    shutil.copyfileobj(resp, out, length=1 << 20)
            except OSError as e:  # URLError, timeouts, DNS failures are OSErrors
                raise UserError(f"could not download {url} ({e}); the machine may be offline: "
                                f"download it elsewhere and put it at {dest}") from e
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def fetch_and_extract(url: str, dest_dir: Path, archive_name: str) -> None:
    """Download an archive into `dest_dir` and unpack it there (tar / tar.gz / zip)."""
    archive = fetch(url, Path(dest_dir) / archive_name)
    try:
        try:  # "data" filter: no absolute paths, no escaping dest_dir (Python >= 3.11.4)
            shutil.unpack_archive(str(archive), str(dest_dir), filter="data")
        except TypeError:
            shutil.unpack_archive(str(archive), str(dest_dir))
    except (shutil.ReadError, OSError, EOFError) as e:
        raise UserError(f"downloaded archive {archive} is damaged ({e}); delete it and retry") from e
    archive.unlink()
