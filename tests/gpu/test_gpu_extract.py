"""`probekit extract` on CUDA: autocast fp32 / bf16 / fp16, channels_last, DataLoader workers and the
pinned, non-blocking copies with the writer thread's event sync, compared with the CPU fp32 features;
one entry per precision; a SIGKILLed extract resumed on the device is bit-identical; float16 storage.

The model is timm's tiny `test_efficientnet` (random init saved to a file, 32 px) on digits:test.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
from _extract_helpers import MODEL, SIZE, hooked_cli, save_random_weights
from _gpu import DEVICE, GPU, min_row_cosine, relative_error

from probekit import cache
from probekit import extract as E

pytestmark = GPU

# (precision, DataLoader workers, max relative error vs CPU fp32, min per-row cosine). fp32 on CUDA
# convolves in TF32 (PyTorch's cuDNN default: fp16's 10-bit mantissa), so it is close to, not equal
# to, the CPU. A broken path (NaN, wrong layout, unsynchronised copy) is off by ~1, far outside these.
CASES = [("fp32", 0, 2e-2, 0.999), ("bf16", 2, 8e-2, 0.99), ("fp16", 2, 3e-2, 0.998)]
BATCH = 32


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_random_weights(tmp_path_factory.mktemp("w") / "tiny.pth", seed=0)


def _extract(weights, folder, device, precision="fp32", workers=0, dtype="float32"):
    return E.extract(MODEL, "digits", "test", weights=str(weights), cache_dir=folder, image_size=SIZE, batch_size=BATCH,
                     device=device, precision=precision, workers=workers, dtype=dtype, progress=False, quiet=True)


@pytest.fixture(scope="module")
def cpu_fp32(tmp_path_factory, weights):
    return cache.load_features(_extract(weights, tmp_path_factory.mktemp("cpu"), "cpu"))


@pytest.fixture(scope="module")
def on_device(tmp_path_factory, weights):
    """The three precisions extracted on the device into one store: {precision: FeatureSet}."""
    folder = tmp_path_factory.mktemp("device")
    return {p: cache.load_features(_extract(weights, folder, DEVICE, p, workers)) for p, workers, *_ in CASES}


@pytest.mark.parametrize("precision, workers, max_err, min_cos", CASES, ids=[c[0] for c in CASES])
def test_extract_on_device_is_close_to_cpu_fp32(on_device, cpu_fp32, precision, workers, max_err, min_cos):
    fs = on_device[precision]
    assert fs.attrs["precision"] == precision and fs.attrs["complete"]
    np.testing.assert_array_equal(fs.index, cpu_fp32.index)
    np.testing.assert_array_equal(fs.labels, cpu_fp32.labels)
    assert fs.features.dtype == np.float32 and np.isfinite(fs.features).all() and fs.features.std() > 0
    err, cos = relative_error(fs.features, cpu_fp32.features), min_row_cosine(fs.features, cpu_fp32.features)
    assert err <= max_err and cos >= min_cos, f"{precision}: relative error {err:.2e}, min row cosine {cos:.6f}"


def test_each_precision_is_its_own_entry(on_device, cpu_fp32, weights):
    paths = {p: fs.path for p, fs in on_device.items()}
    assert len(set(paths.values())) == 3 and len({p.parent for p in paths.values()}) == 1
    assert len(list(paths["fp32"].parent.glob("*.h5"))) == 3
    assert paths["fp32"].name == cpu_fp32.path.name  # the device is not part of the key: fp32 is fp32
    folder = paths["fp32"].parent
    for precision, path in paths.items():  # each is where its own key puts it
        assert E.entry_for(MODEL, "digits", "test", weights=str(weights), cache_dir=folder, image_size=SIZE,
                           precision=precision) == path


def test_float16_storage_on_device(on_device, weights, tmp_path):
    """--dtype float16: the same device computation, stored as float16 (half the bytes, a separate entry)."""
    path = _extract(weights, tmp_path, DEVICE, "fp32", 2, dtype="float16")
    assert path.name != on_device["fp32"].path.name
    fs = cache.load_features(path, dtype=np.float16)
    assert fs.features.dtype == np.float16 and fs.attrs["dtype"] == "float16"
    want = on_device["fp32"].features
    np.testing.assert_allclose(fs.features.astype(np.float32), want.astype(np.float16).astype(np.float32), rtol=2e-3, atol=1e-3)


def test_resume_after_sigkill_is_bit_identical_on_device(on_device, weights, tmp_path):
    """bf16 with 2 workers on the device: SIGKILL after 3 committed batches, resume, compare bit for bit."""
    args = ["extract", "--model", MODEL, "--dataset", "digits", "--split", "test", "--weights", str(weights),
            "--image-size", str(SIZE), "--batch-size", str(BATCH), "--cache-dir", str(tmp_path), "--device", DEVICE,
            "--precision", "bf16", "--workers", "2", "--no-progress"]
    marker = tmp_path / "paused"
    proc = hooked_cli(args, {"HOOK_PAUSE_AFTER": "3", "HOOK_MARKER": str(marker)})
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert proc.poll() is None, "extract ended before it was killed"
        assert time.monotonic() < deadline, "extract made no commit in 180 s"
        time.sleep(0.05)
    time.sleep(0.3)  # batches past the commit are computed (and lost) before the kill
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert int(marker.read_text()) == 3 * BATCH and not list(tmp_path.glob("*.h5"))
    path = _extract(weights, tmp_path, DEVICE, "bf16", 2)
    fs = cache.load_features(path)
    want = on_device["bf16"]
    assert path.name == want.path.name
    assert np.array_equal(fs.features, want.features) and np.array_equal(fs.index, want.index)
