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


def _documented_calls(text: str):
    """``Name(a, b=1, ...)`` spans of a page's prose: (name, [(param, default text or None)])."""
    import re

    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        m = re.match(r"\s*([A-Za-z_]\w*)\(", span)
        if not m:
            continue
        params, depth, cur = [], 0, ""
        for ch in span[m.end():]:  # up to the parenthesis that closes the call
            if ch == ")" and depth == 0:
                params.append(cur.strip())
                break
            if ch == "," and depth == 0:
                params.append(cur.strip())
                cur = ""
                continue
            depth += ch in "([{<"
            depth -= ch in ")]}>"
            cur += ch
        else:
            continue  # the call does not close inside the span
        yield m.group(1), [(p.split("=", 1)[0].strip(), p.split("=", 1)[1].strip() if "=" in p else None)
                           for p in params if p and p not in ("*", "/", "...")]


def test_python_api_pages_name_real_objects_with_their_real_defaults():
    """Every `Name(param=default, ...)` the Python API page writes for an imported object: the object
    exists, takes each named parameter, and each literal default is the code's default."""
    import ast
    import importlib
    import inspect

    checked, bad = 0, []
    for page in ("python-api.md",):
        text = (DOCS / page).read_text(encoding="utf-8")
        objects = {}
        for where, block in _blocks("python"):
            if where != page:
                continue
            for node in ast.walk(ast.parse(block)):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("probekit"):
                    module = importlib.import_module(node.module)
                    objects.update({a.asname or a.name: getattr(module, a.name) for a in node.names if hasattr(module, a.name)})
        for name, params in _documented_calls(text):
            if name not in objects or not callable(objects[name]):
                continue
            sig = inspect.signature(objects[name])
            takes_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
            for param, default in params:
                if not param.isidentifier():
                    continue  # prose in the argument list, e.g. "imagenet" | "cifar10" | FILE
                if param not in sig.parameters:
                    if not takes_kw:
                        bad.append(f"{page}: {name}() has no parameter {param!r}")
                    continue
                if default is None:
                    continue
                try:
                    documented = ast.literal_eval(default)
                except (ValueError, SyntaxError):
                    continue  # prose such as <ten log-spaced values> or "sgd"|"lbfgs"
                if documented is Ellipsis:
                    continue
                real = sig.parameters[param].default
                if real is inspect.Parameter.empty:
                    bad.append(f"{page}: {name}({param}={default}) but {param} has no default")
                    continue
                if callable(getattr(real, "__call__", None)) and type(real).__name__ == "function":
                    continue
                if hasattr(real, "tolist"):
                    real = real.tolist()
                factory = getattr(objects[name], "__dataclass_fields__", {}).get(param)
                if factory is not None and factory.default_factory is not getattr(__import__("dataclasses"), "MISSING"):
                    real = factory.default_factory()
                checked += 1
                if documented != real and not (isinstance(real, tuple) and list(real) == documented):
                    bad.append(f"{page}: {name}({param}={default}) but the code's default is {real!r}")
    assert checked > 40, f"only {checked} documented defaults were checked; the page lost its signatures"
    assert not bad, "docs/python-api.md disagrees with the code:\n" + "\n".join(bad)
