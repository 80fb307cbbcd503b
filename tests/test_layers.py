"""The layer diagram of docs/architecture.md as an import contract.

Every ``import`` in ``probekit/`` (module top or inside a function: a lazy import is still a
dependency) is read with `ast`. A module may import from a lower layer; within its own layer
only from its own component or along one of the named pairs in `SAME_LAYER`. A back-edge (the
feature store reaching up into records or extraction, robustness reading datasets' images,
extraction asking the feature lookup above it, heads running ablations...) fails this test, so
it fails CI. The table in docs/architecture.md must list exactly these layers and pairs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "probekit"

# lowest first; a package or module name -> its layer index
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("paths", "atomic", "runtime", "progress", "names", "safe_pickle"),
    ("cache", "runlog"),          # files only: the feature store never sees records, models or extraction
    ("robustness",),              # below datasets: ER math never reads images (the old robustness <-> datasets cycle)
    ("records",),                 # above robustness, below everything that produces accuracies
    ("datasets", "backbones"),
    ("extract", "finetune"),
    ("features",),                # above extract: it may build a backbone to compute an exact key
    ("heads", "zeroshot"),
    ("ablate",),                  # above heads: ablation grids run heads, never the other way round
    ("plots", "analysis"),
    ("demo", "cli", "__main__", "__init__"),
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}

# the only imports allowed between two components of one layer: (importer, imported)
SAME_LAYER: set[tuple[str, str]] = {
    ("backbones", "datasets"),
    ("cli", "demo"),
    ("__main__", "cli"),
}


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
    """Every import from a higher layer, between two components of one layer that `SAME_LAYER` does not
    name, or of a component missing from the diagram, as 'module:line imports target: why'."""
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
            elif LAYER_OF[other] == LAYER_OF[own] and (own, other) not in SAME_LAYER:
                problems.append(f"{module}:{line} imports {target}: {own} and {other} share layer {LAYER_OF[own]}, "
                                f"and {own} -> {other} is not one of its allowed pairs (SAME_LAYER)")
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
    # the finer layers: each of these was allowed while they shared a layer
    ("probekit.robustness.testbeds", "from probekit.datasets import create_dataset\n", "probekit.datasets"),  # the old cycle
    ("probekit.robustness.runs", "def f():\n    from ..datasets.subsets import select_subset\n", "probekit.datasets.subsets"),
    ("probekit.extract", "from probekit.features import resolve_features\n", "probekit.features"),
    ("probekit.cache", "def f():\n    from probekit.records import evaluation_records\n", "probekit.records"),
    ("probekit.heads.run", "from probekit.ablate.run import ablate\n", "probekit.ablate.run"),
    ("probekit.records", "from probekit.datasets import create_dataset\n", "probekit.datasets"),
    ("probekit.runlog", "from probekit.robustness import load_baseline\n", "probekit.robustness"),
    ("probekit.errors", "from probekit.names import parse_dataset_split\n", "probekit.names"),              # errors: alone at the bottom
    # same layer, not a named pair
    ("probekit.datasets.registry", "from probekit.backbones import create_backbone\n", "probekit.backbones"),
    ("probekit.finetune.loop", "from probekit.extract import extract\n", "probekit.extract"),
    ("probekit.extract", "from probekit.finetune.recipes import RECIPES\n", "probekit.finetune.recipes"),
    ("probekit.heads.run", "from probekit.zeroshot.init import resolve_init\n", "probekit.zeroshot.init"),
    ("probekit.cache", "from probekit import runlog\n", "probekit.runlog"),
    ("probekit.paths", "from probekit import atomic\n", "probekit.atomic"),
    ("probekit.demo", "import probekit.__main__\n", "probekit.__main__"),
])
def test_a_back_edge_is_caught(module, source, culprit):
    sources = {**package_sources(), module: (source, False)}
    problems = back_edges(sources)
    assert any(p.startswith(module) and culprit in p for p in problems), problems


def test_the_named_pairs_are_same_layer_edges_the_code_uses():
    """`SAME_LAYER` stays minimal: every pair is two components of one layer, and some module imports along it."""
    used = set()
    for module, (source, is_package) in package_sources().items():
        own = component(module)
        used |= {(own, component(t)) for _, t in imported_modules(source, module, is_package)}
    for a, b in sorted(SAME_LAYER):
        assert a in LAYER_OF and b in LAYER_OF and LAYER_OF[a] == LAYER_OF[b], (a, b)
        assert (a, b) in used, f"SAME_LAYER allows {a} -> {b}, which no module imports: drop it"


def _documented_layers() -> tuple[list[tuple[str, ...]], set[tuple[str, str]]]:
    """The layer table and the same-layer pairs of docs/architecture.md's Layers section."""
    text = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| *(\d+) *\| *([^|]*?) *\|", section, re.M)
    layers = [tuple(re.findall(r"`([^`]+)`", names)) for _, names in rows]
    assert [int(i) for i, _ in rows] == list(range(len(rows))), "the layer table must number its rows 0, 1, 2, ..."
    pairs_line = next((line for line in section.splitlines() if line.startswith("Same-layer imports")), "")
    pairs = set(re.findall(r"`([^`]+)` → `([^`]+)`", pairs_line))
    return layers, pairs


def test_every_component_is_in_the_diagram_and_the_docs():
    components = {component(m) for m in package_sources()}
    assert components <= set(LAYER_OF), components - set(LAYER_OF)
    layers, pairs = _documented_layers()
    enforced = [tuple(n for n in names if not n.startswith("__")) for names in LAYERS]
    assert layers == enforced, ("docs/architecture.md's layer table differs from tests/test_layers.py LAYERS:\n"
                                f"docs: {layers}\ntest: {enforced}")
    assert pairs == SAME_LAYER, ("docs/architecture.md's same-layer pairs differ from SAME_LAYER: "
                                 f"docs only {sorted(pairs - SAME_LAYER)}, test only {sorted(SAME_LAYER - pairs)}")
