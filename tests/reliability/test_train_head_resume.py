"""`train-head --resume`: a SIGKILLed, SIGTERMed or Ctrl-C'd SGD run continues from its last checkpoint and
ends with exactly the log, heads, predictions and summary of an uninterrupted run (issue 13).

The runs pause inside their run writer after a chosen number of evaluations (a hook on
RunWriter.log_many), so signals arrive mid-run instead of racing Python start-up.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from _rel import REPO, child_env, run_cli, wait_for

from probekit import runlog

pytestmark = pytest.mark.slow

# `probekit ...` whose run writer, after HOOK_AFTER record batches, writes HOOK_MARKER and sleeps (to be signalled)
PAUSED_RUN = r"""
import os, sys, time
from probekit import runlog
log_many, count = runlog.RunWriter.log_many, [0]
def paused(self, records):
    log_many(self, records)
    count[0] += 1
    if count[0] == int(os.environ["HOOK_AFTER"]):
        open(os.environ["HOOK_MARKER"], "w").write(str(os.getpid()))
        time.sleep(float(os.environ.get("HOOK_SLEEP", "600")))
runlog.RunWriter.log_many = paused
from probekit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _args(store, ref_train, ref_test, out) -> list[str]:
    train, test = str(store / ref_train.path.name), str(store / ref_test.path.name)
    return ["train-head", "--train", train, "--id", test, "--ood", train, "--lr", "0.05", "0.5", "--seeds", "0", "1",
            "--batch-size", "64", "--epochs", "3", "--schedule", "cosine", "--save-predictions", "--out", str(out), "--no-progress"]


def _paused(args, tmp_path, after: int, sleep: float = 600):
    marker = tmp_path / f"paused-{after}"
    env = child_env(HOOK_AFTER=str(after), HOOK_MARKER=str(marker), HOOK_SLEEP=str(sleep), PROBEKIT_CHECKPOINT_SECONDS="0")
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_RUN, *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(marker.exists, proc, timeout=120), proc.communicate()
    return proc


def _outputs(out):
    run = runlog.read_run(out)
    heads = torch.load(out / "heads.pt", weights_only=True)
    with np.load(out / "predictions.npz") as z:
        preds = {k: z[k] for k in z.files}
    summary = {k: v for k, v in run.summary.items() if k != "elapsed_s"}
    return run.records, heads, preds, summary, run.complete


def _same(a, b) -> None:
    (ra, ha, pa, sa, ca), (rb, hb, pb, sb, cb) = a, b
    assert ca and cb and ra == rb and sa == sb
    assert ha.keys() == hb.keys() and all(torch.equal(ha[k], hb[k]) if torch.is_tensor(ha[k]) else ha[k] == hb[k] for k in ha)
    assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, feature_store, ref_train, ref_test):
    out = tmp_path_factory.mktemp("th-ref") / "run"
    done = run_cli(_args(feature_store, ref_train, ref_test, out))
    assert done.returncode == 0, done.stderr
    return _outputs(out)


def _in_process(argv, capsys) -> int:
    from probekit.cli import main

    capsys.readouterr()
    return main(argv)


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, feature_store, ref_train, ref_test, reference, capsys):
    out = tmp_path / "run"
    args = _args(feature_store, ref_train, ref_test, out)
    proc = _paused(args, tmp_path, after=30)
    proc.kill()  # SIGKILL: the log has the 30th evaluation, the checkpoint the 29th
    proc.communicate(timeout=60)
    assert not runlog.is_complete(out) and (out / "checkpoints" / "last.pt").exists()
    log = (out / "log.jsonl").read_text()
    # what cannot continue it is refused, the folder untouched: no --resume (the checkpoint is never dropped by
    # accident), another configuration, an L-BFGS sweep
    other = [a if a != "0.5" else "0.6" for a in args]
    lbfgs = [*args[:args.index("--lr")], "--solver", "lbfgs", "--out", str(out), "--no-progress"]
    for argv, needle in ((args, "pass --resume to continue it or --overwrite"), ([*other, "--resume"], "another configuration"),
                         ([*lbfgs, "--resume"], "L-BFGS sweep starts over")):
        assert _in_process(argv, capsys) == 2 and needle in capsys.readouterr().err
    assert (out / "log.jsonl").read_text() == log
    done = run_cli([*args, "--resume"])
    assert done.returncode == 0, done.stderr
    _same(_outputs(out), reference)
    assert not (out / "checkpoints").exists()  # heads.pt holds the heads of a finished run
    assert _in_process([*args, "--resume"], capsys) == 2 and "nothing to resume" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_checkpoints_says_resume_and_resumes(tmp_path, feature_store, ref_train, ref_test, reference, sig):
    out = tmp_path / "run"
    args = _args(feature_store, ref_train, ref_test, out)
    proc = _paused(args, tmp_path, after=12, sleep=1.0)
    proc.send_signal(sig)  # arrives while paused: honoured after the current step
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"probekit: stopped by {signal.Signals(sig).name} after step ") and "--resume" in last, err
    step = int(last.split("after step ")[1].split()[0])
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"] == step  # eval_every 1: logged up to it
    done = run_cli([*args, "--resume"])
    assert done.returncode == 0, done.stderr
    _same(_outputs(out), reference)


def test_checkpoints_of_earlier_layouts(tmp_path, feature_store, ref_train, ref_test, reference, capsys, monkeypatch):
    """Checkpoints carry format/version 3; an unversioned record-layer one (version 2) resumes to the uninterrupted
    run; one from before the record layer (version 1), a newer version and another command's are refused in one
    `probekit: error:` line naming --overwrite, checkpoint and log byte for byte as they were; --overwrite then works."""
    from probekit.finetune.checkpoint import save_checkpoint

    out = tmp_path / "run"
    args = _args(feature_store, ref_train, ref_test, out)
    monkeypatch.setenv("PROBEKIT_CHECKPOINT_SECONDS", "0")
    log_many, count = runlog.RunWriter.log_many, [0]

    def term_after_10(self, records):  # SIGTERM in the middle of the run: it stops at the step with a checkpoint
        log_many(self, records)
        count[0] += 1
        if count[0] == 10:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(runlog.RunWriter, "log_many", term_after_10)
    assert _in_process(args, capsys) == 128 + signal.SIGTERM, capsys.readouterr().err
    monkeypatch.setattr(runlog.RunWriter, "log_many", log_many)
    ckpt = out / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["format"] == "probekit-train-head-checkpoint" and state["version"] == 3
    config = json.loads(state["config"])
    current = {k: v for k, v in state.items() if k not in ("format", "version")}

    def write(s) -> bytes:
        save_checkpoint(ckpt, s)
        return ckpt.read_bytes()

    def refused(needle: str) -> str:
        before, log = ckpt.read_bytes(), (out / "log.jsonl").read_text()
        assert _in_process([*args, "--resume"], capsys) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("probekit: error: ") and needle in err, err
        assert "Traceback" not in err and "another configuration" not in err
        assert ckpt.read_bytes() == before and (out / "log.jsonl").read_text() == log and not runlog.is_complete(out)
        return err

    # version 1: train-head's config before the record layer (one baseline name + fit, er_sets; no baselines / val_set)
    old = {k: v for k, v in config.items() if k not in ("baselines", "val_set")} | {"baseline": None, "baseline_fit": None,
                                                                                    "er_sets": []}
    v1 = write({**current, "config": json.dumps(old)})
    assert "--overwrite" in refused("earlier probekit")
    write({**state, "version": 99})
    assert "--overwrite" in refused("newer probekit")
    write({**state, "format": "probekit-finetune-checkpoint"})
    assert "--overwrite" in refused("'probekit-finetune-checkpoint' checkpoint, not a 'probekit-train-head-checkpoint'")
    write({**state, "version": "three"})
    refused("is not a probekit checkpoint")

    # version 2: today's config without format / version resumes, to the log an uninterrupted run writes
    write(current)
    assert _in_process([*args, "--resume"], capsys) == 0, capsys.readouterr().err
    _same(_outputs(out), reference)
    assert not (out / "checkpoints").exists()

    # what the refusal says works: an unfinished old run (its version-1 checkpoint) is started afresh by --overwrite
    ckpt.parent.mkdir()
    ckpt.write_bytes(v1)
    (out / "summary.json").unlink()
    assert _in_process([*args, "--resume"], capsys) == 2 and "earlier probekit" in capsys.readouterr().err
    assert _in_process([*args, "--overwrite"], capsys) == 0, capsys.readouterr().err
    _same(_outputs(out), reference)
    assert not (out / "checkpoints").exists()
