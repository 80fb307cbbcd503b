"""The feature store: one HDF5 file of frozen-backbone features per cache entry.

An entry is identified by (backbone + weight identity, dataset + its on-disk
fingerprint, split, transform, feature kind, compute precision, storage dtype);
the hash of those fields names the file `<model>__<dataset>__<split>__<hash12>.h5`.

Crash safety, in three rules:
  * work happens in `<name>.h5.partial`, never under the final name;
  * progress is committed by flushing the rows, then advancing the `committed_rows` /
    `committed_positions` attributes, then flushing and fsyncing again — a kill
    between the two leaves rows beyond the counter, which resume overwrites;
  * the final name appears only by an atomic rename after `complete=True` and the
    sha256 of the finished arrays are written and fsynced.
A `.partial` whose HDF5 metadata was torn by a kill mid-flush (h5py cannot open it)
is discarded and the entry starts over; that loses only the work of that one file.

Readers only open final files and verify the checksum, so an altered or truncated
file is refused with the command that rebuilds it. Attributes are plain strings and
numbers, JSON-decoded, never evaluated.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probekit import paths
from probekit.atomic import fsync_dir, try_lock
from probekit.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SUFFIX = ".h5"
PARTIAL = ".partial"
_JSON_ATTRS = ("classes", "dataset_describe", "versions", "key_fields")
_DATASETS = ("features", "labels", "index")


# ---------------------------------------------------------------- keys and names


def key_fields(
    *,
    backbone: str,
    weight_id: str,
    transform_id: str,
    feature_kind: str,
    dataset: str,
    split: str,
    dataset_describe: dict,
    precision: str = "fp32",
    dtype: str = "float32",
) -> dict:
    """The fields whose values make a cache entry; any change makes a different entry."""
    return {
        "format": FORMAT_VERSION,
        "backbone": backbone,
        "weight_id": weight_id,
        "transform_id": transform_id,
        "feature_kind": feature_kind,
        "dataset": dataset,
        "split": split,
        "dataset_describe": dataset_describe,
        "precision": precision,
        "dtype": dtype,
    }


def entry_key(fields: dict) -> str:
    """sha256 (hex) of the canonical JSON of the key fields."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def sanitize(name: str) -> str:
    """A filename-safe rendering of a registry name (`folder:/a/b` -> `folder-a-b`)."""
    text = re.sub(r"[^A-Za-z0-9._+-]+", "-", str(name)).strip("-.")
    return text[:60] or "x"


def entry_filename(backbone: str, dataset: str, split: str, key: str) -> str:
    return f"{sanitize(backbone)}__{sanitize(dataset)}__{sanitize(split)}__{key[:12]}{SUFFIX}"


def rebuild_command(attrs: dict | None, path: Path | None = None) -> str:
    """The `probekit extract` command that (re)builds an entry, from its attributes."""
    attrs = attrs or {}
    cmd = attrs.get("extract_command")
    if cmd:
        return str(cmd)
    if attrs.get("backbone") and attrs.get("dataset"):
        return f"probekit extract --model {attrs['backbone']} --dataset {attrs['dataset']} --split {attrs.get('split', '?')}"
    return "probekit extract --model MODEL --dataset DATASET --split SPLIT"


# ---------------------------------------------------------------- folder checks and locking


def writable_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The feature-store folder, created and proven writable, or a UserError naming it."""
    folder = paths.cache_dir(cache_dir)
    hint = f"pass --cache-dir DIR or set ${paths.CACHE_ENV} to a writable folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the feature-store folder {folder}: {e.strerror}; {hint}") from None
    probe = folder / f".probekit-write-test-{os.getpid()}"
    try:
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"the feature-store folder {folder} is not writable ({e.strerror}); {hint}") from None
    return folder


def check_free_space(final_path: Path, *, total: int, dim: int, dtype: str = "float32", command: str = "") -> None:
    """Refuse to start an entry the disk cannot hold (UserError naming the folder and the sizes).

    HDF5 fails badly when a write hits a full disk mid-run, so the arrays' size (less what a
    resumable partial already holds) must be free before any work starts.
    """
    import shutil

    folder = Path(final_path).parent
    partial = Path(final_path).with_name(Path(final_path).name + PARTIAL)
    need = int(total) * (int(dim) * np.dtype(dtype).itemsize + 16) + (1 << 16)
    with contextlib.suppress(OSError):
        need -= partial.stat().st_blocks * 512
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if need > free:
        rerun = f"rerun `{command}`" if command else "rerun the same command"
        raise UserError(f"not enough disk space in the feature store {folder}: this entry needs {need / 2**20:.1f} MiB, "
                        f"{free / 2**20:.1f} MiB are free; free space there (or pass --cache-dir DIR elsewhere) and {rerun}")


@contextlib.contextmanager
def entry_lock(final_path: Path, *, quiet: bool = False) -> Iterator[None]:
    """Exclusive fcntl lock on `<name>.lock`: one writer per entry, others wait.

    The lock file holds the owner's pid so a waiting process can say whom it waits for.
    The lock dies with its process (SIGKILL included), so no stale lock can block anyone.
    """
    lock_path = final_path.with_name(final_path.name[: -len(SUFFIX)] + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not try_lock(fd):
            try:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            except OSError:
                owner = "?"
            if not quiet:
                log.info("waiting for another probekit extract of this entry (pid %s): %s", owner, final_path.name)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


# ---------------------------------------------------------------- writing


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode_attr(key: str, value: Any) -> Any:
    if key in _JSON_ATTRS or isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    if value is None:
        return ""
    return value


def _decode_attrs(raw: Any) -> dict:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, np.generic):
            v = v.item()
        if k in _JSON_ATTRS and isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                pass
        out[k] = v
    return out


def array_checksum(features, labels, index, *, rows_per_read: int = 8192) -> str:
    """sha256 over the bytes of features, labels and index (h5py datasets or arrays), in that order."""
    h = hashlib.sha256()
    for arr in (features, labels, index):
        n = arr.shape[0]
        for start in range(0, n, rows_per_read):
            h.update(np.ascontiguousarray(arr[start : start + rows_per_read]).tobytes())
    return "sha256:" + h.hexdigest()


def _reserve(path: Path, nbytes: int) -> None:
    """Allocate the disk blocks the entry will need, beyond its end, without changing its size.

    HDF5 crashes the process (segfault at close) after a write hits a full disk, so space is
    claimed up front: a disk that fills during the run, or a full one, shows up here as
    ENOSPC. Linux fallocate(FALLOC_FL_KEEP_SIZE) only; elsewhere, or where the filesystem
    does not support it, nothing is reserved (no slow emulation). HDF5 trims the file at close.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fallocate = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
    if fallocate is None:
        return
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fd = os.open(path, os.O_RDWR)
    try:
        if fallocate(fd, 1, 0, int(nbytes)) != 0:  # 1 = FALLOC_FL_KEEP_SIZE
            err = ctypes.get_errno()
            if err in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def _release_reserve(path: Path) -> None:
    """Free blocks `_reserve` claimed beyond the end of a finished file (a same-size truncate would not)."""
    size = path.stat().st_size
    os.truncate(path, size + 1)
    os.truncate(path, size)


class FeatureWriter:
    """Appends committed chunks of rows to `<final>.partial`, resuming what a killed run committed.

    `positions` is the total number of source positions this writer covers (the rows it
    will hold unless some are skipped). Resume is allowed only when the partial's key
    and layout match; otherwise it is started over.
    """

    def __init__(self, final_path: Path, *, attrs: dict, total: int, dim: int, dtype: str = "float32",
                 partial_path: Path | None = None, chunk_rows: int = 1024):
        import h5py

        self.final_path = Path(final_path)
        self.partial_path = Path(partial_path) if partial_path else self.final_path.with_name(self.final_path.name + PARTIAL)
        self.total, self.dim, self.dtype = int(total), int(dim), np.dtype(dtype)
        self.resumed_from = 0
        self._file = None
        self.skipped: list[int] = []
        want = {"key": attrs["key"], "total": self.total, "dim": self.dim, "dtype": self.dtype.name}
        if self.partial_path.exists():
            try:
                f = h5py.File(self.partial_path, "r+")
            except (OSError, KeyError, ValueError):
                f = None
            if f is not None:
                got = _decode_attrs(f.attrs)
                ok = all(str(got.get(k)) == str(v) for k, v in want.items()) and all(d in f for d in _DATASETS)
                if ok:
                    self._file = f
                    self.committed_rows = int(got.get("committed_rows", 0))
                    self.committed_positions = int(got.get("committed_positions", 0))
                    self.batch_size = int(got.get("batch_size", 0)) or None
                    self.skipped = list(np.asarray(f["skipped"][: int(got.get("committed_skipped", 0))]).tolist()) if "skipped" in f else []
                    self.resumed_from = self.committed_positions
                else:
                    f.close()
            if self._file is None:
                self.partial_path.unlink()
        if self._file is None:
            f = h5py.File(self.partial_path, "w")
            chunk = max(1, min(chunk_rows, self.total or 1))
            f.create_dataset("features", shape=(self.total, self.dim), maxshape=(None, self.dim), dtype=self.dtype, chunks=(chunk, self.dim))
            f.create_dataset("labels", shape=(self.total,), maxshape=(None,), dtype=np.int64, chunks=(max(chunk, 1),))
            f.create_dataset("index", shape=(self.total,), maxshape=(None,), dtype=np.int64, chunks=(max(chunk, 1),))
            f.create_dataset("skipped", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(1024,))
            for k, v in attrs.items():
                f.attrs[k] = _encode_attr(k, v)
            for k, v in want.items():
                f.attrs[k] = v
            f.attrs["complete"] = False
            f.attrs["committed_rows"] = 0
            f.attrs["committed_positions"] = 0
            f.attrs["committed_skipped"] = 0
            f.flush()
            self._file = f
            self.committed_rows = 0
            self.committed_positions = 0
            self.batch_size = int(attrs["batch_size"]) if attrs.get("batch_size") else None
        self._rows = self.committed_rows
        self._positions = self.committed_positions
        self._skipped_n = len(self.skipped)
        chunk = self._file["features"].chunks[0] if self._file["features"].chunks else 1
        rows = -(-max(self.total, 1) // chunk) * chunk  # HDF5 allocates whole chunks
        try:
            _reserve(self.partial_path, rows * (self.dim * self.dtype.itemsize + 16) + (1 << 18))
        except OSError as e:
            self.close()
            raise UserError(f"not enough disk space in the feature store {self.final_path.parent} for {self.final_path.name} "
                            f"({e.strerror}); free space there (or pass --cache-dir DIR elsewhere) and rerun "
                            f"`{rebuild_command(attrs)}`") from None

    # rows are staged, then made durable by `commit`
    def append(self, features: np.ndarray, labels: np.ndarray, index: np.ndarray, *, positions: int, skipped: Sequence[int] = ()) -> None:
        """Stage rows for `positions` consumed source positions (rows + skipped)."""
        n = len(features)
        if n:
            f = self._file
            f["features"][self._rows : self._rows + n] = np.asarray(features, dtype=self.dtype)
            f["labels"][self._rows : self._rows + n] = labels
            f["index"][self._rows : self._rows + n] = index
        self._rows += n
        self._positions += int(positions)
        if skipped:
            self.skipped.extend(int(s) for s in skipped)

    def commit(self) -> None:
        """Make staged rows durable: data flushed and fsynced before the counters move."""
        f = self._file
        if len(self.skipped) != self._skipped_n:
            ds = f["skipped"]
            ds.resize((len(self.skipped),))
            ds[self._skipped_n :] = np.asarray(self.skipped[self._skipped_n :], dtype=np.int64)
        f.flush()
        _fsync_path(self.partial_path)
        f.attrs["committed_rows"] = self._rows
        f.attrs["committed_positions"] = self._positions
        f.attrs["committed_skipped"] = len(self.skipped)
        f.flush()
        _fsync_path(self.partial_path)
        self.committed_rows, self.committed_positions, self._skipped_n = self._rows, self._positions, len(self.skipped)

    def finish(self, extra_attrs: dict | None = None) -> Path:
        """Trim, checksum, mark complete, fsync, and rename to the final name."""
        self.commit()
        if self.committed_positions != self.total:
            raise RuntimeError(f"finish() after {self.committed_positions} of {self.total} positions")
        f = self._file
        rows = self.committed_rows
        for name in _DATASETS:
            f[name].resize((rows,) + f[name].shape[1:])
        f.attrs["rows"] = rows
        f.attrs["checksum"] = array_checksum(f["features"], f["labels"], f["index"])
        f.attrs["n_skipped"] = len(self.skipped)
        for k, v in (extra_attrs or {}).items():
            f.attrs[k] = _encode_attr(k, v)
        f.attrs["completed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        f.attrs["complete"] = True
        f.flush()
        f.close()
        self._file = None
        _release_reserve(self.partial_path)
        _fsync_path(self.partial_path)
        os.replace(self.partial_path, self.final_path)
        fsync_dir(self.final_path.parent)
        return self.final_path

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None


# ---------------------------------------------------------------- reading


@dataclass
class FeatureSet:
    """Features of one cache entry, in memory."""

    features: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    attrs: dict = field(default_factory=dict)
    path: Path | None = None
    name: str = ""

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def classes(self) -> list[str]:
        return list(self.attrs.get("classes") or [])

    @property
    def num_classes(self) -> int:
        return len(self.classes) or int(self.labels.max(initial=-1)) + 1


def read_attrs(path: str | os.PathLike) -> dict:
    """Attributes of a feature file (final or partial), or a UserError if it is not readable HDF5."""
    import h5py

    path = Path(path)
    if path.is_dir():  # not damaged, just not a file: never advise deleting a folder
        raise UserError(f"{path} is a folder, not a feature file; pass a .h5 file from the feature store "
                        f"(`probekit cache ls` lists them) or a dataset:split with --model")
    try:
        with h5py.File(path, "r", locking=False) as f:  # finished files are immutable; works on read-only media
            return _decode_attrs(f.attrs)
    except FileNotFoundError:
        raise UserError(f"no feature file at {path}; see `probekit cache ls`") from None
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"feature file {path} is corrupt (not readable as HDF5: {str(e).splitlines()[0][:80]}); delete it and "
                        f"rebuild it with `{_command_from_name(path)}`") from None


def _command_from_name(path: Path) -> str:
    """The rebuild command read off an entry's file name, for files whose attributes are lost (truncated)."""
    name = path.name.removesuffix(PARTIAL).removesuffix(SUFFIX)
    parts = name.split("__")
    if len(parts) == 4:
        return f"probekit extract --model {parts[0]} --dataset {parts[1]} --split {parts[2]} (plus the options it was built with)"
    return "probekit extract --model MODEL --dataset DATASET --split SPLIT"


def load_features(path: str | os.PathLike, *, dtype: Any = np.float32, verify: bool = True) -> FeatureSet:
    """Read a complete feature file into memory; refuse partial, altered or truncated files."""
    import h5py

    path = Path(path)
    attrs = read_attrs(path)
    if "key" not in attrs and "backbone" not in attrs:  # readable HDF5, but not written by `probekit extract`
        raise UserError(f"{path} is an HDF5 file but not a probekit feature file (no probekit attributes); pass a file "
                        f"written by `probekit extract` (`probekit cache ls` lists them)")
    cmd = rebuild_command(attrs, path)
    if not attrs.get("complete") or path.name.endswith(PARTIAL):
        done, total = attrs.get("committed_positions", 0), attrs.get("total", "?")
        raise UserError(f"feature file {path} is incomplete ({done} of {total} rows); rerun `{cmd}` to resume")
    try:
        with h5py.File(path, "r", locking=False) as f:
            missing = [d for d in _DATASETS if d not in f]
            if missing:
                raise UserError(f"feature file {path} is corrupt (missing {', '.join(missing)}); delete it and rerun `{cmd}`")
            feats, labels, index = f["features"][...], f["labels"][...], f["index"][...]
            skipped = f["skipped"][...] if "skipped" in f else np.zeros(0, np.int64)
    except UserError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"feature file {path} is corrupt ({str(e).splitlines()[0][:80]}); delete it and rerun `{cmd}`") from None
    rows = attrs.get("rows")
    if feats.ndim != 2 or len(feats) != len(labels) or len(labels) != len(index) or (rows is not None and int(rows) != len(labels)):
        raise UserError(f"feature file {path} is corrupt (array lengths disagree); delete it and rerun `{cmd}`")
    if verify and array_checksum(feats, labels, index) != attrs.get("checksum"):
        raise UserError(f"feature file {path} is corrupt (checksum mismatch: altered after it was written); delete it and rerun `{cmd}`")
    attrs["skipped"] = skipped.tolist()
    name = f"{attrs.get('dataset', '?')}:{attrs.get('split', '?')}"
    return FeatureSet(features=feats.astype(dtype, copy=False), labels=labels.astype(np.int64, copy=False),
                      index=index.astype(np.int64, copy=False), attrs=attrs, path=path, name=name)


# what makes features of one run comparable: the same network, weights, preprocessing, layer and arithmetic
SOURCE_FIELDS = ("backbone", "weight_id", "transform_id", "feature_kind", "precision")
# what config.json records of every input, read off the file (never the command line's defaults)
PROVENANCE_FIELDS = ("backbone", "weights", "weight_id", "image_size", "input_size", "transform_id", "feature_kind",
                     "feature", "precision", "dtype", "dataset", "split", "key")


def provenance(fs: FeatureSet) -> dict:
    """Where a feature set came from, from its file's attributes (plus its path)."""
    out = {k: fs.attrs.get(k) for k in PROVENANCE_FIELDS if fs.attrs.get(k) not in (None, "")}
    return {"path": str(fs.path) if fs.path else None, **out}


def check_same_source(sets: Sequence[tuple[str, FeatureSet]], *, allow_mixed: bool = False) -> list[dict]:
    """Refuse feature sets of one run that were not extracted the same way (UserError naming both files and the field).

    `sets`: ``(role, FeatureSet)`` pairs, the reference first (train). Every set must share its
    `SOURCE_FIELDS` attributes (fields a file lacks are not compared). With `allow_mixed` the
    differences are returned instead (``{"role", "path", "field", "value", "reference"}``), for
    a deliberate comparison recorded in the run's config.
    """
    if not sets:
        return []
    ref_role, ref = sets[0]
    found = []
    for role, fs in sets[1:]:
        for key in SOURCE_FIELDS:
            a, b = ref.attrs.get(key), fs.attrs.get(key)
            if a in (None, "") or b in (None, "") or str(a) == str(b):
                continue
            if not allow_mixed:
                raise UserError(f"{role} features {fs.path or fs.name} and {ref_role} features {ref.path or ref.name} differ in "
                                f"{key} ({b} vs {a}): they come from different extractions and are not comparable; extract "
                                f"them with the same --model / --weights / --image-size / --feature / --precision, or pass "
                                f"--allow-mixed-features to compare them deliberately")
            found.append({"role": role, "path": str(fs.path) if fs.path else fs.name, "field": key, "value": b, "reference": a})
    return found


def _complete_attrs_or_none(path: Path) -> dict | None:
    try:
        attrs = read_attrs(path)
    except UserError:
        return None
    return attrs if attrs.get("complete") else None


def is_complete(path: str | os.PathLike) -> bool:
    """True when `path` is a final feature file marked complete (cheap: attributes only)."""
    path = Path(path)
    return path.is_file() and not path.name.endswith(PARTIAL) and _complete_attrs_or_none(path) is not None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def matching_entries(model: str, dataset_split: str, *, weights: str = "default", cache_dir: str | os.PathLike | None = None,
                     image_size: int | None = None, feature: str | None = None, precision: str = "fp32",
                     dtype: str = "float32") -> list[Path]:
    """The complete entries whose attributes match (backbone, dataset, split, weights as given, image
    size, feature, precision, dtype); reading only attributes, never building a model.

    A weights *path* must also match by sha256, so a changed file is not served stale features.
    Choosing between several matches needs the exact key, which only a backbone can give:
    that is `probekit.features.find_features`, a layer above the store and extraction."""
    from probekit.names import parse_dataset_split

    dataset, split = parse_dataset_split(dataset_split)
    folder = paths.cache_dir(cache_dir)
    want = {"backbone": model, "dataset": dataset, "split": split, "weights": str(weights),
            "image_size": image_size or "", "feature": feature or "", "precision": precision, "dtype": dtype}
    matches = []
    for p in sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []:
        attrs = _complete_attrs_or_none(p)
        if attrs and all(str(attrs.get(k, "")) == str(v) for k, v in want.items()):
            matches.append((p, attrs))
    if matches and weights not in ("default", "none") and Path(weights).is_file():
        digest = _file_sha256(Path(weights))
        matches = [(p, a) for p, a in matches if a.get("weight_id") == digest]
    return [p for p, _ in matches]


FILE_SUFFIXES = (SUFFIX, ".hdf5", ".hdf", PARTIAL)


def looks_like_feature_file(spec: str | os.PathLike) -> bool:
    """Whether a feature spec names a file (any case of .h5 / .hdf5, a partial, an existing path), not dataset:split."""
    text = os.fspath(spec)
    return text.lower().endswith(FILE_SUFFIXES) or (os.sep in text and Path(text).exists())




def list_entries(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every feature file in the store (complete, partial, corrupt), with sizes; no data is read."""
    folder = paths.cache_dir(cache_dir)
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.iterdir()):
        if not (p.name.endswith(SUFFIX) or p.name.endswith(PARTIAL) or p.name.endswith(".shard")):
            continue
        row: dict[str, Any] = {"file": p.name, "path": str(p), "bytes": p.stat().st_size}
        try:
            attrs = read_attrs(p)
        except UserError:
            # a .partial being written by another process, or torn by a kill (the next extract discards it)
            row.update(status="partial (busy or torn)" if p.name.endswith(PARTIAL) else "corrupt")
            out.append(row)
            continue
        complete = bool(attrs.get("complete")) and p.name.endswith(SUFFIX)
        rows = attrs.get("rows") if complete else attrs.get("committed_rows", 0)
        row.update(model=attrs.get("backbone", "?"), dataset=attrs.get("dataset", "?"), split=attrs.get("split", "?"),
                   rows=int(rows or 0), total=int(attrs.get("total", 0) or 0), dim=int(attrs.get("dim", 0) or 0),
                   image_size=attrs.get("image_size") or None, weights=attrs.get("weights", ""),
                   weight_id=attrs.get("weight_id", ""), feature_kind=attrs.get("feature_kind", ""),
                   precision=attrs.get("precision", ""), dtype=attrs.get("dtype", ""),
                   status="complete" if complete else f"partial {attrs.get('committed_positions', 0)}/{attrs.get('total', '?')}")
        out.append(row)
    return out


def resolve_entry(entry: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A cache entry named by path, file name, or a unique prefix of a file name."""
    folder = paths.cache_dir(cache_dir)
    if not str(entry).strip():
        raise UserError(f"no cache entry given (an empty name); pass a file name from `probekit cache ls --cache-dir {folder}`")
    p = Path(entry).expanduser()
    if p.exists():
        return p
    names = [r["file"] for r in list_entries(folder)]
    if entry in names:
        return folder / entry
    hits = [n for n in names if n.startswith(entry)]
    if len(hits) == 1:
        return folder / hits[0]
    if not hits:
        from probekit.errors import unknown_name

        raise unknown_name("cache entry", entry, names, hint=f"probekit cache ls --cache-dir {folder}")
    raise UserError(f"cache entry prefix {entry!r} is ambiguous ({len(hits)} files: {', '.join(hits[:4])}...); give more of the name")


# ---------------------------------------------------------------- shards (torchrun)


def is_complete_shard(path: Path) -> bool:
    """True when a rank's shard file is finished (complete attribute set)."""
    return Path(path).is_file() and _complete_attrs_or_none(Path(path)) is not None


def merge_shards(shards: Sequence[Path], final_path: Path, *, attrs: dict, total: int, dim: int, dtype: str = "float32",
                 rows_per_read: int = 65536) -> Path:
    """Concatenate finished rank shards (in rank order) into one entry, then delete them."""
    import h5py

    writer = FeatureWriter(final_path, attrs=attrs, total=total, dim=dim, dtype=dtype)
    try:
        if writer.committed_positions:  # a previous merge died half-way: start it over
            writer.close()
            writer.partial_path.unlink()
            writer = FeatureWriter(final_path, attrs=attrs, total=total, dim=dim, dtype=dtype)
        for shard in shards:
            with h5py.File(shard, "r") as f:
                if array_checksum(f["features"], f["labels"], f["index"]) != _decode_attrs(f.attrs).get("checksum"):
                    raise UserError(f"shard {shard} is corrupt (checksum mismatch); delete it and rerun the same torchrun command")
                n = f["features"].shape[0]
                skipped = f["skipped"][...].tolist() if "skipped" in f else []
                positions = int(f.attrs["total"])
                for s in range(0, max(n, 1), rows_per_read):
                    e = min(s + rows_per_read, n)
                    last = e >= n
                    writer.append(f["features"][s:e], f["labels"][s:e], f["index"][s:e],
                                  positions=positions if last else 0, skipped=skipped if last else ())
        writer.finish({"merged_from_shards": len(shards)})
    finally:
        writer.close()
    for shard in shards:
        with contextlib.suppress(FileNotFoundError):
            shard.unlink()
    return final_path


# ---------------------------------------------------------------- housekeeping (cache rm / prune)


def writer_alive(path: Path) -> bool:
    """Whether a process holds the entry lock of `path` (final or partial): its writer is still running."""
    name = path.name.removesuffix(PARTIAL)
    if not name.endswith(SUFFIX):
        return False
    lock_path = path.with_name(name[: -len(SUFFIX)] + ".lock")
    if not lock_path.exists():
        return False
    fd = os.open(lock_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def remove_entry(path: Path) -> list[Path]:
    """Delete one feature file and its lock file, refused while its writer runs; returns what was removed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is not a feature file of the store; see `probekit cache ls`")
    if writer_alive(path):
        raise UserError(f"{path.name} is being written by a running probekit extract; stop it first, or wait")
    removed = [path]
    path.unlink()
    base = path.name.removesuffix(PARTIAL)
    lock = path.with_name(base[: -len(SUFFIX)] + ".lock") if base.endswith(SUFFIX) else None
    if lock is not None and lock.exists() and not lock.with_name(base).exists() and not lock.with_name(base + PARTIAL).exists():
        lock.unlink()
        removed.append(lock)
    return removed


def prunable_entries(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """Rows of `list_entries` that `cache prune` removes: partials whose writer is gone, and corrupt files."""
    rows = []
    for row in list_entries(cache_dir):
        path = Path(row["path"])
        if row["status"] == "complete" or writer_alive(path):
            continue
        if row["status"] == "corrupt" or path.name.endswith(PARTIAL) or path.name.endswith(".shard"):
            rows.append(row)
    return rows
