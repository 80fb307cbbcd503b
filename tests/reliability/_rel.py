"""Helpers of the reliability suite: tiny real models, reference entries, subprocess runners.

Everything runs on the bundled digits with `small_cnn` at 16 px (random init, seeded), so a
whole extract of digits:train is ~1 s of compute and the suite's cost is mostly Python
start-up of the subprocesses it kills.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
MODEL = "small_cnn"
SIZE = 16


def child_env(**extra: str) -> dict:
    """Environment of a probekit subprocess: this checkout, one thread, no progress noise."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PROBEKIT_COMMIT_ROWS", None)
    env.update(extra)
    return env


def extract_args(cache_dir: Path, split: str = "train", batch_size: int = 8, weights: str = "none") -> list[str]:
    return ["extract", "--model", MODEL, "--dataset", "digits", "--split", split, "--weights", weights,
            "--image-size", str(SIZE), "--batch-size", str(batch_size), "--cache-dir", str(cache_dir), "--no-progress"]


def probekit_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "probekit", *args]


def popen(args: list[str], *, env: dict | None = None, **kw) -> subprocess.Popen:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(probekit_cmd(args), env=env or child_env(), cwd=REPO, text=True, **kw)


def run_cli(args: list[str], *, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(probekit_cmd(args), env=env or child_env(), cwd=REPO, text=True, capture_output=True, timeout=timeout)


def wait_for(predicate, proc: subprocess.Popen | None = None, timeout: float = 120, poll: float = 0.01) -> bool:
    """Poll until `predicate()` is true; False if `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def reference_entry(folder: Path, split: str, batch_size: int = 8):
    """An uninterrupted in-process extract (the bit-identical target of every resumed run)."""
    from probekit import cache
    from probekit.extract import extract

    path = extract(MODEL, "digits", split, weights="none", cache_dir=folder, image_size=SIZE, batch_size=batch_size,
                   progress=False, quiet=True)
    return cache.load_features(path)


def same_features(a, b) -> bool:
    import numpy as np

    return (np.array_equal(a.features, b.features) and np.array_equal(a.labels, b.labels)
            and np.array_equal(a.index, b.index) and a.attrs.get("checksum") == b.attrs.get("checksum"))


# finetune: small_cnn on digits:test (450 images, 14 steps of 32 per epoch), 4 epochs
FT_ARGS = ["finetune", "--model", MODEL, "--weights", "none", "--dataset", "digits:test", "--id", "digits:test",
           "--ood", "mnist5k", "--eval-subset", "5", "--image-size", str(SIZE), "--lr", "0.05", "--seeds", "0",
           "--batch-size", "32", "--eval-every", "3", "--max-steps", "56", "--no-progress"]


def ft_records(out: Path) -> list[dict]:
    """The run log without wall-clock fields (the only thing a resume may change)."""
    import json

    return [{k: v for k, v in json.loads(line).items() if "time" not in k}
            for line in (out / "log.jsonl").read_text().splitlines()]


def holding_cli(module: str, method: str) -> str:
    """`probekit ...` whose `probekit.<module>.<method>` pauses after its first call until HOLD_UNTIL
    exists (writing its pid to HOLD_MARKER), so other processes can be started against a live writer."""
    return f"""
import os, sys, time
from probekit import {module}
owner, name = {module}.{method.split(".")[0]}, "{method.split(".")[1]}"
real, count = getattr(owner, name), [0]
def held(self, *args):
    real(self, *args)
    count[0] += 1
    if count[0] == 1:
        open(os.environ["HOLD_MARKER"], "w").write(str(os.getpid()))
        while not os.path.exists(os.environ["HOLD_UNTIL"]):
            time.sleep(0.02)
setattr(owner, name, held)
from probekit.cli import main
sys.exit(main(sys.argv[1:]))
"""


HELD_CLI = holding_cli("cache", "FeatureWriter.commit")  # the feature writer holds after its first commit


def held_cli(args: list[str], marker: Path, release: Path, **kw):
    import subprocess

    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-c", HELD_CLI, *args], env=child_env(HOLD_MARKER=str(marker), HOLD_UNTIL=str(release), PROBEKIT_COMMIT_ROWS="1"),
                            cwd=REPO, text=True, **kw)
