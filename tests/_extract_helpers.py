"""Shared by the extract tests: a tiny real timm model with weights in a file, and a hooked CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = "test_efficientnet"  # timm's tiny test network: real code path, 256-d features
SIZE = 32

# Runs `probekit ...` with commits after every batch and optional hooks on the commit:
#   HOOK_PAUSE_AFTER=k  after k commits write HOOK_MARKER (committed rows) and sleep (to be SIGKILLed)
#   HOOK_MARK_FIRST=f  after the first commit of this process write f, and carry on
#   HOOK_HOLD_UNTIL=f   after the first commit write HOOK_MARKER and wait until file f exists
HOOKED_CLI = r"""
import os, sys, time
import torch
torch.set_num_threads(1)
from probekit import cache
import probekit.extract as E
pause_after = int(os.environ.get("HOOK_PAUSE_AFTER", "0"))
hold_until = os.environ.get("HOOK_HOLD_UNTIL")
marker = os.environ.get("HOOK_MARKER")
mark_first = os.environ.get("HOOK_MARK_FIRST")
count = [0]
commit = cache.FeatureWriter.commit
def hooked(self):
    commit(self)
    count[0] += 1
    if pause_after and count[0] >= pause_after:
        open(marker, "w").write(str(self.committed_positions))
        time.sleep(600)
    if mark_first and count[0] == 1:
        open(mark_first, "w").write(str(self.committed_positions))
    if hold_until and count[0] == 1:
        open(marker, "w").write(str(self.committed_positions))
        while not os.path.exists(hold_until):
            time.sleep(0.05)
cache.FeatureWriter.commit = hooked
extract = E.extract
E.extract = lambda *a, **k: extract(*a, commit_rows=1, **k)
from probekit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def hooked_cli(args: list[str], extra_env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOOKED_CLI, *args], env={**env(), **(extra_env or {})}, cwd=REPO, **kw)


def save_random_weights(path: Path, seed: int = 0) -> Path:
    """Random-init weights of MODEL saved to `path`, to load back through the real loading path."""
    import torch

    from probekit.backbones import create_backbone

    torch.manual_seed(seed)
    bb = create_backbone(MODEL, "none", image_size=SIZE)
    torch.save(bb.model.state_dict(), path)
    return path
