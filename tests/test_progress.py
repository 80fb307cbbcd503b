"""Progress output: redrawn bars on a terminal, whole lines in logs (issue 13)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from probekit.progress import progress_bar

REPO = Path(__file__).resolve().parents[1]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal():
    log = io.StringIO()
    bar = progress_bar(total=500, desc="extract", unit="img", stream=log)
    for _ in range(5):
        bar.update(100)
    bar.set_postfix_str("l2=1e+07")
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert 1 <= len(lines) <= 4  # the start, maybe the postfix, the end: not one line per update
    assert "500/500" in lines[-1] and lines[-1].startswith("extract")


def test_redrawn_bar_on_a_terminal():
    tty = _Terminal()
    bar = progress_bar(total=3, desc="finetune", stream=tty)
    bar.update(3)
    bar.close()
    assert "\r" in tty.getvalue()


def test_disabled_writes_nothing():
    log = io.StringIO()
    for _ in progress_bar(range(4), total=4, enabled=False, stream=log):
        pass
    assert log.getvalue() == ""


def test_cli_progress_in_a_log_has_no_carriage_returns(tmp_path):
    """A command with progress on and stderr captured (a log file, a CI console) writes lines."""
    r = subprocess.run([sys.executable, "-m", "probekit", "extract", "--model", "small_cnn", "--weights", "none",
                        "--dataset", "digits", "--split", "test", "--image-size", "16", "--cache-dir", str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr
    assert any("450/450" in line for line in r.stderr.splitlines()), r.stderr
