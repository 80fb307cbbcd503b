"""Zero-shot CLIP heads built on CUDA (text tower on the device) equal the CPU-built head, and
`train-head --init zero-shot --device cuda` starts from the same zero-shot point as on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
from _clip import MODEL, matching_features, save_tiny_clip
from _features import write_feature_entry
from _gpu import DEVICE, GPU, assert_records_close, read_log

from probekit.backbones.weights import weight_id
from probekit.cli import main
from probekit.zeroshot import zero_shot_head

pytestmark = GPU
NAMES = ("red apple", "blue whale", "steam locomotive")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinyclip")
    weights, _ = save_tiny_clip(root)
    classes = root / "classes.txt"
    classes.write_text("\n".join(NAMES) + "\n")
    return weights, classes


def test_zero_shot_head_built_on_device_equals_cpu(clip, tmp_path):
    weights, classes = clip
    cpu = zero_shot_head(MODEL, str(classes), weights=weights, device="cpu", use_cache=False)
    dev = zero_shot_head(MODEL, str(classes), weights=weights, device=DEVICE, use_cache=False)
    assert dev.W.shape == (32, 3) and dev.W.dtype == np.float32
    np.testing.assert_allclose(dev.W, cpu.W, rtol=1e-4, atol=1e-5)
    assert dev.logit_scale == pytest.approx(cpu.logit_scale, rel=1e-6)
    X, _ = matching_features(cpu.W, 20, 0.05, 0)
    np.testing.assert_array_equal(dev.logits(X).argmax(1), cpu.logits(X).argmax(1))


def test_train_head_init_zero_shot_on_device_equals_cpu(clip, tmp_path):
    weights, classes = clip
    head = zero_shot_head(MODEL, str(classes), weights=weights, device="cpu", use_cache=False)
    entry = dict(backbone=MODEL, weight_id=weight_id(weights), classes=NAMES, label_space="synth3",
                 feature_kind="clip-image-embed", weights=str(weights))
    data = {split: matching_features(head.W, 10, 0.1, seed) for split, seed in (("train", 1), ("test", 2))}

    def run(device, name):
        store = tmp_path / name / "cache"  # a store (and text cache) each: the device run builds its own head
        for split, (X, y) in data.items():
            write_feature_entry(store, "synth", split, X, y, **entry)
        rc = main(["train-head", "--model", MODEL, "--weights", str(weights), "--cache-dir", str(store), "--init", "zero-shot",
                   "--classes", str(classes), "--train", "synth:train", "--id", "synth:test", "--lr", "0.1",
                   "--batch-size", "8", "--epochs", "1", "--eval-every", "1", "--device", device,
                   "--out", str(tmp_path / name / "run"), "--no-progress"])
        assert rc == 0
        assert list((store / "text").glob("*.npz"))  # built here, then cached
        return read_log(tmp_path / name / "run")

    cpu, dev = run("cpu", "cpu"), run(DEVICE, "device")
    assert 0.0 < cpu[0]["acc_id"] < 1.0  # step 0 is the zero-shot head itself
    assert_records_close(dev, cpu, acc_atol=1.5 / 30, rtol=1e-3)
