"""A full disk: a clear one-line error naming the folder, the entry left resumable, nothing else damaged.

Three ways: a real size-limited tmpfs (needs root to mount; skipped otherwise) that is too
small from the start (refused before any work) or filled by someone else mid-run (the
entry's blocks were reserved, so it completes); and ENOSPC injected into the commit's fsync
mid-run, where the committed rows survive and the rerun resumes.
"""

from __future__ import annotations

import errno
import shutil
import subprocess

import pytest
from _rel import extract_args, run_cli, same_features

from probekit import cache
from probekit.cli import main


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("probekit: error: ") and "Traceback" not in err, err
    return lines[0]


def test_disk_full_mid_run_keeps_committed_rows_and_other_entries(tmp_path, ref_train, ref_test, monkeypatch, capsys):
    store = tmp_path / "store"
    store.mkdir()
    other = store / ref_test.path.name
    shutil.copy(ref_test.path, other)
    monkeypatch.setenv("PROBEKIT_COMMIT_ROWS", "1")
    real_fsync, calls = cache._fsync_path, [0]

    def fsync_until_full(path):
        calls[0] += 1
        if calls[0] > 20:  # ten commits succeed, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(path)

    monkeypatch.setattr(cache, "_fsync_path", fsync_until_full)
    assert main(extract_args(store)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no space left" in line and str(store) in line and "80 of 1347 images committed" in line and "to resume" in line
    partial = store / (ref_train.path.name + cache.PARTIAL)
    assert cache.read_attrs(partial)["committed_positions"] == 80
    assert same_features(cache.load_features(other), ref_test)  # nothing else damaged
    monkeypatch.setattr(cache, "_fsync_path", real_fsync)  # space freed
    assert main(extract_args(store)) == 0
    assert f"resuming {ref_train.path.name} at 80 of 1347" in capsys.readouterr().err
    assert same_features(cache.load_features(store / ref_train.path.name), ref_train)


def _tmpfs(folder, size: str):
    folder.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a size-limited tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def small_tmpfs(tmp_path):
    yield from _tmpfs(tmp_path / "tmpfs", "600k")


@pytest.fixture
def roomy_tmpfs(tmp_path):
    yield from _tmpfs(tmp_path / "tmpfs", "3m")


def test_disk_filled_by_someone_else_mid_run_does_not_stop_extract(roomy_tmpfs, ref_train):
    """The entry's blocks are reserved when it starts (fallocate), so a disk that fills later cannot
    break the HDF5 writes (which would crash the process at close)."""
    from _rel import child_env, popen, wait_for

    partial = roomy_tmpfs / (ref_train.path.name + cache.PARTIAL)
    proc = popen(extract_args(roomy_tmpfs), env=child_env(PROBEKIT_COMMIT_ROWS="1"))
    def committed() -> bool:
        try:
            return cache.read_attrs(partial).get("committed_positions", 0) > 0
        except Exception:  # not there yet, or caught mid-flush
            return False

    assert wait_for(committed, proc), proc.communicate()
    with open(roomy_tmpfs / "filler", "wb") as f:  # fill every free block
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    assert shutil.disk_usage(roomy_tmpfs).free < 65536
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    fs = cache.load_features(roomy_tmpfs / ref_train.path.name)
    assert same_features(fs, ref_train)
    size = fs.path.stat()
    assert size.st_blocks * 512 <= size.st_size + 65536  # the unused reservation was given back


def test_real_full_tmpfs_refused_before_work_then_completes(small_tmpfs, ref_train, ref_test):
    other = small_tmpfs / ref_test.path.name
    shutil.copy(ref_test.path, other)  # ~240 KB of 600 KB used; digits:train needs ~0.7 MiB
    done = run_cli(extract_args(small_tmpfs))
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert "not enough disk space" in line and str(small_tmpfs) in line and "--cache-dir" in line
    assert not (small_tmpfs / (ref_train.path.name + cache.PARTIAL)).exists()
    assert same_features(cache.load_features(other), ref_test)
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_tmpfs)], check=True)  # space freed
    done = run_cli(extract_args(small_tmpfs))
    assert done.returncode == 0, done.stderr
    assert same_features(cache.load_features(small_tmpfs / ref_train.path.name), ref_train)
