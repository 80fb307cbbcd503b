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


def _blocks(lang: str):
    import re

    for page in sorted(DOCS.glob("*.md")):
        for block in re.findall(rf"```{lang}\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            yield page.name, block


def _command_lines():
    """Every `probekit ...` invocation in the docs' bash blocks, continuation lines joined."""
    import re

    for page, block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if "probekit " not in line or line.startswith(("pip ", "python ", "export ")) or "..." in line:
                continue
            for part in line.split("&&"):
                m = re.search(r"(?:^|-m |\s)probekit (\S.*)$", part.strip())
                if m and not part.strip().startswith(("for ", "done")):
                    yield page, re.sub(r"\$\(\([^)]*\)\)|\$\{[^}]*\}|\$\w+", "1", m.group(1)).strip()


def test_documented_commands_parse():
    """Every example command in the docs is accepted by the real parser (options exist, values type-check)."""
    import contextlib
    import io
    import shlex

    from probekit.cli import build_parser

    lines = list(_command_lines())
    assert len(lines) > 40, "the docs lost their examples"
    parser, bad = build_parser(), []
    for page, line in lines:
        try:
            with contextlib.redirect_stderr(io.StringIO()) as err:
                parser.parse_args(shlex.split(line))
        except SystemExit:
            bad.append(f"{page}: probekit {line}\n    {err.getvalue().strip().splitlines()[-1]}")
    assert not bad, "example commands the parser rejects:\n" + "\n".join(bad)


def test_python_snippets_compile_and_import():
    """The Python API page's snippets are valid Python and import only names that exist."""
    import ast
    import importlib

    missing = []
    for page, block in _blocks("python"):
        if page == "architecture.md":  # signature sketches, not runnable code
            continue
        tree = ast.parse(block, filename=page)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("probekit"):
                module = importlib.import_module(node.module)
                missing += [f"{page}: {node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)]
    assert not missing, "docs import names that do not exist: " + ", ".join(missing)
