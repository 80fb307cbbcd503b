"""The run folder and its per-evaluation JSON Lines record, shared by heads and finetune.

A run folder holds:

- ``config.json``: the resolved configuration, written when the run starts;
- ``log.jsonl``: one self-describing record per head per evaluation;
- ``summary.json``: written last, atomically; a run is complete only when it exists
  and says ``"status": "complete"``. A killed run has a log but no complete summary,
  so it is never mistaken for a finished one.

Record fields (`RECORD_FIELDS`): ``step``, ``epoch``, ``head`` (a stable id such as
``"lr=0.001,seed=0"``), ``loss``, ``acc_id``, ``acc_ood`` (``{ood_set: accuracy}``),
``er`` (``{ood_set: effective robustness}``, present when a baseline is set), plus the
head's own hyper-parameters (``lr``, ``seed``, ``l2`` ...) and mode-specific extras.
Accuracies and ER are fractions, not percentages.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probekit.atomic import _json_default, atomic_write_json, atomic_write_text
from probekit.errors import UserError

RECORD_FIELDS = ("step", "epoch", "head", "loss", "acc_id", "acc_ood", "er")
CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
SUMMARY_FILE = "summary.json"


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


class RunWriter:
    """Appends records to a run folder and marks it complete at the end.

    ``resume=True`` keeps an existing log (the caller truncates it to the last
    checkpoint with `truncate`); otherwise an existing *complete* run is refused
    unless ``overwrite=True``, and an incomplete one is started afresh.
    """

    def __init__(self, out_dir: str | os.PathLike, config: dict, *, resume: bool = False, overwrite: bool = False):
        self.dir = Path(out_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create run folder {self.dir}: {e.strerror}; choose another --out") from e
        summary = self.dir / SUMMARY_FILE
        log = self.dir / LOG_FILE
        if not resume:
            if is_complete(self.dir) and not overwrite:
                raise UserError(f"run folder {self.dir} already holds a complete run; pass --overwrite or choose another --out")
            for stale in (summary, log):
                if stale.exists():
                    stale.unlink()
        elif summary.exists():
            summary.unlink()  # a resumed run is incomplete until it finishes again
        atomic_write_json(self.dir / CONFIG_FILE, _clean(config))
        self._log = open(log, "a", encoding="utf-8")

    def log(self, record: dict) -> None:
        """Append one record and flush it, so a kill loses at most the line being written."""
        self._log.write(json.dumps(_clean(record), default=_json_default) + "\n")
        self._log.flush()

    def log_many(self, records: Iterable[dict]) -> None:
        lines = "".join(json.dumps(_clean(r), default=_json_default) + "\n" for r in records)
        self._log.write(lines)
        self._log.flush()

    def truncate(self, keep: Callable[[dict], bool]) -> None:
        """Keep only the records for which `keep` is true (resume after a checkpoint)."""
        self._log.close()
        kept = [r for r in read_records(self.dir / LOG_FILE) if keep(r)]
        atomic_write_text(self.dir / LOG_FILE, "".join(json.dumps(r) + "\n" for r in kept))
        self._log = open(self.dir / LOG_FILE, "a", encoding="utf-8")

    def finish(self, summary: dict) -> None:
        """Write ``summary.json`` atomically; from now on the run reads as complete."""
        self._log.flush()
        os.fsync(self._log.fileno())
        self._log.close()
        atomic_write_json(self.dir / SUMMARY_FILE, _clean({**summary, "status": "complete"}))

    def close(self) -> None:
        if not self._log.closed:
            self._log.close()

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


def read_run(run_dir: str | os.PathLike) -> Run:
    """Read a run folder written by `RunWriter`; refuses folders that are not runs."""
    run_dir = Path(run_dir)
    log = run_dir / LOG_FILE
    if not log.exists():
        raise UserError(f"{run_dir} is not a probekit run folder (no {LOG_FILE}); pass the --out folder of train-head or finetune")
    config_path = run_dir / CONFIG_FILE
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    records = list(read_records(log))
    complete = is_complete(run_dir)
    summary = json.loads((run_dir / SUMMARY_FILE).read_text()) if complete else None
    heads = list(dict.fromkeys(r["head"] for r in records if "head" in r))
    return Run(run_dir, config, records, summary, complete, heads)
