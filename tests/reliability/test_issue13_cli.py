"""Issue 13, numbered cases 5 and 7: each former traceback or misleading message, as the one line it is now.

Runs in the fuzz test's world (tiny synthetic entries, an 8-image folder dataset, a finished
run, damaged files); see tests/reliability/test_fuzz_cli.py.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import test_fuzz_cli as F  # noqa: E402
from _rel import child_env, probekit_cmd  # noqa: E402

TH = ["train-head", "--model", "pixels", "--cache-dir", "store", "--train", "digits:train", "--id", "digits:test",
      "--epochs", "1", "--batch-size", "16", "--lr", "0.1", "--no-progress"]
FT = ["finetune", "--model", "small_cnn", "--weights", "none", "--dataset", "folder:imgs:all", "--id", "folder:imgs:all",
      "--image-size", "16", "--max-steps", "1", "--epochs", "1", "--lr", "0.1", "--seeds", "0", "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root, mounts = F.build_world(tmp_path_factory.mktemp("issue13"))
    import h5py
    import numpy as np

    with h5py.File(root / "foreign.h5", "w") as f:  # someone else's HDF5 file
        f["data"] = np.zeros((4, 3))
    (root / "bom.csv").write_bytes(b"\xef\xbb\xbfmodel,id,ood\r\na,0.6,0.4\r\nb,0.7,0.5\r\nc,0.8,0.65\r\n")
    yield root
    for m in mounts:
        subprocess.run(["umount", str(m)], capture_output=True)


def one_line(world, argv) -> str:
    before = F.snapshot(world)
    rc, _, err = F.run_in(world, argv, budget=None)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("probekit: error: ") and "Traceback" not in err, (rc, err)
    assert F.snapshot(world) == before or all(F.snapshot(world).get(k) == v for k, v in before.items())
    F.restore(world, before)
    return lines[0]


CASE5 = [  # (what, argv, fragment of the message)
    ("unusable --out of demo", ["demo", "--out", "text.txt/sub"], "text.txt"),
    ("unusable --out of plot", ["plot", "run", "--out", "text.txt"], "is a file"),
    ("unusable --out of baseline fit", ["baseline", "fit", "--csv", "good.csv", "--out", "text.txt/sub"], "text.txt"),
    ("a folder as --csv", ["baseline", "fit", "--csv", "dir"], "is a folder"),
    ("a folder as --baseline", [*TH, "--out", "o1", "--baseline", "dir"], "is a folder"),
    ("a folder to baseline show", ["baseline", "show", "dir"], "is a folder"),
    ("a folder as finetune --baseline SET=", [*FT, "--out", "o2", "--ood", "folder:imgs:all", "--baseline", "folder:imgs=dir"], "folder"),
    ("ragged CSV", ["baseline", "fit", "--csv", "ragged.csv"], "line 2 has 2 fields"),
    ("baseline fit --seed -1", ["baseline", "fit", "--csv", "good.csv", "--seed", "-1"], "--seed"),
    ("huge --bootstrap", ["baseline", "fit", "--csv", "good.csv", "--bootstrap", "99999999999"], "--bootstrap"),
    ("--seeds 99999999999999999999", [*TH, "--out", "o3", "--seeds", "99999999999999999999"], "--seeds"),
    ("finetune --eval-batch-size 0", [*FT, "--out", "o4", "--eval-batch-size", "0"], "--eval-batch-size"),
    ("finetune --workers -1", [*FT, "--out", "o5", "--workers", "-1"], "--workers"),
    ("--cscores given a .npy", [*TH, "--out", "o6", "--subset", "cscore=easiest:2", "--cscores", "scores.npy"], "scores.npy"),
    ("--cscores given a text file", [*TH, "--out", "o7", "--subset", "cscore=easiest:2", "--cscores", "text.txt"], "text.txt"),
    ("damaged config.json under plot", ["plot", "badrun", "--out", "figs"], "config.json"),
]


@pytest.mark.parametrize("case", CASE5, ids=[c[0] for c in CASE5])
def test_case5_no_traceback(case, world):
    _, argv, fragment = case
    assert fragment in one_line(world, argv)


def test_case5_extract_huge_image_size_leaves_nothing(world):
    line = one_line(world, ["extract", "--model", "small_cnn", "--weights", "none", "--dataset", "folder:imgs", "--split", "all",
                            "--image-size", "100000", "--cache-dir", "st", "--no-progress"])
    assert "from 8 to 4096" in line and not (world / "st").exists()


@pytest.mark.parametrize("command", [TH, FT], ids=["train-head", "finetune"])
def test_case5_full_disk_under_out(command, world, monkeypatch):
    """Every write of the run folder hits ENOSPC: one line naming the fix, nothing that reads as complete."""
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    try:
        line = one_line(world, [*command, "--out", "fullrun"])
    finally:
        monkeypatch.setattr(os, "fsync", real)
    assert "no space left" in line.lower() and "free" in line


def test_case5_broken_pipe_is_quiet(world):
    """`probekit cache ls | head -0`: the reader is gone before the output is flushed."""
    proc = subprocess.Popen(probekit_cmd(["cache", "ls", "--cache-dir", str(world / "store")]), env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141) and "Traceback" not in err and "BrokenPipe" not in err, err


CASE7 = [
    ("foreign HDF5 file", [*TH[:6], "foreign.h5", *TH[7:], "--out", "o8"], "not a probekit feature file"),
    ("--ood X X", [*TH, "--out", "o9", "--ood", "mnist5k:test", "mnist5k:test"], "more than once"),
    ("--ood equal to --id", [*TH, "--out", "o9", "--ood", "digits:test"], "is the ID set"),
    ("--image-size 0", ["extract", "--model", "small_cnn", "--dataset", "digits", "--split", "test", "--image-size", "0"], "from 8 to 4096"),
    ("--image-size -16", ["extract", "--model", "small_cnn", "--dataset", "digits", "--split", "test", "--image-size", "-16"], "from 8 to 4096"),
    ("accuracy 1.0 in a baseline CSV", ["baseline", "show", "fit.json", "--point", "1", "0.5"], "strictly between 0 and 1"),
    (".H5 path taken for a file", [*TH[:6], "Missing.H5", *TH[7:], "--out", "o10"], "Missing.H5"),
    (".hdf5 path taken for a file", [*TH[:6], "missing.hdf5", *TH[7:], "--out", "o11"], "missing.hdf5"),
    ("misspelt command", ["trian-head"], "did you mean 'train-head'"),
]


@pytest.mark.parametrize("case", CASE7, ids=[c[0] for c in CASE7])
def test_case7_messages(case, world):
    _, argv, fragment = case
    line = one_line(world, argv)
    assert fragment in line and "pass n " not in line and "resume" not in line and "must differ" not in line


def test_case7_bom_csv_is_read(world):
    rc, out, err = F.run_in(world, ["baseline", "fit", "--csv", "bom.csv"], budget=None)
    assert rc == 0 and "n = 3 models" in out, err


def test_help_has_no_doubled_defaults():
    from probekit.cli import build_parser

    for command, parser in F.leaf_commands().items():
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, command
    assert build_parser()  # the walk above used the real parser
