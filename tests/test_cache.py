"""The feature store on its own: format, commit/resume, refusal of partial or altered files, locking."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from probekit import features
from probekit import cache
from probekit.errors import UserError


def _attrs(key="k" * 64, **extra):
    return {"key": key, "backbone": "tiny", "dataset": "digits", "split": "train", "weights": "default",
            "weight_id": "sha256:abc", "classes": ["zero", "one"], "feature_kind": "penultimate", "precision": "fp32",
            "extract_command": "probekit extract --model tiny --dataset digits --split train", **extra}


def _write(path: Path, feats, labels, *, finish=True, batches=2, key="k" * 64):
    w = cache.FeatureWriter(path, attrs=_attrs(key), total=len(feats), dim=feats.shape[1])
    step = -(-len(feats) // batches)
    for s in range(0, len(feats), step):
        e = min(s + step, len(feats))
        w.append(feats[s:e], labels[s:e], np.arange(s, e), positions=e - s)
        w.commit()
    if finish:
        return w.finish()
    w.close()
    return w.partial_path


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((50, 7)).astype(np.float32), rng.integers(0, 2, 50).astype(np.int64)


def test_roundtrip_and_attributes(tmp_path, data):
    feats, labels = data
    path = _write(tmp_path / "a.h5", feats, labels)
    assert path.exists() and not (tmp_path / "a.h5.partial").exists()
    fs = cache.load_features(path)
    np.testing.assert_array_equal(fs.features, feats)
    np.testing.assert_array_equal(fs.labels, labels)
    np.testing.assert_array_equal(fs.index, np.arange(50))
    assert fs.attrs["classes"] == ["zero", "one"] and fs.attrs["complete"] is True or fs.attrs["complete"] == 1
    assert fs.attrs["checksum"].startswith("sha256:") and fs.name == "digits:train"
    assert cache.load_features(path, dtype=np.float16).features.dtype == np.float16


def test_float16_storage(tmp_path, data):
    feats, labels = data
    w = cache.FeatureWriter(tmp_path / "h.h5", attrs=_attrs(), total=50, dim=7, dtype="float16")
    w.append(feats, labels, np.arange(50), positions=50)
    path = w.finish()
    with h5py.File(path) as f:
        assert f["features"].dtype == np.float16
    np.testing.assert_allclose(cache.load_features(path).features, feats, atol=1e-2)


def test_partial_never_reads_as_complete_and_resumes(tmp_path, data):
    feats, labels = data
    final = tmp_path / "b.h5"
    w = cache.FeatureWriter(final, attrs=_attrs(), total=50, dim=7)
    w.append(feats[:20], labels[:20], np.arange(20), positions=20)
    w.commit()
    w.append(feats[20:30] + 99, labels[20:30], np.arange(20, 30), positions=10)  # staged, never committed
    w.close()  # a kill: the counters stay at 20
    assert not final.exists() and not cache.is_complete(final)
    with pytest.raises(UserError, match=r"incomplete \(20 of 50 rows\).*probekit extract --model tiny"):
        cache.load_features(w.partial_path)
    w = cache.FeatureWriter(final, attrs=_attrs(), total=50, dim=7)
    assert w.resumed_from == 20 and w.committed_rows == 20
    w.append(feats[20:], labels[20:], np.arange(20, 50), positions=30)
    w.finish()
    np.testing.assert_array_equal(cache.load_features(final).features, feats)


def test_partial_with_other_key_or_torn_metadata_starts_over(tmp_path, data):
    feats, labels = data
    partial = _write(tmp_path / "c.h5", feats, labels, finish=False)
    w = cache.FeatureWriter(tmp_path / "c.h5", attrs=_attrs(key="x" * 64), total=50, dim=7)
    assert w.committed_positions == 0
    w.close()
    partial.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # killed mid-metadata write
    w = cache.FeatureWriter(tmp_path / "c.h5", attrs=_attrs(key="x" * 64), total=50, dim=7)
    assert w.committed_positions == 0
    w.close()


def test_altered_truncated_or_foreign_file_is_refused_with_rebuild_command(tmp_path, data):
    feats, labels = data
    path = _write(tmp_path / "d.h5", feats, labels)
    with h5py.File(path, "r+") as f:
        f["features"][3, 2] += 1.0
    with pytest.raises(UserError, match="checksum mismatch.*probekit extract --model tiny --dataset digits"):
        cache.load_features(path)
    path2 = _write(tmp_path / "e.h5", feats, labels)
    raw = path2.read_bytes()
    path2.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="corrupt"):
        cache.load_features(path2)
    junk = tmp_path / "f.h5"
    junk.write_text("not hdf5")
    with pytest.raises(UserError, match="corrupt"):
        cache.load_features(junk)
    path3 = _write(tmp_path / "g.h5", feats, labels)
    with h5py.File(path3, "r+") as f:
        del f["index"]
    with pytest.raises(UserError, match="missing index"):
        cache.load_features(path3)


def test_skipped_rows_are_recorded(tmp_path, data):
    feats, labels = data
    w = cache.FeatureWriter(tmp_path / "s.h5", attrs=_attrs(), total=50, dim=7)
    keep = [i for i in range(50) if i not in (3, 41)]
    w.append(feats[keep[:20]], labels[keep[:20]], np.array(keep[:20]), positions=21, skipped=[3])
    w.commit()
    w.close()
    w = cache.FeatureWriter(tmp_path / "s.h5", attrs=_attrs(), total=50, dim=7)  # resume keeps the skip list
    assert w.skipped == [3]
    w.append(feats[keep[20:]], labels[keep[20:]], np.array(keep[20:]), positions=29, skipped=[41])
    fs = cache.load_features(w.finish())
    assert len(fs) == 48 and fs.attrs["skipped"] == [3, 41] and fs.attrs["n_skipped"] == 2
    np.testing.assert_array_equal(fs.index, keep)


def _read_only_folder(tmp_path) -> Path:
    """A folder this process cannot write: chmod 555, or (as root, who ignores modes) sysfs."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if not os.access(ro, os.W_OK) or os.geteuid() != 0:
        return ro
    try:
        (Path("/sys") / "probekit-probe").touch()
    except OSError:
        return Path("/sys")
    pytest.skip("no read-only folder available")


def test_read_only_cache_dir(tmp_path):
    ro = _read_only_folder(tmp_path)
    with pytest.raises(UserError, match=f"{ro}.*not writable.*--cache-dir.*PROBEKIT_CACHE"):
        cache.writable_cache_dir(ro)
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(UserError, match="cannot create the feature-store folder"):
        cache.writable_cache_dir(blocked / "sub")


def test_lock_waits_for_other_process(tmp_path, caplog):
    final = tmp_path / "l.h5"
    code = ("import sys,time; from pathlib import Path; from probekit import cache\n"
            "with cache.entry_lock(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(1.5)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(final)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    t0 = time.monotonic()
    caplog.set_level("INFO", logger="probekit")
    with cache.entry_lock(final):
        waited = time.monotonic() - t0
    proc.wait()
    assert waited > 0.5
    assert f"waiting for another probekit extract of this entry (pid {proc.pid})" in caplog.text  # a logging message


def test_list_resolve_and_find(tmp_path, data, monkeypatch):
    feats, labels = data
    name = cache.entry_filename("tiny", "folder:/x/y", "train", "0123456789abcdef")
    assert name == "tiny__folder-x-y__train__0123456789ab.h5"
    w = cache.FeatureWriter(tmp_path / name, attrs={**_attrs(), "dataset": "digits"}, total=50, dim=7)
    w.append(feats, labels, np.arange(50), positions=50)
    w.finish()
    _write(tmp_path / "tiny__digits__test__ffffffffffff.h5", feats, labels, finish=False)
    (tmp_path / "junk.h5").write_text("x")
    rows = {r["file"]: r for r in cache.list_entries(tmp_path)}
    assert rows[name]["status"] == "complete" and rows[name]["rows"] == 50 and rows[name]["dim"] == 7
    assert rows["tiny__digits__test__ffffffffffff.h5.partial"]["status"] == "partial 50/50"
    assert rows["junk.h5"]["status"] == "corrupt"
    assert cache.resolve_entry("tiny__folder", tmp_path) == tmp_path / name
    with pytest.raises(UserError, match="ambiguous"):
        cache.resolve_entry("tiny__", tmp_path)
    with pytest.raises(UserError, match="unknown cache entry"):
        cache.resolve_entry("nothing", tmp_path)
    assert features.find_features("tiny", "digits:train", cache_dir=tmp_path) == tmp_path / name
    assert features.resolve_features("digits:train", model="tiny", cache_dir=tmp_path).features.shape == (50, 7)
    with pytest.raises(UserError, match="no cached features.*probekit extract --model tiny --dataset digits --split test"):
        features.find_features("tiny", "digits:test", cache_dir=tmp_path)


def test_folder_or_empty_name_is_not_called_corrupt(tmp_path, monkeypatch, capsys):
    """Issue 13 case 4: a folder given as a feature file (or `cache info ""`) is named as a folder, never 'delete it'."""
    from probekit.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "store").mkdir()
    with pytest.raises(UserError, match="is a folder, not a feature file") as e:
        cache.load_features(tmp_path / "store")
    assert "delete" not in str(e.value) and "corrupt" not in str(e.value)
    for argv in (["cache", "info", "", "--cache-dir", "store"], ["cache", "info", "store"], ["cache", "info", "."],
                 ["train-head", "--train", "store", "--id", "store", "--out", "run", "--no-progress"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("probekit: error:"), (argv, err)
        assert "delete" not in err[0] and "corrupt" not in err[0], (argv, err)
