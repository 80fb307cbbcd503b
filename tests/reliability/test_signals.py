"""SIGTERM and Ctrl-C (SIGINT): stop at the next batch/step, keep the work, say how to resume, exit 128+signal.

Both commands follow one convention: exit 143 for SIGTERM, 130 for SIGINT, and a last
stderr line `probekit: stopped by SIG... ; ... rerun ... / --resume`.
"""

from __future__ import annotations

import json
import signal

import pytest
from _rel import FT_ARGS, extract_args, ft_records, popen, run_cli, same_features, wait_for

from probekit import cache
from probekit.errors import UserError

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_extract_stops_at_the_next_batch_and_resumes(tmp_path, ref_train, sig):
    from _rel import child_env

    name = ref_train.path.name
    partial = tmp_path / (name + cache.PARTIAL)
    proc = popen(extract_args(tmp_path), env=child_env(PROBEKIT_COMMIT_ROWS="1"))
    sizes = set()

    def a_few_commits() -> bool:
        try:
            sizes.add(partial.stat().st_mtime_ns)
        except FileNotFoundError:
            pass
        return len(sizes) >= 4

    assert wait_for(a_few_commits, proc, poll=0.005), proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"probekit: stopped by {signal.Signals(sig).name} after ") and "to resume" in last
    assert "rerun `probekit extract --model small_cnn --dataset digits --split train --weights none" in last
    assert "Traceback" not in err
    done = cache.read_attrs(partial)["committed_positions"]
    assert 0 < done < 1347 and f"after {done} of 1347 images" in last  # the message tells the truth
    with pytest.raises(UserError, match="incomplete"):
        cache.load_features(partial)
    rerun = run_cli(extract_args(tmp_path))
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming {name} at {done} of 1347" in rerun.stderr
    assert same_features(cache.load_features(tmp_path / name), ref_train)


def test_finetune_ctrl_c_checkpoints_and_resumes_identically(tmp_path, ft_reference):
    """finetune's SIGTERM path is covered in tests/test_finetune_resume.py; here Ctrl-C on small_cnn."""
    out = tmp_path / "run"

    def records_at(step: int):
        def check() -> bool:
            try:
                return any(json.loads(line)["step"] >= step for line in (out / "log.jsonl").read_text().splitlines() if line.endswith("}"))
            except (FileNotFoundError, json.JSONDecodeError):
                return False
        return check

    proc = popen([*FT_ARGS, "--out", str(out)])
    assert wait_for(records_at(3), proc, timeout=240), proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert "stopped by SIGINT" in last and "--resume" in last and "Traceback" not in err
    assert (out / "checkpoints" / "last.pt").exists() and not (out / "summary.json").exists()
    done = run_cli([*FT_ARGS, "--out", str(out), "--resume"])
    assert done.returncode == 0, done.stderr
    assert ft_records(out) == ft_reference
