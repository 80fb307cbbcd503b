"""`probekit train-head --device cuda` with class-subset OOD sets (ImageNet-R: restricted logits, ObjectNet:
max over mapped logits, ID accuracy on the subsets' val rows) gives the CPU run's records."""

from __future__ import annotations

import numpy as np
import pytest
from _features import write_feature_entry
from _gpu import DEVICE, GPU, assert_records_close, read_log

from probekit.cli import main
from probekit.robustness.shifts import shift_for

pytestmark = GPU
MODEL = "synthetic"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """ImageNet-1k train / val features and ImageNet-R and ObjectNet test features near the same class centres."""
    r, o = shift_for("imagenet-r"), shift_for("objectnet")
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(1000, 32)).astype(np.float32)
    feats = lambda y: centers[y] + 0.3 * rng.normal(size=(len(y), 32)).astype(np.float32)  # noqa: E731
    ytr = rng.integers(0, 1000, 4000)
    yval = np.concatenate([rng.choice(r.all_imagenet_indices, 200), rng.choice(o.all_imagenet_indices, 200),
                           rng.integers(0, 1000, 100)])
    yr, yo = rng.integers(0, 200, 300), rng.integers(0, 113, 300)
    r_first = np.array([i[0] for i in r.imagenet_indices])
    o_first = np.array([i[0] for i in o.imagenet_indices])
    folder = tmp_path_factory.mktemp("cache")
    imagenet = dict(backbone=MODEL, weight_id="test", classes=[f"c{i}" for i in range(1000)], label_space="imagenet1k")
    write_feature_entry(folder, "imagenet", "train", feats(ytr), ytr, **imagenet)
    write_feature_entry(folder, "imagenet", "val", feats(yval), yval, **imagenet)
    write_feature_entry(folder, "imagenet-r", "test", feats(r_first[yr]), yr, backbone=MODEL, weight_id="test",
                        classes=list(r.classes), label_space="imagenet-r200")
    write_feature_entry(folder, "objectnet", "test", feats(o_first[yo]), yo, backbone=MODEL, weight_id="test",
                        classes=list(o.classes), label_space="objectnet113")
    return folder


SOLVERS = {
    "sgd-float32": ["--solver", "sgd", "--lr", "1.0", "3.0", "--seeds", "0", "1", "--batch-size", "1000", "--epochs", "3"],
    "sgd-float16": ["--solver", "sgd", "--lr", "1.0", "--batch-size", "1000", "--epochs", "3", "--storage-dtype", "float16"],
    "lbfgs-float32": ["--solver", "lbfgs", "--l2-grid", "10", "0.1", "--val-fraction", "0.2", "--max-iter", "30",
                      "--tol", "1e-4", "--lbfgs-dtype", "float32", "--eval-every", "5"],
}


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_class_subset_shift_records_on_device_equal_cpu(store, tmp_path, solver):
    def run(device, name):
        out = tmp_path / name
        rc = main(["train-head", "--model", MODEL, "--cache-dir", str(store), "--train", "imagenet:train",
                   "--id", "imagenet:val", "--ood", "imagenet-r:test", "objectnet:test", "--baseline", "imagenet-objectnet",
                   "--device", device, "--out", str(out), "--no-progress", *SOLVERS[solver]])
        assert rc == 0
        return read_log(out)

    cpu, dev = run("cpu", "cpu"), run(DEVICE, "device")
    last = cpu[-1]
    assert last["id_eval"] == {"imagenet-r:test": "val-on-imagenet-r-classes", "objectnet:test": "val-on-objectnet-classes"}
    assert set(last["er"]) == {"objectnet:test"} and last["acc_ood"]["objectnet:test"] > 0.3  # learned, restricted scoring
    # one image of the smallest scored set (ObjectNet's 200 val rows) may flip between devices
    assert_records_close(dev, cpu, acc_atol=1.5 / 200, rtol=1e-3)
