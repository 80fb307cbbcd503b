"""The cells of an ablation grid: which training subset, seed and learning rate each run gets.

The paper varies one data property at a time (Andreassen et al., Sec. 5): the *size* of the
fine-tuning set (examples per class), its *diversity* (number of classes) and its
*difficulty* (C-score: easiest / hardest / random examples). A grid lists values for any of
the three axes; every value is crossed with every seed and every learning rate. A cell's
subset is a `probekit.datasets.subsets` spec drawn with the cell's seed, and the same seed
draws the head's initialisation and shuffling, so a cell is exactly
``train-head --subset SPEC --subset-seed S --seeds S --lr LR``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from probekit.errors import UserError

KINDS = ("size", "classes", "difficulty")
DIFFICULTIES = ("easiest", "hardest", "random")


@dataclass(frozen=True)
class Cell:
    """One run of the grid; `id` names its folder and its rows in the summary table."""

    kind: str                   # "size" | "classes" | "difficulty"
    size: int | None            # examples per class (None: every example)
    classes: int | None         # classes trained on (None: all)
    difficulty: str | None      # "easiest" | "hardest" | "random" (kind "difficulty")
    seed: int
    lr: float | None            # SGD / finetune learning rate; None for L-BFGS (the λ sweep is inside the cell)
    subset: str | None          # the subset spec (`probekit.datasets.subsets`), None for the full set

    @property
    def value(self) -> int | str:
        """The cell's value on its own axis (what the figure's x axis shows)."""
        if self.kind == "size":
            return "all" if self.size is None else self.size
        return self.classes if self.kind == "classes" else self.difficulty

    @property
    def id(self) -> str:
        lr = f",lr={self.lr:g}" if self.lr is not None else ""
        return f"{self.kind}={self.value},seed={self.seed}{lr}"

    def spec(self) -> dict:
        """What records and summaries carry about the cell."""
        return {"id": self.id, **asdict(self)}


@dataclass(frozen=True)
class Grid:
    """The grid as the user gave it: values per axis, seeds, learning rates (None for L-BFGS)."""

    sizes: tuple = ()
    classes: tuple = ()
    difficulty: tuple = ()
    difficulty_size: int | None = None   # examples per class of every difficulty subset
    seeds: tuple = (0,)
    lrs: tuple | None = (0.001,)

    def to_json(self) -> dict:
        return asdict(self)


def _no_repeats(values: Sequence, option: str) -> None:
    seen = [v for i, v in enumerate(values) if v in values[:i]]
    if seen:
        raise UserError(f"{option} repeats {', '.join(str(v) for v in dict.fromkeys(seen))}; give each value once")


def _whole(text, option: str, *, minimum: int = 1) -> int:
    try:
        value = int(str(text))
    except ValueError:
        raise UserError(f"{option} takes whole numbers, got {text!r}") from None
    if value < minimum:
        raise UserError(f"{option} values must be at least {minimum}, got {value}")
    return value


def make_grid(*, sizes: Sequence = (), classes: Sequence = (), difficulty: Sequence = (), difficulty_size=None,
              seeds: Sequence = (0,), lrs: Sequence | None = (0.001,)) -> Grid:
    """A `Grid` from CLI-style values (``"all"`` among sizes); unknown or repeated values are a `UserError`."""
    size_vals = [("all" if str(s).lower() == "all" else _whole(s, "--sizes")) for s in sizes]
    class_vals = [_whole(k, "--classes", minimum=2) for k in classes]
    diff_vals = [str(d).lower() for d in difficulty]
    unknown = [d for d in diff_vals if d not in DIFFICULTIES]
    if unknown:
        raise UserError(f"--difficulty {unknown[0]!r} is not one of {', '.join(DIFFICULTIES)}")
    seed_vals = [_whole(s, "--seeds", minimum=0) for s in seeds]
    for values, option in ((size_vals, "--sizes"), (class_vals, "--classes"), (diff_vals, "--difficulty"), (seed_vals, "--seeds")):
        _no_repeats(values, option)
    if lrs is not None:
        from probekit.heads.evaluation import check_positive_list

        lrs = check_positive_list(list(lrs), "--lr")
        _no_repeats(lrs, "--lr")
    if not (size_vals or class_vals or diff_vals):
        raise UserError("the grid is empty; give at least one of --sizes, --classes or --difficulty")
    if not seed_vals:
        raise UserError("--seeds is empty; give at least one seed")
    if diff_vals and difficulty_size is None:
        raise UserError("--difficulty needs --difficulty-size N (examples per class of each difficulty subset, e.g. 500)")
    if difficulty_size is not None:
        if not diff_vals:
            raise UserError("--difficulty-size is only used with --difficulty; add --difficulty easiest hardest random or drop it")
        difficulty_size = _whole(difficulty_size, "--difficulty-size")
    return Grid(tuple(size_vals), tuple(class_vals), tuple(diff_vals), difficulty_size, tuple(seed_vals),
                None if lrs is None else tuple(lrs))


def build_cells(grid: Grid, labels: np.ndarray, *, has_cscores: bool = False) -> list[Cell]:
    """Every cell of `grid` for training labels `labels`, checked against what the data holds.

    Order: axis (size, classes, difficulty), then value, seed, lr; `--shard` and `--list` use it."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    present = counts[counts > 0]
    smallest, n_classes = int(present.min()), len(present)
    too_big = [s for s in grid.sizes if s != "all" and s > smallest]
    if too_big:
        raise UserError(f"--sizes {too_big[0]} asks for {too_big[0]} examples per class but the smallest class of the "
                        f"training set has {smallest}; use sizes up to {smallest} (or all)")
    too_many = [k for k in grid.classes if k > n_classes]
    if too_many:
        raise UserError(f"--classes {too_many[0]} but the training set has only {n_classes} classes; use at most {n_classes}")
    if grid.difficulty:
        if grid.difficulty_size > smallest:
            raise UserError(f"--difficulty-size {grid.difficulty_size} asks for {grid.difficulty_size} examples per class but "
                            f"the smallest class of the training set has {smallest}; use at most {smallest}")
        if not has_cscores and any(d != "random" for d in grid.difficulty):
            raise UserError("--difficulty easiest/hardest needs C-scores: pass --cscores FILE.npz (published, or made by "
                            "`probekit cscore`)")
    lrs = grid.lrs if grid.lrs is not None else (None,)
    cells = []
    for s in grid.sizes:
        cells += [Cell("size", None if s == "all" else s, None, None, seed, lr, None if s == "all" else f"per-class={s}")
                  for seed in grid.seeds for lr in lrs]
    for k in grid.classes:
        cells += [Cell("classes", None, k, None, seed, lr, f"classes={k}") for seed in grid.seeds for lr in lrs]
    for d in grid.difficulty:
        total = grid.difficulty_size * n_classes
        cells += [Cell("difficulty", grid.difficulty_size, None, d, seed, lr, f"cscore={d}:{total}")
                  for seed in grid.seeds for lr in lrs]
    return cells


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> ``(I, N)`` with 1 <= I <= N (SLURM's ``$SLURM_ARRAY_TASK_ID`` counts from 0 or 1: pass I = id + 1 if 0)."""
    if text is None:
        return None
    head, sep, tail = str(text).partition("/")
    try:
        i, n = int(head), int(tail)
    except ValueError:
        raise UserError(f"--shard {text!r} is not I/N (e.g. 1/4: the first of four shards)") from None
    if not sep or n < 1 or not 1 <= i <= n:
        raise UserError(f"--shard {text!r}: I must be in 1..N and N >= 1, e.g. 1/4 .. 4/4")
    return i, n


def shard_cells(cells: Sequence[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """Every N-th cell starting at the I-th: the shards of one grid are disjoint and cover it."""
    if shard is None:
        return list(cells)
    i, n = shard
    return list(cells[i - 1::n])
