"""`benchmarks/gpu/run.sh --dry-run`: the device script end to end at toy sizes on the CPU, so the one
lent GPU window is not spent finding out that the script itself is broken."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from _extract_helpers import REPO

pytestmark = pytest.mark.slow
STAGES = ("install", "pytest", "extract", "sgd", "lbfgs", "finetune")


def test_dry_run_writes_one_report_with_every_stage(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run(["bash", "benchmarks/gpu/run.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("== ")]
    assert [line.split()[1] for line in lines] == list(STAGES)  # one summary line per stage, in order
    report_path = tmp_path / "gpu-bench.json"
    assert report_path.stat().st_size < 1_000_000
    report = json.loads(report_path.read_text())
    assert report["dry_run"] is True and list(report["stages"]) == list(STAGES)
    stages = report["stages"]
    assert stages["install"]["status"] == "skipped"
    bad = {k: v.get("log_tail", "")[-1500:] for k, v in stages.items() if k != "install" and v["status"] != "ok"}
    assert not bad, bad
    tests = stages["pytest"]["result"]
    assert tests["tests"] >= 20 and tests["skipped"] == tests["tests"]  # no CUDA here: every device test skips

    extract = stages["extract"]["result"]["models"]
    assert len(extract) == 2
    for r in extract.values():
        assert "error" not in r, r.get("traceback")
        assert r["bare_images_per_s"] > 0
        for source in ("from_tensors", "from_folder"):
            assert 0 < r[source]["ratio_vs_bare"] and r[source]["images_per_s_end_to_end"] > 0
    sgd = stages["sgd"]["result"]
    assert sgd["steps"] == sgd["steps_planned"] and sgd["steps_per_s"] > 0 and sgd["heads"] == 10
    lbfgs = stages["lbfgs"]["result"]
    assert lbfgs["l2_solved"] == lbfgs["l2_planned"] == 10 and lbfgs["iterations"] >= 10 and lbfgs["total_s"] > 0
    finetune = stages["finetune"]["result"]
    assert finetune["ratio"] > 0 and finetune["ratio_of"] == "steady_images_per_s"
    for stage in STAGES[2:]:
        assert stages[stage]["result"]["summary"] in done.stdout  # the stage's own line is the one printed
