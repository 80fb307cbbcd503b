"""Files shipped in ``probekit/data/testbeds`` (testbed CSVs, CIFAR-10.1 predictions, class maps)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def shipped_path(name: str) -> Path:
    """Path of a file shipped in ``probekit/data/testbeds``."""
    return Path(str(resources.files("probekit") / "data" / "testbeds" / name))
