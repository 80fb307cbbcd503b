"""`torchrun --nproc-per-node 1` on the device: one process still takes the multi-GPU path (extract: a
shard per rank merged by rank 0; finetune: DistributedDataParallel over NCCL), and gives what the
plain single-process run gives. No --device: each rank picks cuda:LOCAL_RANK itself."""

from __future__ import annotations

import json

import numpy as np
from _extract_helpers import MODEL, SIZE, save_random_weights
from _gpu import DEVICE, GPU, ON_CUDA, assert_records_close, child_env, probekit, read_log, torchrun

from probekit import cache

pytestmark = GPU


def test_torchrun_extract_merges_one_shard_equal_to_the_plain_run(tmp_path):
    weights = save_random_weights(tmp_path / "tiny.pth", seed=0)
    args = ["extract", "--model", MODEL, "--dataset", "digits", "--split", "test", "--weights", str(weights),
            "--image-size", str(SIZE), "--batch-size", "32", "--precision", "bf16", "--no-progress"]
    torchrun(*args, "--cache-dir", str(tmp_path / "ddp"))
    files = [p for p in (tmp_path / "ddp").iterdir() if not p.name.endswith(".lock")]
    assert len(files) == 1 and files[0].suffix == ".h5", files  # the shard was merged and removed
    ddp = cache.load_features(files[0])
    assert ddp.attrs["world_size"] == 1 and ddp.attrs["merged_from_shards"] == 1
    probekit(*args, "--device", DEVICE, "--cache-dir", str(tmp_path / "one"))
    single = cache.load_features(next((tmp_path / "one").glob("*.h5")))
    assert single.path.name == files[0].name
    np.testing.assert_array_equal(ddp.index, single.index)
    np.testing.assert_allclose(ddp.features, single.features, rtol=1e-5, atol=1e-6)


def test_torchrun_finetune_over_nccl_logs_the_plain_run(tmp_path):
    args = ["finetune", "--model", "test_resnet", "--weights", "none", "--dataset", "digits:test", "--id", "digits:test",
            "--ood", "mnist5k", "--eval-subset", "5", "--image-size", "32", "--lr", "0.05", "--seeds", "0",
            "--batch-size", "32", "--eval-every", "2", "--max-steps", "4", "--no-progress"]
    done = torchrun(*args, "--out", str(tmp_path / "ddp"), env=child_env(NCCL_DEBUG="INFO"))
    if ON_CUDA:
        assert "NCCL INFO" in done.stdout + done.stderr  # the process group really is NCCL
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["run"]["world_size"] == 1 and config["run"]["device"].startswith(DEVICE)
    probekit(*args, "--device", DEVICE, "--out", str(tmp_path / "one"))
    assert_records_close(read_log(tmp_path / "ddp"), read_log(tmp_path / "one"), acc_atol=1.0 / 50, rtol=1e-3)
