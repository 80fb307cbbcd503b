"""The docs stay true to the CLI: the generated reference is current and every command is documented."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli_reference", DOCS / "gen_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current():
    expected = _generator().render()
    committed = (DOCS / "cli-reference.md").read_text(encoding="utf-8")
    assert committed == expected, (
        "docs/cli-reference.md is stale: run `python docs/gen_cli_reference.py` and commit the result"
    )


def test_every_command_is_in_commands_md():
    gen = _generator()
    from probekit.cli import build_parser

    names = [name for name, _ in gen._walk(build_parser(), "probekit")][1:]
    assert "probekit extract" in names and "probekit cache ls" in names  # the walk really finds commands
    text = (DOCS / "commands.md").read_text(encoding="utf-8")
    missing = [n for n in names if n not in text]
    assert not missing, f"docs/commands.md does not mention: {', '.join(missing)}"


def test_reference_lists_every_option():
    gen = _generator()
    from probekit.cli import build_parser

    text = (DOCS / "cli-reference.md").read_text(encoding="utf-8")
    for name, parser in gen._walk(build_parser(), "probekit"):
        assert f"## `{name}`" in text
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in text, f"{flag} of `{name}` missing from docs/cli-reference.md"
