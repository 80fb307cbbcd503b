"""Write docs/cli-reference.md from the argparse parser, so the option reference cannot drift.

Run `python docs/gen_cli_reference.py` after changing any command's options;
tests/test_docs.py fails while the committed file differs from what this produces.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

WIDTH = "100"  # fixed help width: the output must not depend on the terminal
OUT = Path(__file__).resolve().parent / "cli-reference.md"

HEADER = """# CLI reference

Generated from the argparse parser by `python docs/gen_cli_reference.py`; do not edit by hand.
For what each command is for and worked examples, see [Commands](commands.md).
"""


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _walk(parser: argparse.ArgumentParser, name: str):
    yield name, parser
    for sub, child in _subparsers(parser).items():
        yield from _walk(child, f"{name} {sub}")


def render() -> str:
    """The whole reference page: `probekit --help`, then every (sub)command's --help."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        from probekit.cli import build_parser

        parts = [HEADER]
        for name, parser in _walk(build_parser(), "probekit"):
            parts.append(f"\n## `{name}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
        return "".join(parts)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def main() -> int:
    text = render()
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(text.splitlines())} lines)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
