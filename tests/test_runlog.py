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
    RunWriter(run, {}, overwrite=True).close()
    assert not is_complete(run)


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
