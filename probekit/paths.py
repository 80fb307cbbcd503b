"""Where probekit keeps things: the feature store and the data root.

Command-line flags win, then environment variables, then the defaults, so the same
code serves notebooks, the CLI and clusters with shared scratch space.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "PROBEKIT_CACHE"
DATA_ENV = "PROBEKIT_DATA"


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The feature-store folder: `explicit`, else $PROBEKIT_CACHE, else ./cache."""
    return Path(explicit or os.environ.get(CACHE_ENV) or "cache").expanduser()


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The folder holding on-disk datasets: `explicit`, else $PROBEKIT_DATA, else ./data."""
    return Path(explicit or os.environ.get(DATA_ENV) or "data").expanduser()
