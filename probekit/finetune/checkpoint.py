"""Resume checkpoints: written atomically, read with ``weights_only=True``, tied to one configuration.

A checkpoint holds only tensors and plain containers (model and optimiser state, the running
loss, which (lr, seed) combination and step it is at) plus the run's configuration fingerprint
as JSON text, so resuming with another model or configuration is refused with the differing
keys named, and the file is left as it was.

Layouts (``version``; the state says it since version 3, earlier ones are told apart by their
configuration):

1. before the shared record layer (``config`` spells ``ood_sets``, ``baselines: {set: name}``,
   ``baseline_fit``): refused on resume. Its log holds records of the older schema and its
   data pipeline converted some images differently, so a continued run could not end with the
   log an uninterrupted run writes; the message says to start afresh with ``--overwrite``.
2. the record layer's ``config`` (``ood``, ``val_set``, ``baselines: {set: fit}``), no
   ``save_predictions``: read, as ``save_predictions: "end"`` (what those runs did).
3. version 2 plus ``format``, ``version`` and ``save_predictions`` in the configuration.

A checkpoint whose ``format`` names another command is refused. train-head's SGD checkpoints
share this file layer (`load_checkpoint` with their own reading of the layouts, `check_layout`),
see `probekit.heads.resume`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from probekit.atomic import atomic_write_bytes
from probekit.errors import UserError

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
CHECKPOINT_FORMAT = "probekit-finetune-checkpoint"
CHECKPOINT_VERSION = 3


def fingerprint(config: dict) -> str:
    """A short stable hash of the configuration that decides what the log will contain."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / LAST


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise to memory, then write-fsync-rename: a kill mid-save keeps the previous checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, config: dict, current: Callable[[Path, dict], dict] | None = None) -> dict[str, Any]:
    """Load a checkpoint and refuse it (UserError) when it was written under another configuration.

    `current(path, state)` returns the checkpoint's configuration in today's spelling or raises a
    UserError saying why it cannot be continued (default: finetune's layouts, see the module doc;
    train-head passes its own, `probekit.heads.resume`)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file
        raise UserError(f"cannot read checkpoint {path} ({type(e).__name__}); delete it or pass --overwrite to start afresh") from e
    if not isinstance(state, dict) or "config" not in state:
        raise UserError(f"{path} is not a probekit checkpoint; pass another --out or --overwrite to start afresh")
    try:
        saved = (current or _current_config)(path, state)
    except UserError:
        raise
    except (TypeError, ValueError) as e:  # a version or config that is not what probekit writes
        raise UserError(f"{path} is not a probekit checkpoint ({type(e).__name__}); pass another --out or --overwrite to "
                        "start afresh") from e
    if fingerprint(saved) != fingerprint(config):
        keys = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in keys[:3])
        raise UserError(f"checkpoint {path} belongs to another configuration ({detail}); rerun with the original "
                        f"options to resume, or choose another --out")
    return state


def check_layout(path: Path, state: dict[str, Any], version: int, *, fmt: str, newest: int) -> None:
    """Refuse (UserError, one line naming --overwrite) a checkpoint of another command, of a newer
    probekit (`version` above `newest`) or of one before the record layer (`version` 1)."""
    found = state.get("format", fmt)
    if not isinstance(found, str) or found != fmt:
        found = found if isinstance(found, str) else type(found).__name__
        raise UserError(f"{path} is a {found!r} checkpoint, not a {fmt!r} one, so this command cannot continue it; "
                        "pass another --out, or --overwrite instead of --resume to start the run afresh")
    if version > newest:
        raise UserError(f"checkpoint {path} was written by a newer probekit (checkpoint version {version}, this one reads "
                        f"up to {newest}); resume it with that probekit, or pass --overwrite instead of --resume "
                        "to start the run afresh")
    if version < 2:
        raise UserError(f"checkpoint {path} was written by an earlier probekit (before every mode shared one run-record "
                        "layout) and cannot be continued by this one; rerun the same command with --overwrite instead of "
                        "--resume to start the run afresh (its folder is replaced only when the new run finishes)")


def checkpoint_version(state: dict[str, Any]) -> int:
    """The layout of a loaded checkpoint (see the module docstring); unversioned ones by their configuration."""
    if "version" in state:
        return int(state["version"])
    return 1 if "ood_sets" in json.loads(state["config"]) else 2


def _current_config(path: Path, state: dict[str, Any]) -> dict:
    """The checkpoint's configuration in today's spelling, or a UserError saying why it cannot be continued."""
    version = checkpoint_version(state)
    check_layout(path, state, version, fmt=CHECKPOINT_FORMAT, newest=CHECKPOINT_VERSION)
    saved = json.loads(state["config"])
    if not isinstance(saved, dict):
        raise TypeError("its config is not a JSON object")
    if version == 2:  # before --save-predictions: those runs saved each model's final predictions
        saved.setdefault("save_predictions", "end")
    return saved


def _snapshot(obj: Any) -> Any:
    """A copy of every tensor in a nested state (training mutates parameters and momentum in place)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(v) for v in obj)
    return obj


class BackgroundSaver:
    """Writes checkpoints on a background thread so training does not wait for serialisation and fsync.

    `submit` snapshots the state (a memory copy) and returns; at most one write is in flight,
    and `wait` (called before the next submit, on stop and at the end) surfaces any write error.
    """

    def __init__(self):
        import threading

        self._threading = threading
        self._thread = None
        self._error: BaseException | None = None

    def _write(self, path: Path, state: dict) -> None:
        try:
            save_checkpoint(path, state)
        except BaseException as e:  # surfaced by wait()
            self._error = e

    def submit(self, path: Path, state: dict) -> None:
        self.wait()
        snapshot = _snapshot(state)
        self._thread = self._threading.Thread(target=self._write, args=(path, snapshot), daemon=False)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
