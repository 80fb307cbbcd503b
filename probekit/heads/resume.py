"""Checkpoints of a train-head SGD run, so a killed or stopped run continues with ``--resume``.

A checkpoint (``<run>/checkpoints/last.pt``, atomic, ``weights_only``-loadable) holds the
`SGDHeads` snapshot of one step (weights, momentum buffers, each head's shuffle RNG), the
saved predictions so far, and the run's configuration fingerprint. It is written at an
evaluation when `every_s` seconds have passed since the last one (``$PROBEKIT_CHECKPOINT_SECONDS``,
default 30) and when SIGTERM / Ctrl-C stops the run. Resuming truncates the log to the
checkpoint's step and trains on from there, so the finished log equals an uninterrupted run's.

Layouts (``version``; the state says it, with ``format``, since version 3; earlier ones are told
apart by their configuration, numbered like finetune's):

1. before the shared record layer (``config`` spells ``baseline``, ``baseline_fit``, ``er_sets``):
   refused on resume in one line naming ``--overwrite`` (its log holds records of the older
   schema, so a continued run could not end with the log an uninterrupted run writes).
2. the record layer's ``config`` (``baselines: {set: fit}``, ``val_set``), no ``format`` / ``version``:
   read as version 3.
3. version 2 plus ``format: "probekit-train-head-checkpoint"`` and ``version: 3`` in the state.

A newer version, or a checkpoint of another command (finetune's format), is refused the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from probekit.errors import UserError
from probekit.finetune.checkpoint import CHECKPOINT_DIR, check_layout, checkpoint_path, load_checkpoint, save_checkpoint

CHECKPOINT_FORMAT = "probekit-train-head-checkpoint"
CHECKPOINT_VERSION = 3
CHECKPOINT_SECONDS_ENV = "PROBEKIT_CHECKPOINT_SECONDS"
RUNTIME_FIELDS = ("device", "torch")  # may change between a run and its resume


def resumable_config(config: dict) -> dict:
    """What a resumed run must share with the run it continues (JSON-normalised)."""
    return json.loads(json.dumps({k: v for k, v in config.items() if k not in RUNTIME_FIELDS}, default=str))


def resume_point(out: str | os.PathLike | None, config: dict, *, resume: bool, overwrite: bool) -> dict | None:
    """The checkpoint a run in `out` continues from (None: start at step 0), checked before any work.

    Refuses `resume` of a complete run, and an unfinished run's checkpoint without
    `resume` / `overwrite` (so it is never dropped by accident)."""
    from probekit.runlog import is_complete

    if out is None:
        if resume:
            raise UserError("--resume needs the run folder (--out) of the run to continue")
        return None
    path = checkpoint_path(out)
    if resume and is_complete(out):
        raise UserError(f"run folder {out} already holds a complete run, so there is nothing to resume; "
                        "pass --overwrite to train it again")
    if not path.exists() or overwrite:
        return None
    if not resume and not is_complete(out):
        raise UserError(f"{out} holds the checkpoint of an unfinished run; pass --resume to continue it or --overwrite to start afresh")
    return load_checkpoint(path, resumable_config(config), current=_current_config) if resume else None


def train_head_checkpoint_version(state: dict[str, Any]) -> int:
    """The layout of a loaded train-head checkpoint (see the module doc); unversioned ones by their configuration."""
    if "version" in state:
        return int(state["version"])
    config = json.loads(state["config"])
    if not isinstance(config, dict):
        raise TypeError("its config is not a JSON object")
    return 1 if {"baseline_fit", "er_sets"} & set(config) or "baselines" not in config else 2


def _current_config(path: Path, state: dict[str, Any]) -> dict:
    """The checkpoint's configuration (today's spelling: versions 2 and 3 agree), or a UserError saying why not."""
    check_layout(path, state, train_head_checkpoint_version(state), fmt=CHECKPOINT_FORMAT, newest=CHECKPOINT_VERSION)
    saved = json.loads(state["config"])
    if not isinstance(saved, dict):
        raise TypeError("its config is not a JSON object")
    return saved


class Checkpointer:
    """Writes the checkpoints of one SGD run into its run folder (see the module doc)."""

    def __init__(self, run_dir: Path, config: dict, every_s: float | None = None):
        self.path = checkpoint_path(run_dir)
        self.config = json.dumps(resumable_config(config))
        self.every_s = float(os.environ.get(CHECKPOINT_SECONDS_ENV, 30)) if every_s is None else float(every_s)
        self.last = time.monotonic()
        self.step: int | None = None

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every_s

    def save(self, sgd_state: dict, predictions: dict[str, list], pred_steps: list[int]) -> None:
        """Checkpoint `sgd_state` (an `SGDHeads` snapshot) with the predictions saved up to its step."""
        import numpy as np
        import torch

        preds = {name: torch.from_numpy(np.stack(p)) if p else torch.zeros(0, dtype=torch.int16) for name, p in predictions.items()}
        save_checkpoint(self.path, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": self.config,
                                    "step": int(sgd_state["step"]), "sgd": sgd_state, "predictions": preds,
                                    "pred_steps": list(pred_steps)})
        self.last, self.step = time.monotonic(), int(sgd_state["step"])



def remove_checkpoint(run_dir: str | os.PathLike) -> None:
    """A finished run needs no checkpoint (heads.pt holds its heads)."""
    shutil.rmtree(Path(run_dir) / CHECKPOINT_DIR, ignore_errors=True)


def restored_predictions(state: dict[str, Any]) -> tuple[dict[str, list], list[int]]:
    """The per-evaluation predictions a checkpoint carries, as train_head keeps them."""
    preds = {name: [row.numpy() for row in t] for name, t in state.get("predictions", {}).items()}
    return preds, [int(s) for s in state.get("pred_steps", [])]




def stopped(signum: int, est: Any, ckpt: Checkpointer | None, writer: Any, *, resumed_at: int | None = None) -> Exception:
    """The `Stopped` a signal ends an SGD run with, saying truthfully what can be resumed.

    `est` is the estimator after a step-boundary stop (``est.stopped_``), or None for a run
    interrupted at once (a second Ctrl-C, or Ctrl-C during an L-BFGS sweep)."""
    from probekit.runtime import Stopped

    name = signal.Signals(signum).name
    what = f"stopped by {name} after step {est.state_['step']} of {est.n_steps_}" if est is not None else "interrupted"
    if writer is not None and writer.replacing:  # an unfinished replacement is discarded, checkpoint and all
        return Stopped(f"{what}; the previous run in {writer.out} is kept as it was; rerun the same command "
                       "(with --overwrite) to replace it", signum)
    if ckpt is not None and ckpt.path.exists():
        at = ckpt.step if ckpt.step is not None else resumed_at
        return Stopped(f"{what}; checkpoint of step {at} in {ckpt.path}; rerun the same command with --resume to continue", signum)
    if writer is None:
        return Stopped(f"{what}; nothing was saved (no run folder)", signum)
    return Stopped(f"{what}; nothing can be resumed (no checkpoint yet, or an L-BFGS sweep, which starts over): "
                   "rerun the same command to start again", signum)
