"""Progress bars for long work: tqdm on a terminal, a plain line every few seconds elsewhere.

A `\\r`-redrawn bar is unreadable in a log file or a CI console (one line grows by thousands of
redraws), so when the stream is not a terminal the same tqdm object writes whole lines at most
every `PLAIN_SECONDS`. Every long-running command takes its bar from `progress_bar`.
"""

from __future__ import annotations

import os
import sys
from typing import IO

PLAIN_SECONDS = float(os.environ.get("PROBEKIT_PROGRESS_SECONDS", "5"))


class _Lines:
    """A file for tqdm that turns its carriage-return redraws into complete lines."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable=None, *, total: float | None = None, desc: str = "", unit: str = "it", enabled: bool = True,
                 initial: float = 0, leave: bool = True, stream: IO[str] | None = None, **kwargs):
    """A tqdm bar on `stream` (default stderr): redrawn on a terminal, plain lines otherwise, nothing when not `enabled`."""
    from tqdm import tqdm

    stream = sys.stderr if stream is None else stream
    if _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, initial=initial, leave=leave,
                    file=stream, dynamic_ncols=True, **kwargs)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, initial=initial, leave=True,
                file=_Lines(stream), mininterval=PLAIN_SECONDS, maxinterval=PLAIN_SECONDS, ncols=100, ascii=True, **kwargs)
