"""`probekit finetune` on CUDA: autocast (bf16, fp16 with its GradScaler) and channels_last, compared with
the CPU fp32 run; a run SIGKILLed after an epoch checkpoint and resumed on the device logs what an
uninterrupted device run logs. timm's tiny `test_resnet`, random init, 32 px, digits (ID) / MNIST-5k (OOD).
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _gpu import DEVICE, GPU, ON_CUDA, REPO, assert_records_close, child_env, probekit, read_log

pytestmark = GPU

ARGS = ["finetune", "--model", "test_resnet", "--weights", "none", "--dataset", "digits:test", "--id", "digits:test",
        "--ood", "mnist5k", "--eval-subset", "5", "--image-size", "32", "--lr", "0.05", "--seeds", "0",
        "--batch-size", "32", "--eval-every", "2", "--no-progress"]
N_EVAL = 50  # 5 per class
STEPS_PER_EPOCH = 450 // 32  # 14: epoch checkpoints at 14 and 28


def _finetune(out: Path, *extra: str) -> list[dict]:
    probekit(*ARGS, "--out", str(out), *extra)
    return read_log(out)


@pytest.fixture(scope="module")
def cpu_fp32(tmp_path_factory):
    return _finetune(tmp_path_factory.mktemp("cpu") / "run", "--device", "cpu", "--precision", "fp32", "--max-steps", "6")


# (precision, accuracy tolerance, loss rtol): a random-init network's near-tied logits flip under
# reduced precision, so accuracies get a wide margin; the training loss must track the CPU's closely.
AMP = [("fp32", 0.1, 0.05), ("bf16", 0.2, 0.1), ("fp16", 0.2, 0.1)]


@pytest.mark.parametrize("precision, acc_atol, loss_rtol", AMP, ids=[a[0] for a in AMP])
def test_finetune_with_amp_on_device_is_close_to_cpu(cpu_fp32, tmp_path, precision, acc_atol, loss_rtol):
    out = tmp_path / "run"
    records = _finetune(out, "--device", DEVICE, "--precision", precision, "--max-steps", "6")
    config = json.loads((out / "config.json").read_text())
    assert config["precision"] == precision and config["run"]["channels_last"] is ON_CUDA
    assert all(math.isfinite(r["loss"]) for r in records[1:])
    assert_records_close(records, cpu_fp32, acc_atol=acc_atol, rtol=loss_rtol)
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 6
    if precision == "fp16":  # the loss scaler is live (and finite) only under fp16
        assert state["scaler"] and math.isfinite(float(state["scaler"]["scale"])) and float(state["scaler"]["scale"]) > 0


def _steps(out: Path) -> list[int]:
    try:
        return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines() if line.endswith("}")]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def test_kill_and_resume_on_device_logs_the_uninterrupted_run(tmp_path):
    """Default precision (bf16 autocast on CUDA): SIGKILL once the log is past the first epoch checkpoint."""
    common = ["--device", DEVICE, "--max-steps", "40"]
    reference = _finetune(tmp_path / "reference", *common)
    assert [r["step"] for r in reference] == list(range(0, 41, 2))

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "probekit", *ARGS, "--out", str(out), *common], env=child_env(),
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(s > STEPS_PER_EPOCH for s in _steps(out)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"the run ended (exit {proc.returncode}) before it could be killed: {err[-2000:]}"
    assert not (out / "summary.json").exists()
    resumed = _finetune(out, *common, "--resume")
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"
    # cuDNN may pick non-deterministic backward kernels: the same records, floats to rounding
    assert_records_close(resumed, reference, acc_atol=1.0 / N_EVAL, rtol=1e-3)
