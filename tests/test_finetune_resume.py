"""Kill a fine-tuning run (SIGKILL after an epoch checkpoint, SIGTERM mid-epoch), resume, compare logs.

The resumed run's log must equal an uninterrupted run's, record for record, apart from
wall-clock fields: same data order, augmentation, learning rate and running loss.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ARGS = ["-m", "probekit", "finetune", "--model", "test_resnet", "--weights", "none", "--dataset", "digits:test",
        "--id", "digits:test", "--ood", "mnist5k", "--eval-subset", "5", "--image-size", "32", "--lr", "0.05",
        "--seeds", "0", "--batch-size", "32", "--eval-every", "2", "--max-steps", "20", "--no-progress"]
STEPS_PER_EPOCH = 450 // 32  # 14: the epoch checkpoint lands at step 14
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *ARGS, "--out", str(out), *extra], env=ENV, capture_output=True, text=True, timeout=300)


def _records(out: Path) -> list[dict]:
    lines = (out / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in lines]


def _steps(out: Path) -> list[int]:
    try:
        return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines() if line.endswith("}")]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _start_and_signal(out: Path, sig: int, when_step: int) -> tuple[subprocess.Popen, str]:
    """Start a run and send `sig` as soon as its log holds a record at `when_step` or later."""
    proc = subprocess.Popen([sys.executable, *ARGS, "--out", str(out)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(s >= when_step for s in _steps(out)):
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=120)
    return proc, err


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    done = _run(out, "--save-predictions", "every-eval")  # (predictions change no record)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def reference(uninterrupted) -> list[dict]:
    records = _records(uninterrupted)
    assert [r["step"] for r in records] == list(range(0, 21, 2))
    return records


def test_sigkill_after_an_epoch_checkpoint_then_resume_matches(tmp_path, reference):
    out = tmp_path / "killed"
    proc, _ = _start_and_signal(out, signal.SIGKILL, STEPS_PER_EPOCH + 2)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert max(_steps(out)) > STEPS_PER_EPOCH  # records past the checkpoint, to be truncated
    assert not (out / "summary.json").exists()
    resumed = _run(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _records(out) == reference
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"


def test_sigterm_mid_epoch_checkpoints_and_resume_with_workers_matches(tmp_path, reference):
    import torch

    out = tmp_path / "terminated"
    proc, stderr = _start_and_signal(out, signal.SIGTERM, 4)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    err = stderr.strip().splitlines()[-1]
    assert "stopped by SIGTERM" in err and "--resume" in err
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert 4 <= state["step"] < STEPS_PER_EPOCH  # a mid-epoch checkpoint
    resumed = _run(out, "--resume", "--workers", "1")  # workers do not change the augmentation
    assert resumed.returncode == 0, resumed.stderr
    assert _records(out) == reference


# Killed inside the write of step 16's predictions (after the epoch checkpoint at 14), with half the file written.
_KILL_IN_PREDICTIONS_WRITE = """
import os, signal, sys
real_fsync = os.fsync
def fsync(fd):
    name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    if name.startswith(".predictions-0-step-00000016.npz."):
        os.ftruncate(fd, os.fstat(fd).st_size // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(fd)
os.fsync = fsync
from probekit.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="needs /proc to name the file being written")
def test_sigkill_inside_a_predictions_write_leaves_no_complete_looking_file(tmp_path, uninterrupted, reference):
    import numpy as np

    out = tmp_path / "killed"
    argv = [a for a in ARGS if a != "-m" and a != "probekit"]
    proc = subprocess.run([sys.executable, "-c", _KILL_IN_PREDICTIONS_WRITE, *argv, "--out", str(out), "--save-predictions", "every-eval"],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    parts = out / "checkpoints"
    assert 16 in _steps(out) and not (out / "summary.json").exists() and not (out / "predictions.npz").exists()
    assert not (parts / "predictions-0-step-00000016.npz").exists()   # the torn write never got the part's name
    assert list(parts.glob(".predictions-0-step-00000016.npz.*.tmp"))  # it is a hidden temporary file
    assert all((parts / f"predictions-0-step-{s:08d}.npz").exists() for s in range(0, 15, 2))  # those its log and checkpoint keep

    resumed = _run(out, "--resume", "--save-predictions", "every-eval")
    assert resumed.returncode == 0, resumed.stderr
    assert _records(out) == reference
    assert not list(parts.glob(".predictions-*.tmp"))
    with np.load(out / "predictions.npz") as got, np.load(uninterrupted / "predictions.npz") as want:
        assert sorted(got.files) == sorted(want.files) and list(got["steps"]) == list(range(0, 21, 2))
        for key in want.files:
            assert np.array_equal(got[key], want[key]), key
    # resuming with the other --save-predictions is another configuration (its parts would not cover the log)
    (out / "summary.json").unlink()
    other = _run(out, "--resume")
    assert other.returncode == 2 and "save_predictions" in other.stderr, other.stderr
