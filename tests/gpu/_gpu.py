"""Shared by the CUDA tests: the `gpu` marks, the device under test, and comparisons of device and CPU results.

Every test here runs its work on the device *and* on the CPU and compares the two, on tiny
real data (bundled digits, random-init models at small resolution). Without a CUDA device the
tests are skipped with the reason "needs CUDA"; nothing is faked.

`PROBEKIT_GPU_REHEARSAL=cpu` runs them with the CPU standing in for the device (and gloo for
NCCL). That checks the tests' own logic on a machine without a GPU; it proves nothing about
CUDA and is never what CI does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REHEARSAL = os.environ.get("PROBEKIT_GPU_REHEARSAL") == "cpu"
DEVICE = "cpu" if REHEARSAL else "cuda"
ON_CUDA = not REHEARSAL
needs_cuda = pytest.mark.skipif(not REHEARSAL and not torch.cuda.is_available(), reason="needs CUDA")
GPU = [pytest.mark.gpu, needs_cuda]  # pytestmark of every module here

REPO = Path(__file__).resolve().parents[2]


def child_env(**extra: str) -> dict:
    """Environment for probekit subprocesses: this worktree first on the path, one CPU thread."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    e.update(extra)
    return e


def probekit(*args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m probekit ARGS` in a fresh process; fails the test with its stderr tail on a non-zero exit."""
    done = subprocess.run([sys.executable, "-m", "probekit", *args], env=env or child_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"probekit {' '.join(args[:1])} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done


def torchrun(*args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 1 -m probekit ARGS`."""
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                           "-m", "probekit", *args], env=env or child_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"torchrun probekit {args[0]} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖ / ‖b‖ over the whole array (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def min_row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float((num / np.maximum(den, 1e-30)).min())


def read_log(run: Path) -> list[dict]:
    """The run's records without wall-clock fields."""
    lines = (Path(run) / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in lines]


def assert_records_close(got: list[dict], want: list[dict], *, acc_atol: float, rtol: float) -> None:
    """Same records (steps, heads, keys, every non-float field); floats within tolerance.

    Accuracy-like fields (`acc_*`, `er`) get the absolute `acc_atol` (e.g. one image of the
    eval set), every other float (`loss`, `lr_now`, ...) the relative `rtol`.
    """
    assert [(r.get("head"), r["step"]) for r in got] == [(r.get("head"), r["step"]) for r in want]
    for g, w in zip(got, want):
        assert set(g) == set(w), (g["step"], sorted(set(g) ^ set(w)))
        for key in w:
            _close(g[key], w[key], key, acc_atol if key.startswith(("acc", "er")) else None, rtol, where=f"step {w['step']} {key}")


def _close(g, w, key, atol, rtol, where):
    if isinstance(w, dict):
        assert isinstance(g, dict) and set(g) == set(w), where
        for k in w:
            _close(g[k], w[k], key, atol, rtol, f"{where}.{k}")
    elif isinstance(w, float) and not isinstance(w, bool):
        if atol is not None:
            assert abs(g - w) <= atol + 1e-12, f"{where}: {g} vs {w} (atol {atol})"
        else:
            assert g == pytest.approx(w, rel=rtol, abs=1e-9), f"{where}: {g} vs {w} (rtol {rtol})"
    else:
        assert g == w, f"{where}: {g!r} vs {w!r}"
