"""Stage 1 end to end on real data (bundled digits, image folders) with a tiny real timm model.

Weights are random-init saved to a file and loaded back through the real loading path, so
entries are deterministic. Every subprocess uses one thread, like this process.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _extract_helpers import MODEL, SIZE, env, hooked_cli, save_random_weights

from probekit import features
from probekit import cache
from probekit import extract as E
from probekit.cli import main
from probekit.errors import UserError


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_random_weights(tmp_path_factory.mktemp("w") / "tiny.pth", seed=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, weights):
    """An uninterrupted extract of digits:test, batch 32."""
    folder = tmp_path_factory.mktemp("ref")
    torch.set_num_threads(1)
    path = E.extract(MODEL, "digits", "test", weights=str(weights), cache_dir=folder, image_size=SIZE, batch_size=32,
                     progress=False)
    return cache.load_features(path)


def _args(weights, cache_dir, split="test", *more):
    return ["extract", "--model", MODEL, "--dataset", "digits", "--split", split, "--weights", str(weights),
            "--image-size", str(SIZE), "--batch-size", "32", "--cache-dir", str(cache_dir), "--no-progress", *more]


def test_entry_contents_and_cache_hit(reference, weights, monkeypatch):
    from probekit.datasets import create_dataset

    fs = reference
    ds = create_dataset("digits", "test")
    assert fs.features.shape == (len(ds), 256) and fs.features.dtype == np.float32
    np.testing.assert_array_equal(fs.labels, ds.targets)
    np.testing.assert_array_equal(fs.index, np.arange(len(ds)))
    a = fs.attrs
    assert a["backbone"] == MODEL and a["weight_id"].startswith("sha256:") and a["dataset"] == "digits" and a["split"] == "test"
    assert a["classes"] == list(ds.classes) and a["label_space"] == ds.label_space and a["versions"]["torch"]
    assert a["transform_id"] and a["feature_kind"] == "penultimate" and a["complete"]
    assert "--image-size 32" in a["extract_command"]
    assert np.isfinite(fs.features).all() and fs.features.std() > 0

    def boom(*a, **k):
        raise AssertionError("a cache hit must not run the model")

    monkeypatch.setattr(E, "_run_positions", boom)
    t0 = time.monotonic()
    again = E.extract(MODEL, "digits", "test", weights=str(weights), cache_dir=fs.path.parent, image_size=SIZE, progress=False)
    assert again == fs.path and time.monotonic() - t0 < 30


def test_other_weights_or_transform_make_other_entries(reference, weights, tmp_path):
    other = save_random_weights(tmp_path / "other.pth", seed=1)
    folder = reference.path.parent
    kw = dict(cache_dir=folder, image_size=SIZE)
    assert E.entry_for(MODEL, "digits", "test", weights=str(weights), **kw) == reference.path
    assert E.entry_for(MODEL, "digits", "test", weights=str(other), **kw) != reference.path
    assert E.entry_for(MODEL, "digits", "test", weights=str(weights), cache_dir=folder, image_size=40) != reference.path
    assert E.entry_for(MODEL, "digits", "test", weights=str(weights), precision="bf16", **kw) != reference.path
    # lookup by name finds it without building anything
    assert features.find_features(MODEL, "digits:test", weights=str(weights), cache_dir=folder, image_size=SIZE) == reference.path
    with pytest.raises(UserError, match="no cached features"):
        features.find_features(MODEL, "digits:test", weights=str(other), cache_dir=folder, image_size=SIZE)


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(reference, weights, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "paused"
    proc = hooked_cli(_args(weights, tmp_path), {"HOOK_PAUSE_AFTER": "3", "HOOK_MARKER": str(marker)})
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, "extract ended before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)  # let it compute (uncommitted) batches past the commit
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partials = list(tmp_path.glob("*.h5.partial"))
    assert len(partials) == 1 and not list(tmp_path.glob("*.h5"))
    assert int(marker.read_text()) == 96
    with pytest.raises(UserError, match=r"incomplete \(96 of 450 rows\); rerun `probekit extract"):
        cache.load_features(partials[0])
    starts = []
    run = E._run_positions
    monkeypatch.setattr(E, "_run_positions", lambda p, w, start, stop, **k: (starts.append((start, k["batch_size"])), run(p, w, start, stop, **k))[1])
    # a different --batch-size on resume is overridden by the partial's own, keeping batches aligned
    path = E.extract(MODEL, "digits", "test", weights=str(weights), cache_dir=tmp_path, image_size=SIZE, batch_size=50, progress=False)
    assert starts == [(96, 32)] and "resuming" in capsys.readouterr().err
    assert path.name == reference.path.name and not partials[0].exists()
    fs = cache.load_features(path)
    assert np.array_equal(fs.features, reference.features) and np.array_equal(fs.index, reference.index)


@pytest.mark.slow
def test_kills_at_random_moments_never_leave_a_complete_looking_file(reference, weights, tmp_path):
    """SIGKILL twice at random moments while commits run back to back; then resume to the end."""
    import random

    rng = random.Random(0)
    for attempt in range(2):
        mark = tmp_path / f"first-{attempt}"
        proc = hooked_cli(_args(weights, tmp_path), {"HOOK_MARK_FIRST": str(mark)})
        deadline = time.monotonic() + 120
        while not mark.exists() and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finals = list(tmp_path.glob("*.h5"))
        for f in finals:  # only if the run had already finished: then it must be whole
            assert np.array_equal(cache.load_features(f).features, reference.features)
        for p in tmp_path.glob("*.partial"):
            with pytest.raises(UserError):
                cache.load_features(p)
    path = E.extract(MODEL, "digits", "test", weights=str(weights), cache_dir=tmp_path, image_size=SIZE, batch_size=32, progress=False)
    assert np.array_equal(cache.load_features(path).features, reference.features)


@pytest.mark.slow
def test_two_processes_one_entry(reference, weights, tmp_path):
    marker, release = tmp_path / "first-commit", tmp_path / "release"
    a = hooked_cli(_args(weights, tmp_path), {"HOOK_HOLD_UNTIL": str(release), "HOOK_MARKER": str(marker)},
                   stdout=open(tmp_path / "a.out", "w"), stderr=open(tmp_path / "a.err", "w"))
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert a.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    import subprocess
    import sys

    b = subprocess.Popen([sys.executable, "-m", "probekit", *_args(weights, tmp_path)], env=env(),
                         stdout=open(tmp_path / "b.out", "w"), stderr=open(tmp_path / "b.err", "w"))
    while "waiting for another probekit extract" not in (tmp_path / "b.err").read_text():
        assert b.poll() is None and time.monotonic() < deadline, (tmp_path / "b.err").read_text()
        time.sleep(0.05)
    assert f"(pid {a.pid})" in (tmp_path / "b.err").read_text()
    release.touch()
    assert a.wait(120) == 0 and b.wait(120) == 0
    out_a, out_b = (tmp_path / "a.out").read_text().split()[0], (tmp_path / "b.out").read_text().split()[0]
    assert out_a == out_b and Path(out_a).name == reference.path.name
    fs = cache.load_features(out_a)
    assert np.array_equal(fs.features, reference.features)
    assert not list(tmp_path.glob("*.partial"))


def _image_tree(root: Path, bad: bool = True) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            mode = ("RGB", "L", "RGBA", "CMYK", "P")[i]
            arr = rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).convert(mode).save(root / cls / f"{i}.{'jpg' if mode == 'CMYK' else 'png'}")
    if bad:
        (root / "dog" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_fails_naming_the_file(weights, tmp_path, workers):
    tree = _image_tree(tmp_path / "imgs")
    with pytest.raises(UserError, match=r"cannot read image .*dog/2\.png.*--skip-bad"):
        E.extract(MODEL, f"folder:{tree}", "all", weights=str(weights), cache_dir=tmp_path / "c", image_size=SIZE,
                  batch_size=4, workers=workers, progress=False)
    assert not list((tmp_path / "c").glob("*.h5"))


def test_skip_bad_records_and_leaves_out(weights, tmp_path):
    tree = _image_tree(tmp_path / "imgs")
    path = E.extract(MODEL, f"folder:{tree}", "all", weights=str(weights), cache_dir=tmp_path / "c", image_size=SIZE,
                     batch_size=4, workers=2, skip_bad=True, progress=False)
    fs = cache.load_features(path)
    assert fs.attrs["skipped"] == [7] and fs.attrs["n_skipped"] == 1 and len(fs) == 9
    assert 7 not in fs.index.tolist() and fs.index.tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9]
    assert fs.labels.tolist() == [0] * 5 + [1] * 4


def test_cli_bad_names_and_read_only_folder_exit_2_one_line(weights, tmp_path, capsys):
    assert main(["extract", "--model", "efficientnet_lite", "--dataset", "digits", "--split", "test", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("probekit: error: unknown backbone") and "did you mean" in err and "\n" not in err
    assert main(["extract", "--model", MODEL, "--weights", str(weights), "--dataset", "digitz", "--split", "test", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown" in err and "digits" in err and "\n" not in err
    from test_cache import _read_only_folder

    ro = _read_only_folder(tmp_path)
    t0 = time.monotonic()
    assert main(["extract", "--model", MODEL, "--dataset", "digits", "--split", "test", "--cache-dir", str(ro)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{ro}" in err and "not writable" in err and "\n" not in err and time.monotonic() - t0 < 5


def test_cli_cache_ls_and_info(reference, capsys):
    folder = reference.path.parent
    assert main(["cache", "ls", "--cache-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "model" in out and MODEL in out and " 450 " in out and " 256 " in out and "complete" in out and "KiB" in out
    assert main(["cache", "info", reference.path.name[:20], "--cache-dir", str(folder), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "weight_id: sha256:" in out and "features: shape [450, 256] float32" in out and "verified: checksum matches" in out
    assert main(["cache", "info", "nope", "--cache-dir", str(folder)]) == 2


@pytest.mark.slow
def test_done_when_efficientnet_lite0_on_digits_train(tmp_path, capsys):
    """The issue's "done when" command (at a small image size to save time): a 1280-d feature file."""
    assert main(["extract", "--model", "efficientnet_lite0", "--dataset", "digits", "--split", "train",
                 "--image-size", "32", "--cache-dir", str(tmp_path), "--no-progress"]) == 0
    path = Path(capsys.readouterr().out.split()[0])
    fs = cache.load_features(path)
    assert fs.features.shape == (1347, 1280) and fs.attrs["weight_id"].startswith("sha256:")
    # pretrained features separate the digits far better than chance: nearest class mean on train
    means = np.stack([fs.features[fs.labels == c].mean(0) for c in range(10)])
    pred = np.argmin(((fs.features[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == fs.labels).mean() > 0.5


def test_bf16_autocast_and_float16_storage_are_their_own_entries(reference, weights):
    folder = reference.path.parent
    kw = dict(weights=str(weights), cache_dir=folder, image_size=SIZE, batch_size=32, progress=False)
    bf16 = cache.load_features(E.extract(MODEL, "digits", "test", precision="bf16", **kw))
    half = cache.load_features(E.extract(MODEL, "digits", "test", dtype="float16", **kw), dtype=np.float32)
    assert len({bf16.path, half.path, reference.path}) == 3
    assert bf16.attrs["precision"] == "bf16" and half.attrs["dtype"] == "float16"
    scale = np.abs(reference.features).max()
    assert np.abs(bf16.features - reference.features).max() < 0.1 * scale
    np.testing.assert_allclose(half.features, reference.features, atol=2e-3 * scale, rtol=1e-2)
    with pytest.raises(UserError, match="unknown precision"):
        E.extract(MODEL, "digits", "test", precision="int8", **kw)


def test_non_finite_features_are_never_stored(weights, tmp_path, capsys):
    """Issue 13 case 6: NaN weights give no "complete" entry of NaN features, and the advice is not to rerun the same."""
    state = torch.load(weights, weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)  # a conv kernel
    state[name] = torch.full_like(state[name], float("nan"))
    bad = tmp_path / "nan.pth"
    torch.save(state, bad)
    store = tmp_path / "c"
    assert main(_args(bad, store)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("probekit: error:"), err
    assert "NaN/Inf feature values on digits:test" in err[0] and "not stored" in err[0] and "weights" in err[0]
    assert "rerun" not in err[0] and "resume" not in err[0]
    assert list(store.iterdir()) == [] or all(p.suffix == ".lock" for p in store.iterdir())  # no entry, no partial
