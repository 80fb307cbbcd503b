"""The layer diagram of docs/architecture.md as an import contract.

Every ``import`` in ``probekit/`` (module top or inside a function: a lazy import is still a
dependency) is read with `ast`; a module may import only from its own layer or below. A
back-edge (the feature store reaching up into extraction, robustness reading datasets'
images...) fails this test, so it fails CI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "probekit"

# lowest first; a package or module name -> its layer index
LAYERS: list[tuple[str, ...]] = [
    ("errors", "paths", "atomic", "runtime", "progress", "names", "safe_pickle"),
    ("datasets", "backbones"),
    ("cache", "robustness", "records", "runlog"),
    ("extract", "features", "heads", "finetune", "zeroshot", "ablate"),
    ("plots", "analysis"),
    ("demo", "cli", "__main__", "__init__"),
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def component(module: str) -> str | None:
    """``probekit.heads.run`` -> ``heads``; ``probekit`` itself -> ``__init__``; other packages -> None."""
    parts = module.split(".")
    if parts[0] != "probekit":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, relative ones resolved."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            if target == "probekit":  # `from probekit import cache`: names that are modules are components
                out += [(node.lineno, f"probekit.{alias.name}") for alias in node.names
                        if (ROOT / f"{alias.name}.py").exists() or (ROOT / alias.name).is_dir()]
    return out


def back_edges(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """Every import from a higher layer, or of a component missing from the diagram, as 'module:line -> target'."""
    problems = []
    for module, (source, is_package) in sorted(sources.items()):
        own = component(module)
        if own not in LAYER_OF:
            problems.append(f"{module}: component {own!r} is not in the layer diagram (add it to LAYERS and docs/architecture.md)")
            continue
        for line, target in imported_modules(source, module, is_package):
            other = component(target)
            if other is None or other == own or other == "__init__" and target == "probekit":
                continue
            if other not in LAYER_OF:
                problems.append(f"{module}:{line} imports {target}, whose component {other!r} is not in the layer diagram")
            elif LAYER_OF[other] > LAYER_OF[own]:
                problems.append(f"{module}:{line} imports {target}: layer {LAYER_OF[own]} ({own}) must not import "
                                f"layer {LAYER_OF[other]} ({other})")
    return problems


def package_sources() -> dict[str, tuple[str, bool]]:
    return {module_name(p): (p.read_text(encoding="utf-8"), p.name == "__init__.py") for p in ROOT.rglob("*.py")}


def test_no_module_imports_from_a_higher_layer():
    problems = back_edges(package_sources())
    assert not problems, "import back-edges:\n" + "\n".join(problems)


@pytest.mark.parametrize("module, source, culprit", [
    ("probekit.cache", "def f():\n    from probekit.extract import entry_for\n", "probekit.extract"),          # lazy import
    ("probekit.robustness.testbeds", "from probekit.heads.run import train_head\n", "probekit.heads.run"),
    ("probekit.datasets.registry", "import probekit.cli\n", "probekit.cli"),
    ("probekit.records", "from .plots import plot_er_curves\n", "probekit.plots"),                             # relative
    ("probekit.robustness.runs", "from ..extract import extract\n", "probekit.extract"),
    ("probekit.runtime", "from probekit import cache\n", "probekit.cache"),
])
def test_a_back_edge_is_caught(module, source, culprit):
    sources = {**package_sources(), module: (source, False)}
    problems = back_edges(sources)
    assert any(p.startswith(module) and culprit in p for p in problems), problems


def test_every_component_is_in_the_diagram_and_the_docs():
    components = {component(m) for m in package_sources()}
    assert components <= set(LAYER_OF), components - set(LAYER_OF)
    text = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    for names in LAYERS:
        for name in names:
            if name in components and not name.startswith("__"):
                assert f"`{name}`" in text, f"docs/architecture.md does not name layer member `{name}`"
