"""Fuzz every option of every subcommand with hostile values: never a traceback, never damage.

The matrix is generated from the real parser (`probekit.cli.build_parser`), so a new command
or option is fuzzed the day it lands. Each command has a small *base* invocation that works
in a prepared folder (tiny synthetic feature entries, an 8-image folder dataset, a finished
run); every case replaces or adds one option (or positional) with one hostile value:

- numbers: negative, zero, fractional for whole numbers, huge, NaN / Inf, text, empty;
- names and paths: a folder, a missing path, a text file, damaged JSON / CSV / HDF5, a `.npy`,
  a path through a file, a path on a read-only and on a full file system (when this machine
  can mount them);
- choices: a near miss; flags: the flag on its own.

Each case runs the CLI in-process and must end with status 0 (the value is legitimate) or 2
with exactly one stderr line `probekit: error: ...`, no traceback, and every file that was in
the folder before unchanged. Values no command may accept (text for a number, NaN, a path
through a file ...) must give 2. A case that is still running after `BUDGET_S` was accepted
(e.g. a huge epoch count) and is stopped there.

docs/bad-inputs.md's second part is generated from this catalogue (`python docs/gen_bad_inputs.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _features import write_feature_entry  # noqa: E402

BUDGET_S = 20.0  # a safety net: no case of this matrix should get near it
CLASSES = ["a", "b", "c", "d"]

# Each command's base: a working call in the world folder. "{out}" is a fresh path per case.
# Keys are option strings or positional dests; values a string or a list of strings.
BASES: dict[str, dict[str, object]] = {
    "demo": {"--out": "{out}"},  # its stages are replaced by their pre-flight check (see check_case)
    "extract": {"--model": "small_cnn", "--weights": "none", "--dataset": "folder:imgs", "--split": "all",
                "--image-size": "16", "--cache-dir": "{out}", "--no-progress": None},
    "train-head": {"--model": "pixels", "--cache-dir": "store", "--train": "digits:train", "--id": "digits:test",
                   "--ood": ["mnist5k:test"], "--epochs": "1", "--batch-size": "16", "--lr": ["0.1"], "--out": "{out}",
                   "--baseline": "fit.json", "--no-progress": None},
    "ablate": {"--model": "pixels", "--cache-dir": "store", "--train": "digits:train", "--id": "digits:test",
               "--ood": ["mnist5k:test"], "--sizes": ["4"], "--seeds": ["0"], "--epochs": "1", "--batch-size": "16",
               "--lr": ["0.1"], "--out": "{out}", "--no-progress": None},
    "cscore": {"--model": "pixels", "--cache-dir": "store", "--train": "digits:train", "--out": "{out}.npz",
               "--heads-per-ratio": "2", "--epochs": "1", "--batch-size": "16", "--no-progress": None},
    "zero-shot": {"--model": "clip-vit-b-32", "--classes": "classes.txt", "--id": "feats/id.h5", "--out": "{out}"},
    "finetune": {"--model": "small_cnn", "--weights": "none", "--dataset": "folder:imgs:all", "--id": "folder:imgs:all",
                 "--image-size": "16", "--max-steps": "1", "--epochs": "1", "--lr": ["0.1"], "--seeds": ["0"],
                 "--batch-size": "4", "--out": "{out}", "--no-progress": None},
    "baseline list": {"--cache-dir": "store"},
    "baseline show": {"baseline": "fit.json"},
    "baseline fit": {"--csv": "good.csv", "--out": "{out}.json"},
    "baseline build": {"name": "cifar10-cifar10.1", "--data-root": "dir", "--cache-dir": "{out}"},
    "plot": {"runs": ["run"], "--out": "{out}", "--format": ["png"]},
    "analyze unique-correct": {"run": "run"},
    "cache ls": {"--cache-dir": "store"},
    "cache info": {"entry": "pixels__digits__test", "--cache-dir": "store"},
    "cache rm": {"entries": ["pixels__digits__test"], "--cache-dir": "store", "--dry-run": None},
    "cache prune": {"--cache-dir": "store", "--dry-run": None},
    "models": {"pattern": "small_cnn"},
    "datasets": {"--cache-dir": "store"},
}
SKIP = {("baseline build", "--download")}  # would go to the network
# options whose value is written to: a path there must be a usable place to write
OUTPUTS = {"--out", "--json", "--csv"}

INT_VALUES = ["-1", "0", "2.5", "99999999999999999999", "abc", ""]
FLOAT_VALUES = ["-1", "0", "nan", "inf", "-inf", "1e400", "abc", ""]
ALWAYS_REFUSED_NUMBERS = {"2.5", "abc", "", "nan", "inf", "-inf", "1e400"}
PATH_VALUES = ["dir", "missing/nothing", "text.txt", "damaged.json", "ragged.csv", "bom-ragged.csv", "damaged.h5",
               "scores.npy", "badrun", "text.txt/sub", "RO/sub/x", "FULL/x", ""]
# The test suite tries this subset of them (the kinds of failure, at half the cost); `python docs/gen_bad_inputs.py`
# (PROBEKIT_FUZZ=full) tries them all for the catalogue page.
QUICK_PATH_VALUES = {"dir", "missing/nothing", "text.txt", "damaged.h5", "badrun", "text.txt/sub", "FULL/x", ""}
FULL = os.environ.get("PROBEKIT_FUZZ") == "full"
ALWAYS_REFUSED_OUTPUTS = {"text.txt/sub", "RO/sub/x", "FULL/x"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@functools.lru_cache(maxsize=1)
def leaf_commands() -> dict[str, argparse.ArgumentParser]:
    """Every runnable (sub)command of the real parser, by its words: 'train-head', 'cache ls' ..."""
    from probekit.cli import build_parser

    found = {}

    def walk(parser, words):
        subs = _subparsers(parser)
        if not subs and words:
            found[" ".join(words)] = parser
        for name, child in subs.items():
            if child not in found.values():  # aliases point at the same parser
                walk(child, [*words, name])

    walk(build_parser(), [])
    return found


def _kind(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "flag"
    if action.choices is not None:
        return "choice"
    t = action.type
    name = getattr(t, "__name__", "")
    if t is int or name in ("integer", "positive whole number", "whole number", "seed", "image size", "worker count",
                            "resample count"):
        return "int"
    if t is float or name in ("number", "positive number", "non-negative number", "fraction", "accuracy", "momentum"):
        return "float"
    return "text"


def _values(action: argparse.Action) -> list[str | None]:
    kind = _kind(action)
    if kind == "flag":
        return [None]
    if kind == "choice":
        first = str(next(iter(action.choices)))
        return [first[:-1] + ("x" if first[-1:] != "x" else "y")]
    return {"int": INT_VALUES, "float": FLOAT_VALUES, "text": PATH_VALUES}[kind]


def cases() -> list[tuple[str, str, str | None]]:
    """(command, option or positional dest, value) for every command, option and hostile value."""
    out = []
    for command, parser in leaf_commands().items():
        out.append((command, "--help", None))
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)) or action.dest == argparse.SUPPRESS:
                continue
            key = action.option_strings[0] if action.option_strings else action.dest
            if (command, key) in SKIP:
                continue
            for value in _values(action):
                out.append((command, key, value))
    return out


def build_argv(command: str, key: str, value: str | None, out: str, *, help: bool = True) -> list[str]:
    """`command`'s base invocation with `key` set to `value` ("--help": the help, or with help=False the base)."""
    parser = leaf_commands()[command]
    base = dict(BASES.get(command, {}))
    if key == "--help" and help:
        return [*command.split(), "--help"]
    if key == "--help":
        key = None
    if key is not None:
        action = next(a for a in parser._actions if (a.option_strings and a.option_strings[0] == key) or a.dest == key)
        if value is None or action.nargs is None:
            base[key] = value
        else:
            base[key] = [value] * (action.nargs if isinstance(action.nargs, int) else 1)
    positional = [a.dest for a in parser._actions if not a.option_strings]
    argv = command.split()
    for dest in positional:
        if dest in base:
            v = base[dest]
            argv += list(v) if isinstance(v, list) else [v]
    for k, v in base.items():
        if k in positional:
            continue
        argv.append(k)
        if v is not None:
            argv += list(v) if isinstance(v, list) else [v]
    return [a.replace("{out}", out) if isinstance(a, str) else a for a in argv]


class _Budget(BaseException):
    """Raised by the watchdog: the command accepted its input and was still working."""


def _alarm(signum, frame):
    raise _Budget()


def run_in(world: Path, argv: list[str], budget: float | None = BUDGET_S) -> tuple[int | str, str, str]:
    """Run `probekit argv` in-process inside `world`: (status or 'budget', stdout, stderr)."""
    from probekit.cli import main

    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(world)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, budget or 0)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except _Budget:
                rc = "budget"
            except Exception:  # noqa: BLE001 - the bug this test exists to find
                import traceback

                rc = "traceback"
                err.write(traceback.format_exc())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.chdir(cwd)
    real = str(world.resolve())
    clean = lambda s: s.replace(real, "$WORK").replace(str(world), "$WORK")  # noqa: E731
    return rc, clean(out.getvalue()), clean(err.getvalue())


def _mount(folder: Path, options: str) -> bool:
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode == 0


def build_world(root: Path) -> tuple[Path, list[Path]]:
    """The folder the cases run in, and the mount points to unmount afterwards."""
    from PIL import Image

    from probekit.cli import main
    from probekit.robustness import fit_baseline

    rng = np.random.default_rng(0)
    store = root / "store"
    for ds, split, n in (("digits", "train", 64), ("digits", "test", 32), ("mnist5k", "test", 32)):
        y = np.arange(n) % 4
        X = (rng.normal(size=(n, 8)) + y[:, None]).astype(np.float32)
        path = write_feature_entry(store, ds, split, X, y, backbone="pixels", weight_id="test", classes=CLASSES, label_space="toy")
        if split == "test" and ds == "digits":
            (root / "feats").mkdir()
            shutil.copy(path, root / "feats" / "id.h5")
    for c in ("cat", "dog"):
        (root / "imgs" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (40 * i, 80 if c == "cat" else 160, 120)).save(root / "imgs" / c / f"{i}.png")
    (root / "dir").mkdir()
    (root / "text.txt").write_text("hello\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "damaged.json").write_text('{"slope": 1.0, "intercept": ')
    (root / "good.csv").write_text("model,id,ood\na,0.6,0.4\nb,0.7,0.5\nc,0.8,0.65\n")
    (root / "ragged.csv").write_text("model,id,ood\na,0.6\nb,0.7,0.5,0.1\nc,0.8,0.65\n")
    (root / "bom-ragged.csv").write_bytes(b"\xef\xbb\xbfmodel,id,ood\na,0.6,0.4\nb,0.7\n")
    (root / "damaged.h5").write_bytes((root / "feats" / "id.h5").read_bytes()[:3000])
    np.save(root / "scores.npy", np.zeros(5))
    fit_baseline([0.6, 0.7, 0.8, 0.9], [0.4, 0.5, 0.65, 0.8], names=list("abcd"), ood_set="mnist5k:test").save(root / "fit.json")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train-head", "--model", "pixels", "--cache-dir", str(store), "--train", "digits:train", "--id", "digits:test", "--ood", "mnist5k:test",
                     "--epochs", "1", "--batch-size", "16", "--lr", "0.1", "--out", str(root / "run"), "--baseline",
                     str(root / "fit.json"), "--no-progress"]) == 0
    shutil.copytree(root / "run", root / "badrun")
    (root / "badrun" / "config.json").write_text('{"command": "train-head", ')
    for command in ("extract", "finetune", "datasets", "models"):  # first runs import lazily (torch.optim -> dynamo),
        # read the system's datasets: not under a watchdog
        rc, _, err = run_in(root, build_argv(command, "--help", "", f"warm-{command}", help=False), budget=None)
        assert rc == 0, err
    mounts = []
    if _mount(root / "FULL", "size=64k"):
        mounts.append(root / "FULL")
        fd = os.open(root / "FULL" / "filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
        os.close(fd)
    if _mount(root / "RO", "size=64k"):
        (root / "RO" / "sub").mkdir()
        mounts.append(root / "RO")
        subprocess.run(["mount", "-o", "remount,ro", str(root / "RO")], check=True)
    return root, mounts


def snapshot(world: Path) -> dict[str, str]:
    """sha256 of every file in the world, "dir" for every folder."""
    return {path.relative_to(world).as_posix(): "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(world.rglob("*")) if not path.is_symlink()}


def restore(world: Path, before: dict[str, str]) -> None:
    """Remove what a case created (a run in `dir`, figures ...), so every case sees the same world."""
    for path in sorted(world.rglob("*"), key=lambda p: -len(p.parts)):
        if path.relative_to(world).as_posix() not in before:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def check_case(world: Path, before: dict[str, str], case: tuple[str, str, str | None], index: int) -> tuple[str, str]:
    """Run one case and check the contract; returns (outcome, message) for the catalogue."""
    command, key, value = case
    if value in ("RO/sub/x", "FULL/x") and not (world / value.split("/")[0]).is_mount():
        return "skipped", "no tmpfs here"
    if not FULL and value in PATH_VALUES and value not in QUICK_PATH_VALUES:
        return "skipped", "quick run (PROBEKIT_FUZZ=full tries it)"
    argv = build_argv(command, key, value, f"out-{index}")
    if command == "demo":  # the demo's stages take minutes: check what it does before them, then stop
        import probekit.demo
        from probekit.paths import output_dir

        real, probekit.demo.run_demo = probekit.demo.run_demo, lambda out, **kw: output_dir(out)
        try:
            rc, out, err = run_in(world, argv)
        finally:
            probekit.demo.run_demo = real
    else:  # figures are drawn but not rasterised: what is under test is the paths, not matplotlib's renderer
        from matplotlib.figure import Figure

        real, Figure.savefig = Figure.savefig, lambda self, buf, **kw: buf.write(b"figure")
        try:
            rc, out, err = run_in(world, argv)
        finally:
            Figure.savefig = real
    shown = " ".join(argv)
    assert "Traceback" not in err and rc in (0, 2, "budget"), f"probekit {shown}: status {rc}\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    if rc == 2:
        errors = [line for line in lines if line.startswith("probekit: error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], f"probekit {shown}: want one error line, got\n{err}"
    if value is not None and key != "--help":
        kind = _kind(next(a for a in leaf_commands()[command]._actions
                          if (a.option_strings and a.option_strings[0] == key) or a.dest == key))
        if (kind in ("int", "float") and value in ALWAYS_REFUSED_NUMBERS) or (key in OUTPUTS and value in ALWAYS_REFUSED_OUTPUTS):
            assert rc == 2, f"probekit {shown}: accepted {value!r} for {key} (status {rc})"
    after = snapshot(world)
    changed = [p for p, d in before.items() if after.get(p) != d]
    assert not changed, f"probekit {shown} changed or removed {changed}"
    restore(world, before)
    if rc == 2:
        return "refused", lines[-1].removeprefix("probekit: error: ")
    return ("accepted" if rc == 0 else "still running after budget"), ""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root, mounts = build_world(tmp_path_factory.mktemp("fuzz"))
    yield root
    for m in mounts:
        subprocess.run(["umount", str(m)], capture_output=True)


CASES = cases()
RESULTS: dict[tuple[str, str, str | None], tuple[str, str]] = {}


def _by_command():
    grouped: dict[str, list] = {}
    for i, case in enumerate(CASES):
        grouped.setdefault(case[0], []).append((i, case))
    return grouped


@pytest.mark.parametrize("command", sorted(_by_command()))
def test_hostile_values_never_crash(command, world):
    """Every option of `command` with every hostile value: status 0 or one error line and 2, files intact."""
    before = snapshot(world)
    for index, case in _by_command()[command]:
        RESULTS[case] = check_case(world, before, case, index)


def test_every_command_has_a_base():
    """A command without a working base invocation is only fuzzed at the parser: give it one in BASES."""
    missing = sorted(set(leaf_commands()) - set(BASES))
    assert not missing, f"add a base invocation to BASES for: {', '.join(missing)}"


def _shown(value: str | None) -> str:
    return "(flag)" if value is None else (f"`{value}`" if value else "`''`")


def render(results: dict) -> str:
    """The fuzz part of docs/bad-inputs.md: per command and option, which values were refused or accepted."""
    ran = {c: r for c, r in results.items() if r[0] != "skipped" and c[1] != "--help"}
    refused = sum(r[0] == "refused" for r in ran.values())
    commands = sorted({c[0] for c in results})
    rows = ["", "## Every option, hostile values", "",
            f"{len(ran)} hostile inputs to {len(commands)} commands (every option and positional of each, found",
            f"from the parser): {refused} refused with one `probekit: error:` line and exit 2,",
            f"{len(ran) - refused} accepted as legitimate (exit 0). No traceback, and no file that existed",
            "before was changed. Values: numbers `-1 0 2.5 99999999999999999999 nan inf -inf 1e400 abc ''`;",
            "for names and paths: a folder (`dir`), a missing path, a text file, damaged JSON, a ragged CSV",
            "(also with a UTF-8 BOM), a truncated HDF5 file, a `.npy`, a run folder with a damaged",
            "`config.json` (`badrun`), a path through a file (`text.txt/sub`), paths on a read-only (`RO/`)",
            "and on a full (`FULL/`) tmpfs, and the empty string; a near miss for choices; each flag alone.",
            "Each command starts from a working base invocation (`BASES` in the test); `demo` runs only its",
            "pre-flight checks. The message shown is the first refused value's."]
    for command in commands:
        rows += ["", f"### `probekit {command}`", "", "| option | refused | accepted | message (first refused) |", "|---|---|---|---|"]
        options = list(dict.fromkeys(c[1] for c in results if c[0] == command and c[1] != "--help"))
        for option in options:
            mine = [(c[2], r) for c, r in ran.items() if c[0] == command and c[1] == option]
            bad = [v for v, r in mine if r[0] == "refused"]
            good = [v for v, r in mine if r[0] != "refused"]
            first = next((r[1] for v, r in mine if r[0] == "refused"), "")
            first = first if len(first) <= 140 else first[:137] + "..."
            esc = lambda t: t.replace("|", "\\|")  # noqa: E731
            rows.append(f"| `{option}` | {' '.join(map(_shown, bad))} | {' '.join(map(_shown, good))} | {esc(first)} |")
    return "\n".join(rows) + "\n"


def _outcomes(text: str) -> dict[tuple[str, str, str], str]:
    """(command, option, shown value) -> refused | accepted, read back from a rendered page."""
    import re

    found, command = {}, None
    for line in text.split("\n## Every option, hostile values", 1)[-1].splitlines():
        m = re.match(r"### `probekit (.*)`", line)
        if m:
            command = m.group(1)
        elif line.startswith("| `") and command:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            for outcome, cell in (("refused", cells[1]), ("accepted", cells[2])):
                for value in re.findall(r"`[^`]*`|\(flag\)", cell):
                    found[(command, cells[0].strip("`"), value)] = outcome
    return found


def test_zz_catalogue_page_is_current():
    """docs/bad-inputs.md's fuzz part says what this run found (values skipped here are not compared)."""
    if len({c[0] for c in RESULTS}) < len(_by_command()):
        pytest.skip("not every command ran in this session")
    page = _outcomes((HERE.parents[1] / "docs" / "bad-inputs.md").read_text(encoding="utf-8"))
    now = _outcomes(render(RESULTS))
    skipped = {(c[0], c[1], _shown(c[2])) for c, r in RESULTS.items() if r[0] == "skipped"}
    stale = sorted(k for k in set(page) | set(now) if k not in skipped and page.get(k) != now.get(k))
    assert not stale, f"docs/bad-inputs.md is stale ({stale[:5]} ...): run python docs/gen_bad_inputs.py"


def catalogue_results() -> dict:
    """Run the whole matrix once in a fresh world (what docs/gen_bad_inputs.py renders)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        world, mounts = build_world(Path(tmp))
        try:
            before = snapshot(world)
            return {case: check_case(world, before, case, i) for i, case in enumerate(CASES)}
        finally:
            for m in mounts:
                subprocess.run(["umount", str(m)], capture_output=True)
