"""`ablate`: a grid of training subsets × seeds × learning rates from one feature load.

SGD heads: every cell is one head of a single `SGDHeads` pass, drawing its minibatches from
its own rows (``fit(head_rows=...)``), so a grid costs about what its largest cell costs.
L-BFGS: the cells run one after another through `train_head` on the features loaded once,
each sweeping λ with warm starts. Every cell is an ordinary run folder
(``OUT/cells/<cell id>/``, readable by `probekit plot`) whose records equal those of
``train-head --subset SPEC --subset-seed S --seeds S --lr LR`` plus the cell's spec
(``cell``); ``OUT/ablation.json`` holds the grid and ``OUT/summary.csv`` / ``summary.md``
one row per cell. Complete cells are skipped on a rerun, so a killed grid resumes, and a
grid can be split over machines with ``shard=(I, N)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probekit.ablate.grid import Cell, Grid, build_cells, shard_cells
from probekit.errors import UserError, unknown_name

log = logging.getLogger(__name__)

MODES = ("sgd", "lbfgs")
ABLATION_FILE = "ablation.json"
CELLS_DIR = "cells"
# options that change what a cell computes: a rerun into the same --out must keep them
_SGD_OPTIONS = ("batch_size", "epochs", "momentum", "weight_decay", "schedule", "head_init", "budget", "eval_every", "storage_dtype")
_LBFGS_OPTIONS = ("l2_grid", "val_fraction", "val_seed", "refit", "max_iter", "tol", "warm_start", "lbfgs_dtype", "eval_every")


@dataclass
class AblationResult:
    """What an ablation run did: its folder, every cell of the grid, and which of them ran now."""

    out: Path
    cells: list[Cell]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)


def cell_dir(out, cell: Cell) -> Path:
    return Path(out) / CELLS_DIR / cell.id


def plan_cells(train_labels: np.ndarray, grid: Grid, *, cscores=None, shard: tuple[int, int] | None = None) -> tuple[list[Cell], list[Cell]]:
    """Every cell of the grid, and those this run (or shard) owns; every bad value is refused here, before anything is written."""
    cells = build_cells(grid, train_labels, has_cscores=cscores is not None)
    return cells, shard_cells(cells, shard)


def list_cells(train, id_set, ood: Sequence = (), *, out, grid: Grid, shard: tuple[int, int] | None = None, cscores=None,
               **feature_source) -> list[str]:
    """One line per cell of the grid (of this shard): 1-based index in the grid, id, subset spec, status in `out`."""
    from probekit.heads.run import load_inputs

    inputs = load_inputs(train, id_set, ood, **feature_source)
    scores = _load_scores(cscores, inputs.train.labels)
    return cell_lines(*plan_cells(inputs.train.labels, grid, cscores=scores, shard=shard), out)


def cell_lines(cells: Sequence[Cell], mine: Sequence[Cell], out) -> list[str]:
    """``--list``: one line per cell of `mine`: its 1-based index in the grid, id, subset spec, complete / todo in `out`."""
    from probekit import runlog

    index = {c.id: i for i, c in enumerate(cells, 1)}
    return [f"{index[c.id]}\t{c.id}\t{c.subset or 'all'}\t{'complete' if runlog.is_complete(cell_dir(out, c)) else 'todo'}"
            for c in mine]


def _load_scores(cscores, labels):
    if cscores is None:
        return None
    from probekit.datasets.subsets import load_cscores

    return load_cscores(cscores, labels)


def ablate(train, id_set, ood: Sequence = (), *, out, grid: Grid, mode: str = "sgd", budget: str = "epochs",
           shard: tuple[int, int] | None = None, overwrite: bool = False, val=None, model: str | None = None,
           cache_dir=None, weights: str = "default", image_size: int | None = None, feature: str | None = None,
           baseline=None, cscores=None, device=None, storage_dtype: str = "float32", eval_every: int = 1,
           progress: bool = True, batch_size: int = 32768, epochs: float = 100, momentum: float = 0.9,
           weight_decay: float = 0.0, schedule: str = "constant", head_init: str = "uniform",
           l2_grid: Sequence[float] | None = None, val_fraction: float | None = None, val_seed: int = 0,
           refit: bool = False, max_iter: int = 1000, tol: float = 1e-4, warm_start: bool = True,
           lbfgs_dtype: str = "auto") -> AblationResult:
    """Run the cells of `grid` (this `shard` of them) that `out` does not hold complete yet.

    Feature sets, baseline and solver options are `train_head`'s. `grid.lrs` is None for
    ``mode="lbfgs"`` (λ is swept inside each cell). `budget`: ``"epochs"`` trains every SGD cell
    `epochs` epochs of its own subset; ``"steps"`` gives every cell the steps of the largest.
    """
    from probekit.heads.run import load_inputs, resolve_baselines
    from probekit.runtime import choose_device

    t0 = time.time()
    if mode not in MODES:
        raise unknown_name("ablate mode", str(mode), MODES)
    if (mode == "lbfgs") != (grid.lrs is None):
        raise UserError("--lr is for --mode sgd; L-BFGS cells sweep --l2-grid instead" if mode == "lbfgs"
                        else "--mode sgd needs learning rates (--lr)")
    dev = choose_device(device)
    inputs = load_inputs(train, id_set, ood, val=val, val_fraction=val_fraction, model=model, cache_dir=cache_dir,
                         weights=weights, image_size=image_size, feature=feature)
    tr = inputs.train
    if grid.classes and any(sh is not None for sh in inputs.shifts.values()):
        raise UserError("--classes (diversity cells) cannot be combined with class-subset OOD sets (ImageNet-R, ObjectNet); "
                        "drop one of them")
    scores = _load_scores(cscores, tr.labels)
    all_cells, cells = plan_cells(tr.labels, grid, cscores=scores, shard=shard)
    baselines = resolve_baselines(baseline, inputs.ood, cache_dir=cache_dir)
    options = {"mode": mode, "train": tr.name, "id_set": inputs.id_set.name, "ood": [o.name for o in inputs.ood],
               "val": inputs.val.name if inputs.val is not None else None, "model": model,
               "baseline": " ".join(sorted({b.name for b in baselines.values()})) or None,
               "baselines": {s: b.to_json() for s, b in baselines.items()},
               "cscores": str(cscores) if cscores else None}
    local = locals()
    options |= {k: local[k] for k in (_SGD_OPTIONS if mode == "sgd" else _LBFGS_OPTIONS)}
    out = Path(out)
    _check_same_ablation(out, options, overwrite)

    from probekit import runlog

    todo = [c for c in cells if overwrite or not runlog.is_complete(cell_dir(out, c))]
    result = AblationResult(out, cells, [c.id for c in todo], [c.id for c in cells if c not in todo])
    _write_ablation_file(out, grid, options, all_cells)
    if result.skipped:
        log.info("ablate: %d of %d cells already complete in %s, skipped", len(result.skipped), len(cells), out)
    if todo:
        if mode == "sgd":
            from probekit.heads.sgd import SGDHeads

            est = SGDHeads(heads=[(c.lr, c.seed) for c in todo], batch_size=batch_size, epochs=epochs, momentum=momentum,
                           weight_decay=weight_decay, schedule=schedule, eval_every=eval_every, head_init=head_init,
                           n_classes=inputs.num_classes, device=dev, storage_dtype=storage_dtype, budget=budget)
            est._check_params()
            _run_sgd(est, todo, inputs, scores, baselines, out, options, overwrite=overwrite, progress=progress, dev=dev)
        else:
            _run_lbfgs(todo, inputs, scores, cscores, baselines, out, options, overwrite=overwrite, progress=progress, dev=dev,
                       storage_dtype=storage_dtype, eval_every=eval_every, l2_grid=l2_grid, val_fraction=inputs.val_fraction,
                       val_seed=val_seed, refit=refit, max_iter=max_iter, tol=tol, warm_start=warm_start, lbfgs_dtype=lbfgs_dtype)
    from probekit.ablate.report import write_tables

    result.table = write_tables(out)
    log.info("ablate: %d cells run, %d skipped in %.1f s", len(todo), len(result.skipped), time.time() - t0)
    return result


def _check_same_ablation(out: Path, options: dict, overwrite: bool) -> None:
    """Refuse to mix cells computed with other options into `out` (a rerun may add grid values, not change training)."""
    import json

    path = out / ABLATION_FILE
    if overwrite or not path.exists():
        return
    try:
        before = json.loads(path.read_text()).get("options", {})
    except (OSError, json.JSONDecodeError):
        return
    from probekit.runlog import _clean

    now = json.loads(json.dumps(_clean(options), default=str))
    differ = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    if differ:
        raise UserError(f"{out} holds an ablation run with other options ({', '.join(differ)} differ); "
                        "choose another --out, or pass --overwrite to recompute every cell")


def _write_ablation_file(out: Path, grid: Grid, options: dict, cells: Sequence[Cell]) -> None:
    """``ablation.json``: the grid, the options every cell shares, and every cell id in grid order (all shards)."""
    from probekit.atomic import atomic_write_json
    from probekit.runlog import _clean

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / ABLATION_FILE, _clean({"command": "ablate", "grid": grid.to_json(), "options": options,
                                                   "cells": [c.id for c in cells]}))


def _cell_config(cell: Cell, inputs, options: dict, n_train: int, kept) -> dict:
    """config.json of a cell folder: the ablation's options plus what a train-head run records."""
    tr = inputs.train
    return {"command": "ablate", **options, "solver": options["mode"], "cell": cell.spec(), "subset": cell.subset,
            "subset_seed": cell.seed if cell.subset else None, "lrs": [cell.lr] if cell.lr is not None else None,
            "seeds": [cell.seed], "n_train": n_train, "n_train_total": len(tr.labels), "num_classes": inputs.num_classes,
            "feature_dim": int(tr.features.shape[1]), "backbone": tr.attrs.get("backbone"), "weight_id": tr.attrs.get("weight_id"),
            "scored_classes": kept.tolist() if kept is not None else None,
            "feature_files": {"train": str(tr.path) if tr.path else None, "id": str(inputs.id_set.path) if inputs.id_set.path else None}}


def _cell_rows(cells: Sequence[Cell], labels: np.ndarray, scores) -> list[np.ndarray]:
    from probekit.datasets.subsets import select_subset

    return [np.arange(len(labels)) if c.subset is None else select_subset(labels, c.subset, seed=c.seed, cscores=scores)
            for c in cells]


def _run_sgd(est, cells: list[Cell], inputs, scores, baselines, out: Path, options: dict, *, overwrite: bool,
             progress: bool, dev) -> None:
    """Every cell one head of one `SGDHeads` pass; each cell's folder is finished as soon as its head is."""
    import torch
    from probekit.progress import progress_bar

    from probekit import runlog
    from probekit.heads.evaluation import evaluate_all
    from probekit.heads.run import _diversity_classes, eval_views, head_records, write_heads
    from probekit.heads.sgd import head_id, head_steps
    from probekit.records import summarise_run

    tr = inputs.train
    X, y, C = tr.features, tr.labels, inputs.num_classes
    rows = _cell_rows(cells, y, scores)
    kept = [_diversity_classes(c.subset, y[r], C, inputs.shifts) for c, r in zip(cells, rows)]
    # cells scored on the same classes share their evaluation sets (all cells but classes=K ones share one)
    groups: dict[Any, tuple[Any, list[int]]] = {}
    for h, k in enumerate(kept):
        key = None if k is None else tuple(k.tolist())
        if key not in groups:
            groups[key] = (eval_views(inputs.id_set, inputs.ood, inputs.shifts, k, dev, options["storage_dtype"], baselines=baselines), [])
        groups[key][1].append(h)
    heads = [{"head": head_id(c.lr, c.seed), "lr": c.lr, "seed": c.seed, **({"subset": c.subset} if c.subset else {}),
              "cell": c.spec()} for c in cells]
    writers = [runlog.RunWriter(cell_dir(out, c), _cell_config(c, inputs, options, len(r), k), overwrite=overwrite)
               for c, r, k in zip(cells, rows, kept)]
    records: list[list[dict]] = [[] for _ in cells]
    t_start = time.time()
    bar = progress_bar(enabled=progress, unit="step", desc=f"ablate sgd ({len(cells)} cells)", leave=False)

    def on_eval(p) -> None:
        due = np.arange(len(cells)) if p.heads is None else np.asarray(p.heads)
        for views, members in groups.values():
            hs = np.intersect1d(members, due)
            if hs.size == 0:
                continue
            sel = torch.from_numpy(hs).to(p.W.device)
            acc = evaluate_all(views.sets, p.W[sel], p.b[sel])
            epoch = p.epoch if np.ndim(p.epoch) == 0 else np.asarray(p.epoch)[hs]
            loss = None if p.loss is None else p.loss[hs]
            batch = head_records(views, acc, step=p.step, epoch=epoch, loss=loss, heads=[heads[h] for h in hs], mode="sgd")
            for h, r in zip(hs, batch):
                records[h].append(r)
                writers[h].log(r)
        bar.update(max(0, p.step - bar.n))
        for h in due:
            if p.step == est_steps[h]:
                _finish_cell(h, p)

    def _finish_cell(h: int, p) -> None:
        c = cells[h]
        state = {"weight": p.W[h].T.unsqueeze(0).cpu().contiguous(), "bias": p.b[h].unsqueeze(0).cpu().contiguous(),
                 "heads": [heads[h]["head"]], "lr": torch.tensor([c.lr]), "seed": torch.tensor([c.seed])}
        write_heads(writers[h].dir, state, tr.classes)  # a replacing writer builds its run in a staging folder
        plan = next(views.plan for views, members in groups.values() if h in members)
        summary = summarise_run(records[h], plan, mode="sgd", heads=[heads[h]["head"]],
                                extra={"solver": "sgd", "n_train": int(len(rows[h])), "elapsed_s": round(time.time() - t_start, 3),
                                       "cell": c.spec()})
        writers[h].finish(summary)

    est_steps = head_steps([len(r) for r in rows], est.batch_size, est.epochs, est.budget)
    bar.total = int(est_steps.max())
    try:
        est.fit(X, y, callback=on_eval, head_rows=rows)
    finally:
        bar.close()
        for w in writers:
            w.close()


def _run_lbfgs(cells: list[Cell], inputs, scores, cscores, baselines, out: Path, options: dict, *, overwrite: bool, progress: bool,
               dev, **solver) -> None:
    """One `train_head` L-BFGS sweep per cell, all on the features loaded once."""
    from probekit.heads.config import TrainHeadConfig
    from probekit.heads.run import train_head

    for c in cells:
        cfg = TrainHeadConfig(inputs.train, inputs.id_set, inputs.ood, val=inputs.val, solver="lbfgs", baselines=baselines,
                              subset=c.subset, subset_seed=c.seed, cscores=cscores if c.kind == "difficulty" else None,
                              out=cell_dir(out, c), overwrite=overwrite, device=dev, progress=progress, **solver)
        train_head(cfg, inputs=inputs, extra_config={"command": "ablate", "cell": c.spec()}, record_extra={"cell": c.spec()})
