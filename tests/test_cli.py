"""The `probekit` command itself: help for every command, errors as one line with status 2."""

import subprocess
import sys

import pytest

from probekit.cli import build_parser, main

EXPECTED_COMMANDS = {"extract", "cache", "train-head", "finetune", "baseline", "plot", "analyze", "zero-shot", "demo"}


def _commands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    missing = {c for c in EXPECTED_COMMANDS if c not in out}
    assert not missing, f"commands missing from --help: {missing}"


@pytest.mark.parametrize("command", sorted(EXPECTED_COMMANDS))
def test_each_command_has_help(command, capsys):
    assert command in _commands(), f"no `probekit {command}` command"
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert len(capsys.readouterr().out.strip().splitlines()) > 3


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "probekit", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "probekit" in result.stdout
