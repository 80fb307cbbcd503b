"""Several processes on one cache entry: one writes, the others wait and say so, readers never see half a file.

The writer is held after its first commit (a hook on FeatureWriter.commit), so the other
processes reliably meet a live writer instead of racing Python start-up. Complements
tests/test_extract.py::test_two_processes_one_entry (two processes, one waits).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from _rel import MODEL, SIZE, extract_args, held_cli, holding_cli, popen, same_features, wait_for

from probekit import features
from probekit import cache
from probekit.cli import main
from probekit.errors import UserError

pytestmark = pytest.mark.slow


def _files(tmp_path: Path, tag: str) -> dict:
    return {"stdout": open(tmp_path / f"{tag}.out", "w"), "stderr": open(tmp_path / f"{tag}.err", "w")}


def _text(tmp_path: Path, tag: str, kind: str = "err") -> str:
    return (tmp_path / f"{tag}.{kind}").read_text()


def _start_held_writer(tmp_path: Path, store: Path):
    marker, release = tmp_path / "held", tmp_path / "release"
    a = held_cli(extract_args(store, split="test"), marker, release, **_files(tmp_path, "a"))
    assert wait_for(marker.exists, a, timeout=120), _text(tmp_path, "a")
    return a, release


def _waiting(tmp_path: Path, tag: str, proc, writer_pid: int) -> bool:
    return wait_for(lambda: f"waiting for another probekit extract of this entry (pid {writer_pid})" in _text(tmp_path, tag), proc, timeout=120)


def test_three_writers_and_a_reader_on_one_entry(tmp_path, ref_test, capsys):
    store = tmp_path / "store"
    name = ref_test.path.name
    a, release = _start_held_writer(tmp_path, store)
    others = {tag: popen(extract_args(store, split="test"), **_files(tmp_path, tag)) for tag in ("b", "c")}
    for tag, proc in others.items():
        assert _waiting(tmp_path, tag, proc, a.pid), _text(tmp_path, tag)
    # a reader while the writer is live: refused (never half-read), and the store listing says partial
    with pytest.raises(UserError, match="no cached features"):
        features.find_features(MODEL, "digits:test", weights="none", cache_dir=store, image_size=SIZE)
    with pytest.raises(UserError, match="incomplete|corrupt"):
        cache.load_features(store / (name + cache.PARTIAL))
    assert main(["cache", "ls", "--cache-dir", str(store)]) == 0
    assert "partial" in capsys.readouterr().out
    release.touch()
    assert a.wait(120) == 0, _text(tmp_path, "a")
    for tag, proc in others.items():
        assert proc.wait(120) == 0, _text(tmp_path, tag)
        assert "resuming" not in _text(tmp_path, tag)  # a cache hit after the wait: nothing recomputed
    paths = {_text(tmp_path, tag, "out").split()[0] for tag in ("a", "b", "c")}
    assert paths == {str(store / name)}
    assert same_features(cache.load_features(store / name), ref_test)
    assert sorted(p.name for p in store.iterdir() if not p.name.endswith(".lock")) == [name]


def test_the_waiting_process_takes_over_when_the_writer_is_killed(tmp_path, ref_test):
    store = tmp_path / "store"
    name = ref_test.path.name
    a, _ = _start_held_writer(tmp_path, store)
    b = popen(extract_args(store, split="test"), **_files(tmp_path, "b"))
    assert _waiting(tmp_path, "b", b, a.pid), _text(tmp_path, "b")
    a.send_signal(signal.SIGKILL)  # the lock dies with its holder
    a.wait(60)
    assert b.wait(120) == 0, _text(tmp_path, "b")
    assert f"resuming {name} at 8 of 450" in _text(tmp_path, "b")  # A's committed batch is kept
    assert same_features(cache.load_features(store / name), ref_test)


HELD_RUN = holding_cli("runlog", "RunWriter.log_many")  # the run writer holds after its first records


def test_two_train_heads_into_one_out(tmp_path, feature_store, ref_train, ref_test):
    """Issue 13 case 1: the second `train-head` into a folder being written is refused with whose run it is,
    and the first finishes a folder that is entirely its own (config, log, summary, heads)."""
    import json
    import subprocess
    import sys

    import torch
    from _rel import REPO, child_env, run_cli

    from probekit import runlog

    out = tmp_path / "R"
    base = ["train-head", "--train", str(feature_store / ref_train.path.name), "--id", str(feature_store / ref_test.path.name),
            "--batch-size", "256", "--out", str(out), "--no-progress"]
    marker, release = tmp_path / "held", tmp_path / "release"
    a = subprocess.Popen([sys.executable, "-c", HELD_RUN, *base, "--epochs", "40", "--lr", "0.01"], cwd=REPO, text=True,
                         env=child_env(HOLD_MARKER=str(marker), HOLD_UNTIL=str(release)), **_files(tmp_path, "a"))
    try:
        assert wait_for(marker.exists, a, timeout=120), _text(tmp_path, "a")
        for extra in ([], ["--overwrite"]):
            b = run_cli([*base, "--epochs", "3", "--lr", "0.1", *extra])
            lines = b.stderr.strip().splitlines()
            assert b.returncode == 2 and len(lines) == 1, b.stderr
            assert f"run folder {out} is being written by another probekit run (pid {a.pid} on " in lines[0]
            assert "train-head" in lines[0] and "--lr 0.01" in lines[0] and "started" in lines[0]
    finally:
        release.touch()
    assert a.wait(120) == 0, _text(tmp_path, "a")
    run = runlog.read_run(out)
    assert run.complete and run.config["lrs"] == [0.01] and run.config["epochs"] == 40
    assert {r["lr"] for r in run.records} == {0.01} and run.summary["heads"].keys() == {"lr=0.01,seed=0"}
    assert torch.load(out / "heads.pt", weights_only=True)["lr"].tolist() == pytest.approx([0.01])
    assert json.loads((out / runlog.OWNER_FILE).read_text())["pid"] == a.pid
