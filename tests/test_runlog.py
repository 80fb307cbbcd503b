"""The run folder contract: records round-trip, kills never read as complete."""

import json

import pytest

from probekit.errors import UserError
from probekit.runlog import RunWriter, is_complete, read_run


def test_records_round_trip_and_completion(tmp_path):
    run = tmp_path / "run"
    with RunWriter(run, {"solver": "sgd"}) as writer:
        writer.log({"step": 0, "epoch": 0.0, "head": "lr=0.1,seed=0", "loss": 2.3, "acc_id": 0.1, "acc_ood": {"b": 0.1}})
        writer.log_many([{"step": 1, "head": "lr=0.1,seed=0", "loss": float("nan"), "acc_id": 0.5}])
        assert not is_complete(run)
        writer.finish({"heads": {}})
    result = read_run(run)
    assert result.complete and result.summary["status"] == "complete"
    assert result.config == {"solver": "sgd"}
    assert [r["step"] for r in result.records] == [0, 1]
    assert result.records[1]["loss"] is None  # NaN stored as null: the log stays valid JSON
    assert result.heads == ["lr=0.1,seed=0"]


def test_killed_run_is_incomplete_and_torn_line_skipped(tmp_path):
    run = tmp_path / "run"
    writer = RunWriter(run, {})
    writer.log({"step": 0, "head": "h"})
    writer.close()
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 1, "he')  # a kill in the middle of a write
    result = read_run(run)
    assert not result.complete and result.summary is None
    assert [r["step"] for r in result.records] == [0]


def test_complete_run_is_not_overwritten_by_accident(tmp_path):
    run = tmp_path / "run"
    with RunWriter(run, {}) as writer:
        writer.finish({})
    with pytest.raises(UserError, match="--overwrite"):
        RunWriter(run, {})
    RunWriter(run, {}, overwrite=True).close()  # an overwrite that never finishes replaces nothing
    assert is_complete(run)


def test_resume_truncates_to_checkpoint(tmp_path):
    run = tmp_path / "run"
    with RunWriter(run, {}) as writer:
        writer.log_many({"step": s, "head": "h"} for s in range(5))
    with RunWriter(run, {}, resume=True) as writer:
        writer.truncate(lambda r: r["step"] <= 2)
        writer.log({"step": 3, "head": "h"})
    assert [r["step"] for r in read_run(run).records] == [0, 1, 2, 3]


def test_not_a_run_folder(tmp_path):
    with pytest.raises(UserError, match="not a probekit run folder"):
        read_run(tmp_path)


def test_corrupt_summary_reads_incomplete(tmp_path):
    run = tmp_path / "run"
    with RunWriter(run, {}) as writer:
        writer.finish({})
    (run / "summary.json").write_text("{not json")
    assert not is_complete(run)
    json.loads((run / "config.json").read_text())


def test_outputs_follow_the_umask(tmp_path):
    """Issue 13 case 6: JSON outputs (and everything else written atomically) are as readable as the umask allows, not 0600."""
    import os
    import stat

    from probekit.atomic import atomic_write_bytes

    old = os.umask(0o022)
    try:
        w = RunWriter(tmp_path / "r", {"a": 1})
        w.finish({})
        atomic_write_bytes(tmp_path / "r" / "heads.pt", b"x")
        for name in ("config.json", "summary.json", "heads.pt"):
            assert stat.S_IMODE((tmp_path / "r" / name).stat().st_mode) == 0o644, name
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "private.json", b"{}")
        assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def _complete_run(path, config, *, extra=("heads.pt", "predictions.npz")):
    with RunWriter(path, config) as w:
        w.log({"step": 0, "head": "h", "acc_id": 0.5})
        for name in extra:
            (w.dir / name).write_bytes(b"old " + name.encode())
        w.finish({"old": True})


def test_overwrite_replaces_the_whole_run_or_nothing(tmp_path):
    """Issue 13 case 3: --overwrite leaves no stale file (predictions.npz) of the old run; a failed overwrite keeps it all."""
    run = tmp_path / "run"
    _complete_run(run, {"run": "old"})
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(RuntimeError):
        with RunWriter(run, {"run": "new"}, overwrite=True) as w:
            assert w.replacing and w.dir != run and w.dir.parent == run.parent
            w.log({"step": 0, "head": "h2"})
            raise RuntimeError("the new run crashes")
    assert sorted(p.name for p in run.iterdir()) == before and is_complete(run)
    assert read_run(run).config == {"run": "old"} and (run / "predictions.npz").read_bytes() == b"old predictions.npz"
    with RunWriter(run, {"run": "new"}, overwrite=True) as w:
        w.log({"step": 0, "head": "h2"})
        (w.dir / "heads.pt").write_bytes(b"new")
        assert read_run(run).config == {"run": "old"}  # readers see the old run until the new one finishes
        w.finish({})
    new = read_run(run)
    assert new.config == {"run": "new"} and new.heads == ["h2"] and new.complete
    assert not (run / "predictions.npz").exists() and (run / "heads.pt").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left behind


def test_killed_overwrite_leaves_the_old_run_and_its_leftovers_are_cleared(tmp_path):
    run = tmp_path / "run"
    _complete_run(run, {"run": "old"})
    staging = tmp_path / ".run.probekit-new"
    staging.mkdir()
    (staging / "log.jsonl").write_text("")  # what a SIGKILLed --overwrite run leaves
    assert read_run(run).config == {"run": "old"}
    RunWriter(run, {"run": "new"}, overwrite=True).finish({})
    assert read_run(run).config == {"run": "new"} and not staging.exists()


@pytest.mark.parametrize("own", ["config.json", "summary.json", "log.jsonl", "notes.txt"])
def test_folder_with_files_probekit_did_not_write_is_refused(tmp_path, own):
    """Issue 13 case 3: a user's own config.json / summary.json / log.jsonl (or anything else) is never replaced."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / own).write_text('{"status": "complete", "mine": true}\n')
    for kw in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(UserError, match=f"holds files probekit did not write \\({own}\\)"):
            RunWriter(out, {}, **kw)
    assert sorted(p.name for p in out.iterdir()) == [own]
    run = tmp_path / "run"
    _complete_run(run, {})
    (run / own).write_text("mine")
    if own == "notes.txt":  # a run folder with a user's file in it is not replaced either
        with pytest.raises(UserError, match="notes.txt"):
            RunWriter(run, {}, overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    RunWriter(empty, {}).finish({})
    assert is_complete(empty)


def test_out_inside_the_feature_store_or_a_file_is_refused(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    for out in (store, store / "runs" / "a"):
        with pytest.raises(UserError, match="inside the feature store"):
            RunWriter(out, {}, cache_dir=store)
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        RunWriter(tmp_path / "f", {})
    assert not (store / "runs").exists()


def test_second_writer_is_refused_naming_the_owner(tmp_path):
    """Issue 13 case 1 at the API level: while a run is written, another writer is refused with whose run it is."""
    import os
    import socket

    run = tmp_path / "run"
    with RunWriter(run, {"command": "train-head"}) as first:
        for kw in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(UserError, match=f"being written by another probekit run \\(pid {os.getpid()} on "
                                                f"{socket.gethostname()}, `.*`, started .*\\)") as e:
                RunWriter(run, {}, **kw)
        assert "choose another --out" in str(e.value)
        first.log({"step": 0, "head": "a"})
        first.finish({})
    assert read_run(run).heads == ["a"] and is_complete(run)
    RunWriter(run, {}, overwrite=True).finish({})  # the lock went with its owner


def test_legacy_run_folder_without_owner_mark_is_still_a_run(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"command": "train-head"}))
    (run / "log.jsonl").write_text('{"step": 0, "head": "h"}\n')
    (run / "heads.pt").write_bytes(b"x")
    RunWriter(run, {"command": "train-head"}).finish({})
    assert is_complete(run) and not (run / "heads.pt").exists()
