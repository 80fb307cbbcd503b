"""Resume checkpoints: written atomically, read with ``weights_only=True``, tied to one configuration.

A checkpoint holds only tensors and plain containers (model and optimiser state, the running
loss, which (lr, seed) combination and step it is at) plus the run's configuration fingerprint
as JSON text, so resuming with another model or configuration is refused with the differing
keys named, and the file is left as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from probekit.atomic import atomic_write_bytes
from probekit.errors import UserError

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"


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


def load_checkpoint(path: Path, config: dict) -> dict[str, Any]:
    """Load a checkpoint and refuse it (UserError) when it was written under another configuration."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file
        raise UserError(f"cannot read checkpoint {path} ({type(e).__name__}); delete it or pass --overwrite to start afresh") from e
    if not isinstance(state, dict) or "config" not in state:
        raise UserError(f"{path} is not a probekit finetune checkpoint; pass another --out or --overwrite to start afresh")
    saved = json.loads(state["config"])
    if fingerprint(saved) != fingerprint(config):
        keys = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in keys[:3])
        raise UserError(f"checkpoint {path} belongs to another configuration ({detail}); rerun with the original "
                        f"options to resume, or choose another --out")
    return state
