"""The run folder and its per-evaluation JSON Lines record, shared by heads and finetune.

A run folder holds:

- ``config.json``: the resolved configuration, written when the run starts;
- ``log.jsonl``: one self-describing record per head per evaluation;
- ``summary.json``: written last, atomically; a run is complete only when it exists
  and says ``"status": "complete"``. A killed run has a log but no complete summary,
  so it is never mistaken for a finished one;
- ``.probekit-run``: the folder's owner mark and lock (see below).

Ownership: a folder is written only by the run that holds the ``flock`` on its
``.probekit-run`` (which names that run's pid, host, command and start time, so a second
writer is refused with whose run it is; the lock dies with its process). A folder that holds
files probekit did not write is refused unless it is empty, and so is one inside the feature
store. ``overwrite=True`` builds the new run in a hidden sibling folder and swaps it in
only when it finishes (one atomic rename exchange on Linux), so the old run's files are all
gone, or, if the new run fails, all still there.

Record fields (`RECORD_FIELDS`): ``step``, ``epoch``, ``head`` (a stable id such as
``"lr=0.001,seed=0"``), ``loss``, ``acc_id``, ``acc_ood`` (``{ood_set: accuracy}``),
``er`` (``{ood_set: effective robustness}``, present when a baseline is set), plus the
head's own hyper-parameters (``lr``, ``seed``, ``l2`` ...) and mode-specific extras.
Accuracies and ER are fractions, not percentages.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import json
import math
import os
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probekit import paths
from probekit.atomic import _json_default, atomic_write_json, atomic_write_text, fsync_dir, try_lock
from probekit.errors import UserError

RECORD_FIELDS = ("step", "epoch", "head", "loss", "acc_id", "acc_ood", "er")
CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
SUMMARY_FILE = "summary.json"
OWNER_FILE = ".probekit-run"
CHECKPOINT_DIR = "checkpoints"
# what probekit writes into a run folder (train-head, finetune, zero-shot, and `probekit plot`'s default figures)
RUN_FILES = (OWNER_FILE, CONFIG_FILE, LOG_FILE, SUMMARY_FILE, "heads.pt", "predictions.npz", CHECKPOINT_DIR)
RUN_FILE_PATTERNS = ("model_*.pt", "id_vs_ood.*", "er_vs_*.*", "sweep.*", ".*.tmp")
_COMMANDS = ("train-head", "zero-shot", "finetune", "ablate")
_STAGING = ".{name}.probekit-new"


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: store them as null so every reader can parse the log."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _clean(value.item())
    return value


# ---------------------------------------------------------------- ownership


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or any(fnmatch.fnmatch(name, p) for p in RUN_FILE_PATTERNS)


def _legacy_run(folder: Path) -> bool:
    """A run folder written before owner marks existed: a config.json of a probekit command next to a log."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict) and (folder / LOG_FILE).is_file()
            and (config.get("command") in _COMMANDS or config.get("mode") in ("finetune", "zero-shot")))


def _describe_owner(owner_file: Path) -> str:
    try:
        o = json.loads(owner_file.read_text())
        return (f"pid {o.get('pid', '?')} on {o.get('host', '?')}, `{o.get('command', '?')}`, "
                f"started {o.get('started', '?')}")
    except (OSError, ValueError, AttributeError):
        return "owner unknown"


def check_out(out: str | os.PathLike, *, overwrite: bool = False, resume: bool = False,
              cache_dir: str | os.PathLike | None = None) -> Path:
    """Refuse (UserError) an ``--out`` a new run may not write into; cheap, so callers check before any work.

    Refused: a file; a folder inside the feature store; a non-empty folder that is not a
    probekit run, or a run folder holding files probekit did not write; a run another
    process is writing; a complete run unless `overwrite` (or `resume`).
    """
    out = Path(out)
    store = paths.cache_dir(cache_dir).resolve()
    where = out.resolve()
    if where == store or store in where.parents:
        raise UserError(f"--out {out} is inside the feature store {store}; write runs elsewhere (e.g. --out runs/NAME)")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; choose another --out")
    if not out.is_dir():
        return out
    try:
        names = sorted(os.listdir(out))
    except OSError as e:
        raise UserError(f"cannot read run folder {out}: {e.strerror}; choose another --out") from None
    if not names:
        return out
    foreign = [n for n in names if not _is_run_file(n)]
    if not (out / OWNER_FILE).is_file() and not _legacy_run(out):
        foreign = foreign or names
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(f"--out {out} holds files probekit did not write ({shown}); choose an empty or new folder "
                        "(probekit replaces only its own run folders)")
    if (out / OWNER_FILE).is_file():
        with _locked(out / OWNER_FILE, create=False):
            pass
    if is_complete(out) and not overwrite and not resume:
        raise UserError(f"run folder {out} already holds a complete run; pass --overwrite or choose another --out")
    return out


@contextlib.contextmanager
def _locked(owner_file: Path, *, create: bool = True) -> Iterator[int]:
    """Hold the run folder's lock (non-blocking): a folder another process writes is refused, naming its owner."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        fd = os.open(owner_file, flags, 0o666)
    except OSError as e:
        raise UserError(f"cannot open {owner_file}: {e.strerror}; choose another --out") from None
    try:
        if not try_lock(fd):
            raise UserError(f"run folder {owner_file.parent} is being written by another probekit run "
                            f"({_describe_owner(owner_file)}); wait for it to finish or choose another --out") from None
        yield fd
    finally:
        os.close(fd)


def _claim(fd: int, config: dict) -> None:
    """Write who holds the lock into the (locked) owner file."""
    cli = bool(sys.argv) and Path(sys.argv[0]).name in ("probekit", "__main__.py", "-c")
    command = shlex.join(["probekit", *sys.argv[1:]] if cli else sys.argv)
    owner = {"format": "probekit-run", "pid": os.getpid(), "host": socket.gethostname(), "command": command[:1000],
             "run": config.get("command") or config.get("mode"), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    data = (json.dumps(owner) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _exchange(a: Path, b: Path) -> None:
    """Swap two folders: one atomic renameat2(RENAME_EXCHANGE) on Linux, else two renames."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, "renameat2", None)
        if fn is not None:
            AT_FDCWD, RENAME_EXCHANGE = -100, 2
            if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
                return
            if ctypes.get_errno() not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(a))
    aside = a.with_name(a.name + ".swap")
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


class RunWriter:
    """Owns a run folder while it is written: appends records and marks it complete at the end.

    ``resume=True`` keeps an existing log (the caller truncates it to the last checkpoint with
    `truncate`). Otherwise a complete run is refused unless ``overwrite=True``; an incomplete
    one is cleared (its files, not the folder) and started afresh. With ``overwrite`` an
    existing run is replaced atomically at `finish`: until then the new run lives in `dir`, a
    hidden sibling folder, so callers write their extra files (heads, checkpoints) under
    ``writer.dir``. `replacing` says whether that is so. See the module doc for ownership.
    """

    def __init__(self, out_dir: str | os.PathLike, config: dict, *, resume: bool = False, overwrite: bool = False,
                 cache_dir: str | os.PathLike | None = None):
        self.out = check_out(out_dir, overwrite=overwrite, resume=resume, cache_dir=cache_dir)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create run folder {self.out}: {e.strerror}; choose another --out") from e
        self._stack = contextlib.ExitStack()
        self._log = None
        self.finished = False
        try:
            self._open(config, resume=resume, overwrite=overwrite)
        except BaseException:
            self._abandon()
            raise

    def _open(self, config: dict, *, resume: bool, overwrite: bool) -> None:
        _claim(self._stack.enter_context(_locked(self.out / OWNER_FILE)), config)
        staging = self.out.with_name(_STAGING.format(name=self.out.name))
        if staging.exists():  # left by a killed --overwrite run (we hold the folder's lock, so nobody else stages)
            shutil.rmtree(staging, ignore_errors=True)
        existing = [n for n in os.listdir(self.out) if n != OWNER_FILE]
        self.replacing = bool(existing) and overwrite and not resume
        self.dir = self.out
        if self.replacing:
            staging.mkdir()
            self.dir = staging
            _claim(self._stack.enter_context(_locked(staging / OWNER_FILE)), config)
        elif resume:
            with contextlib.suppress(FileNotFoundError):
                (self.out / SUMMARY_FILE).unlink()  # a resumed run is incomplete until it finishes again
        elif existing:
            # an incomplete run (a complete one was refused, or is replaced): nothing finished is lost
            for name in existing:
                path = self.out / name
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        atomic_write_json(self.dir / CONFIG_FILE, _clean(config))
        self._log = open(self.dir / LOG_FILE, "a", encoding="utf-8")

    def log(self, record: dict) -> None:
        """Append one record and flush it, so a kill loses at most the line being written."""
        self._log.write(json.dumps(_clean(record), default=_json_default) + "\n")
        self._log.flush()

    def log_many(self, records: Iterable[dict]) -> None:
        lines = "".join(json.dumps(_clean(r), default=_json_default) + "\n" for r in records)
        self._log.write(lines)
        self._log.flush()

    def truncate(self, keep: Callable[[dict], bool]) -> list[dict]:
        """Keep only the records for which `keep` is true (resume after a checkpoint); returns them."""
        self._log.close()
        kept = [r for r in read_records(self.dir / LOG_FILE) if keep(r)]
        atomic_write_text(self.dir / LOG_FILE, "".join(json.dumps(r) + "\n" for r in kept))
        self._log = open(self.dir / LOG_FILE, "a", encoding="utf-8")
        return kept

    def finish(self, summary: dict) -> None:
        """Write ``summary.json`` atomically; from now on the run reads as complete (and replaces the old one)."""
        self._log.flush()
        os.fsync(self._log.fileno())
        self._log.close()
        atomic_write_json(self.dir / SUMMARY_FILE, _clean({**summary, "status": "complete"}))
        if self.replacing:
            _exchange(self.dir, self.out)  # the old run now sits in the staging folder
            fsync_dir(self.out.parent)
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = self.out
        self.finished = True
        self._stack.close()

    def _abandon(self) -> None:
        """Let go of the folder; an unfinished replacement is thrown away, leaving the old run as it was."""
        if self._log is not None and not self._log.closed:
            self._log.close()
        if getattr(self, "replacing", False) and not self.finished:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = self.out
        self._stack.close()

    def close(self) -> None:
        if not self.finished:
            self._abandon()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the records of a ``log.jsonl``; a torn last line (a kill mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines):
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                return
            raise UserError(f"{path} line {i + 1} is not valid JSON; the run log is damaged, rerun the command") from None


def is_complete(run_dir: str | os.PathLike) -> bool:
    path = Path(run_dir) / SUMMARY_FILE
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "complete"
    except (json.JSONDecodeError, OSError):
        return False


@dataclass
class Run:
    """A run folder read back: configuration, records, summary and completeness."""

    path: Path
    config: dict
    records: list[dict]
    summary: dict | None
    complete: bool
    heads: list[str] = field(default_factory=list)

    def head_records(self, head: str) -> list[dict]:
        return [r for r in self.records if r.get("head") == head]


def _read_json(path: Path) -> dict:
    """A run folder's JSON file as a dict; a damaged one is a `UserError` naming it (probekit writes them atomically)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__}: {str(e)[:80]}); it was not written by probekit "
                        "or was edited since: restore it, or rerun the run into a new --out") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is damaged (not a JSON object); restore it, or rerun the run into a new --out")
    return data


def read_run(run_dir: str | os.PathLike) -> Run:
    """Read a run folder written by `RunWriter`; refuses folders that are not runs."""
    run_dir = Path(run_dir)
    log = run_dir / LOG_FILE
    if not log.exists():
        raise UserError(f"{run_dir} is not a probekit run folder (no {LOG_FILE}); pass the --out folder of train-head or finetune")
    config_path = run_dir / CONFIG_FILE
    config = _read_json(config_path) if config_path.exists() else {}
    records = list(read_records(log))
    complete = is_complete(run_dir)
    summary = _read_json(run_dir / SUMMARY_FILE) if complete else None
    heads = list(dict.fromkeys(r["head"] for r in records if "head" in r))
    return Run(run_dir, config, records, summary, complete, heads)
