"""Two-process DistributedDataParallel fine-tuning on CPU (gloo) through torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_torchrun_two_processes_write_one_consistent_log(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "probekit", "finetune", "--model", "test_resnet", "--weights", "none", "--dataset", "digits:test",
           "--id", "digits:test", "--ood", "mnist5k", "--eval-subset", "5", "--image-size", "32", "--lr", "0.05",
           "--seeds", "0", "--batch-size", "32", "--eval-every", "2", "--max-steps", "4", "--device", "cpu",
           "--no-progress", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 2, 4]  # rank 0 alone writes: no duplicates
    for r in records:
        assert r["n_id"] == 50 and r["n_ood"] == {"mnist5k:test": 50}  # the two shards cover the subset once
        assert 0 <= r["acc_id"] <= 1 and 0 <= r["acc_ood"]["mnist5k:test"] <= 1
    assert records[-1]["loss"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["world_size"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 4
    import torch

    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 4
    assert done.stdout.count("lr=0.05,seed=0") == 1  # rank 0 alone reports
    # every evaluation's predictions under DDP: rank 0 predicts every row itself; the last equals the final-step file
    import numpy as np

    every = tmp_path / "every"
    done = subprocess.run(cmd[:-1] + [str(every), "--save-predictions", "every-eval"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [json.loads(line) for line in (every / "log.jsonl").read_text().splitlines()][-1]["acc_ood"] == records[-1]["acc_ood"]
    with np.load(out / "predictions.npz") as end, np.load(every / "predictions.npz") as z:
        assert list(end["steps"]) == [4] and list(z["steps"]) == [0, 2, 4]
        assert np.array_equal(z["mnist5k:test"][-1], end["mnist5k:test"][0])
        assert np.array_equal(z["mnist5k:test__index"], end["mnist5k:test__index"])


def test_one_torchrun_process_joins_a_process_group(request):
    """`torchrun --nproc-per-node 1` runs the multi-GPU code (DDP, all-reduces), so one GPU can test it."""
    import torch

    from probekit.finetune import ddp

    assert ddp.setup("cpu")[0].enabled is False  # a plain process: no group
    request.getfixturevalue("torchrun_env")
    dist, device = ddp.setup("cpu")
    try:
        assert dist.enabled and torch.distributed.is_initialized() and torch.distributed.get_backend() == "gloo"
        assert ddp.all_sum(dist, torch.ones(2)).tolist() == [1.0, 1.0] and ddp.any_true(dist, True, device)
    finally:
        ddp.teardown(dist)
    assert not torch.distributed.is_initialized()
