"""`torchrun --nproc-per-node 2 -m probekit extract ...` on CPU (gloo): one complete file, same features."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from _extract_helpers import MODEL, SIZE, env, save_random_weights

from probekit import cache
from probekit import extract as E


def test_shard_ranges_are_whole_batches_covering_everything():
    for n, bs, world in [(450, 32, 2), (450, 32, 3), (10, 4, 4), (5, 8, 2), (1000, 1, 7)]:
        ranges = [E.shard_range(n, bs, r, world) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(s % bs == 0 for s, _ in ranges)


@pytest.mark.slow
def test_torchrun_two_ranks_make_one_file_equal_to_single_process(tmp_path):
    weights = save_random_weights(tmp_path / "tiny.pth", seed=0)
    args = ["--model", MODEL, "--dataset", "digits", "--split", "test", "--weights", str(weights),
            "--image-size", str(SIZE), "--batch-size", "32", "--no-progress"]
    ddp_dir = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "probekit", "extract", *args, "--cache-dir", str(ddp_dir)],
                          env={**env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(p.name for p in ddp_dir.iterdir() if not p.name.endswith(".lock"))
    assert len(files) == 1 and files[0].endswith(".h5"), files  # shards merged and removed
    assert proc.stdout.count(files[0]) == 1  # printed once, by rank 0
    ddp = cache.load_features(ddp_dir / files[0])
    assert ddp.attrs["world_size"] == 2 and ddp.attrs["merged_from_shards"] == 2

    torch.set_num_threads(1)
    single = cache.load_features(E.extract(MODEL, "digits", "test", weights=str(weights), cache_dir=tmp_path / "one",
                                           image_size=SIZE, batch_size=32, progress=False))
    assert single.path.name == files[0]
    np.testing.assert_array_equal(ddp.index, single.index)
    np.testing.assert_array_equal(ddp.labels, single.labels)
    np.testing.assert_allclose(ddp.features, single.features, rtol=1e-5, atol=1e-6)

    # a second torchrun is a cache hit on every rank
    again = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "probekit", "extract", *args, "--cache-dir", str(ddp_dir)],
                           env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and files[0] in again.stdout


def test_one_torchrun_process_takes_the_shard_path(tmp_path, request):
    """`torchrun --nproc-per-node 1`: the multi-GPU path (shard + merge) runs, so one GPU can test it."""
    weights = save_random_weights(tmp_path / "tiny.pth", seed=0)
    kw = dict(weights=str(weights), image_size=SIZE, batch_size=32, progress=False, device="cpu")
    single = cache.load_features(E.extract(MODEL, "digits", "test", cache_dir=tmp_path / "one", **kw))
    request.getfixturevalue("torchrun_env")  # from here on this process looks launched by torchrun
    path = E.extract(MODEL, "digits", "test", cache_dir=tmp_path / "ddp", **kw)
    assert not torch.distributed.is_initialized()  # extract left no process group behind
    fs = cache.load_features(path)
    assert fs.attrs["world_size"] == 1 and fs.attrs["merged_from_shards"] == 1 and path.name == single.path.name
    np.testing.assert_array_equal(fs.features, single.features)
    assert [p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")] == [path.name]
