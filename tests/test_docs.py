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


def _parse_args(text: str):
    """The comma-separated arguments of `text` up to its closing parenthesis (at depth 0), and what follows it;
    None when the call does not close."""
    params, depth, cur = [], 0, ""
    for i, ch in enumerate(text):
        if ch == ")" and depth == 0:
            params.append(cur.strip())
            return params, text[i + 1:]
        if ch == "," and depth == 0:
            params.append(cur.strip())
            cur = ""
            continue
        depth += ch in "([{<"
        depth -= ch in ")]}>"
        cur += ch
    return None


def _documented_calls(text: str):
    """``Name(a, b=1, ...)`` spans of a page's prose: (name, [(param, default text or None)], offset in the prose).

    `Name` may be dotted (``Baseline.load(path)``, ``probekit.analysis.unique_correct(...)``); a call
    chained on a call (``SGDHeads(...).fit(...)``) comes out as ``SGDHeads().fit``."""
    import re

    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.finditer(r"`([^`]+)`", prose):
        m = re.match(r"\s*([A-Za-z_][\w.]*)\(", span.group(1))
        if not m:
            continue
        name, rest = m.group(1), span.group(1)[m.end():]
        while (parsed := _parse_args(rest)) is not None:
            params, rest = parsed
            yield name, [(p.split("=", 1)[0].strip(), p.split("=", 1)[1].strip() if "=" in p else None)
                         for p in params if p and p not in ("*", "/", "...")], span.start()
            chained = re.match(r"\.([A-Za-z_]\w*)\(", rest)
            if not chained:
                break
            name, rest = f"{name}().{chained.group(1)}", rest[chained.end():]


# Names a Python API page writes as calls that live outside probekit and outside the modules the
# page names: where to find them. (Builtins such as `len(...)` resolve through `builtins`.)
ELSEWHERE = {
    "LogisticRegression": "sklearn.linear_model",
    "GridSearchCV": "sklearn.model_selection",
    "make_pipeline": "sklearn.pipeline",
    "StandardScaler": "sklearn.preprocessing",
}


class _Resolver:
    """Finds the object a page means by a prose call ``Name(...)``, in this order:

    1. a name imported by one of the page's ``python`` blocks;
    2. a dotted name: ``probekit.x.y.f`` is imported; ``Cls.attr`` is `attr` of the resolved `Cls`;
       ``Cls().attr`` (a chained call) is `attr` of the class `Cls`;
    3. a method: an attribute of the nearest class the prose names before the call in the same section
       (``Baseline`` ... ``describe()``; ``SGDHeads(...)`` ... ``predict(X)``; ``Run`` ... ``head_records(head)``);
    4. an attribute of a module the page names anywhere (``probekit.records`` in prose, ``from
       probekit.heads.sgd import ...`` in a block); several different objects of that name is an error;
    5. `builtins`, then `ELSEWHERE`.
    Anything else is an error: the page names something that does not exist (or says it too vaguely)."""

    def __init__(self, page: str, text: str):
        import ast
        import importlib
        import re

        self.page, self.objects, self.modules = page, {}, {}
        for where, block in _blocks("python"):
            if where != page:
                continue
            for node in ast.walk(ast.parse(block)):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("probekit"):
                    module = importlib.import_module(node.module)
                    self.objects.update({a.asname or a.name: getattr(module, a.name) for a in node.names
                                         if hasattr(module, a.name)})
        for dotted in sorted(set(re.findall(r"\bprobekit(?:\.[A-Za-z_]\w*)+", text))):
            module = self._import_prefix(dotted)[0]
            if module is not None:
                self.modules[module.__name__] = module
        # (offset in the prose, class) of every backticked name that is a class, and where sections start, for rule 3
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        self.sections = [m.start() for m in re.finditer(r"^#", prose, re.M)]
        self.classes = []
        for span in re.finditer(r"`\s*([A-Za-z_][\w.]*)", prose):
            obj = self._lookup(span.group(1), methods=False, errors=[])
            if isinstance(obj, type):
                self.classes.append((span.start(), obj))

    @staticmethod
    def _import_prefix(dotted: str):
        """(the longest importable module prefix of `dotted`, the attribute names after it)."""
        import importlib

        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            try:
                return importlib.import_module(".".join(parts[:i])), parts[i:]
            except ImportError:
                continue
        return None, parts

    def resolve(self, name: str, offset: int, errors: list) -> object:
        return self._lookup(name, methods=True, errors=errors, offset=offset)

    def _lookup(self, name, *, methods, errors, offset=0):
        import builtins
        import importlib

        if "." in name:
            head, _, attr_path = name.partition(".")
            if head == "probekit":
                obj, attrs = self._import_prefix(name)
            else:
                obj = self._lookup(head.removesuffix("()"), methods=methods, errors=errors, offset=offset)
                attrs = attr_path.split(".")
            for attr in attrs:
                obj = getattr(obj, attr.removesuffix("()"), None)
            return obj
        if name in self.objects:
            return self.objects[name]
        if methods:
            section = max((s for s in self.sections if s <= offset), default=0)
            for _, cls in sorted((c for c in self.classes if section <= c[0] < offset), key=lambda c: -c[0]):
                if callable(getattr(cls, name, None)):
                    return getattr(cls, name)
        found = {id(getattr(m, name)): getattr(m, name) for m in self.modules.values() if hasattr(m, name)}
        found = {k: v for k, v in found.items() if callable(v)}
        if len(found) > 1:
            errors.append(f"{self.page}: `{name}(...)` is ambiguous: several of the modules the page names define it")
            return None
        if found:
            return next(iter(found.values()))
        if hasattr(builtins, name):
            return getattr(builtins, name)
        if name in ELSEWHERE:
            return getattr(importlib.import_module(ELSEWHERE[name]), name, None)
        return None


def _check_calls(page: str, text: str) -> tuple[int, int, list[str]]:
    """(literal defaults compared, calls resolved, problems) of every prose ``Name(...)`` of `text`."""
    import ast
    import inspect

    checked, resolved, bad = 0, 0, []
    resolver = _Resolver(page, text)
    for name, params, offset in _documented_calls(text):
        obj = resolver.resolve(name, offset, bad)
        if obj is None or not callable(obj):
            bad.append(f"{page}: `{name}(...)` names nothing the page imports, names a module of, or talks about "
                       "(import it in a snippet, write it dotted, or add it to ELSEWHERE)")
            continue
        resolved += 1
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            continue  # a builtin without a signature, e.g. min(a, b): found is all we can check
        takes_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        positional_only = [p for p in sig.parameters.values() if p.kind is p.POSITIONAL_ONLY]
        for i, (param, default) in enumerate(params):
            if not param.isidentifier():
                continue  # prose in the argument list, e.g. "imagenet" | "cifar10" | FILE
            if default is None and i < len(positional_only):
                continue  # an argument, not a name: len(lrs)
            if param not in sig.parameters:
                if not takes_kw:
                    bad.append(f"{page}: {name}() has no parameter {param!r} (it takes {', '.join(sig.parameters)})")
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
            factory = getattr(obj, "__dataclass_fields__", {}).get(param)
            if factory is not None and factory.default_factory is not getattr(__import__("dataclasses"), "MISSING"):
                real = factory.default_factory()
            checked += 1
            if documented != real and not (isinstance(real, tuple) and list(real) == documented):
                bad.append(f"{page}: {name}({param}={default}) but the code's default is {real!r}")
    return checked, resolved, bad


def test_python_api_pages_name_real_objects_with_their_real_defaults():
    """Every `Name(param=default, ...)` the Python API page writes: the object exists (found by `_Resolver`:
    the page's imports, the class it is talking about, the modules it names), takes each named parameter,
    and each literal default is the code's default. A name that resolves to nothing fails."""
    page = "python-api.md"
    checked, resolved, bad = _check_calls(page, (DOCS / page).read_text(encoding="utf-8"))
    assert not bad, f"docs/{page} disagrees with the code:\n" + "\n".join(bad)
    assert checked > 40, f"only {checked} documented defaults were checked; the page lost its signatures"
    assert resolved > 45, f"only {resolved} documented calls were resolved; the page lost its signatures"


def test_the_page_check_refuses_what_does_not_exist():
    """Names resolved only through a module the page names are checked too; unknown names and parameters fail."""
    text = ("```python\nfrom probekit.records import EvalPlan\n```\n\n"
            "From `probekit.plots`: `plot_sweep(runs, out, by=\"subset\")`, `no_such_function(x)`, "
            "`EvalPlan(id_set, n_id, ood=[1])`.\n\n`probekit.runlog.Run` has `head_records(head)` and "
            "`no_such_method()`; `probekit.records.nope(a)`; `read_run(run_dir, strict=True)`; `SGDHead(lr, seed)`.\n")
    checked, resolved, bad = _check_calls("python-api.md", text)
    assert sorted(bad) == sorted([
        "python-api.md: plot_sweep() has no parameter 'out' (it takes runs, out_path, by, ood_set, baseline, formats, title)",
        "python-api.md: EvalPlan(ood=[1]) but the code's default is ()",
        "python-api.md: read_run() has no parameter 'strict' (it takes run_dir)",
    ] + [f"python-api.md: `{n}(...)` names nothing the page imports, names a module of, or talks about "
         "(import it in a snippet, write it dotted, or add it to ELSEWHERE)"
         for n in ("no_such_function", "no_such_method", "probekit.records.nope", "SGDHead")]), bad
    assert resolved == 4 and checked == 2  # plot_sweep, EvalPlan, Run.head_records, read_run; by= and ood=
