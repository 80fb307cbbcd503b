"""``ablate --mode finetune``: the grid's cells as ordinary `finetune` run folders, one after another.

Fine-tuning trains a whole network per cell, so cells run in sequence (or spread over machines
with ``shard``); a complete cell is skipped, a killed one resumes from its checkpoint. Only
size and difficulty cells apply: finetune takes ``per-class=`` and ``cscore=`` subsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from probekit.ablate.grid import Grid
from probekit.ablate.run import (AblationResult, _check_same_ablation, _load_scores, _write_ablation_file, cell_dir,
                                 cell_lines, plan_cells)
from probekit.errors import UserError


def ablate_finetune(train: str, id_set: str | None, ood: Sequence[str] = (), *, out, grid: Grid, model: str,
                    shard: tuple[int, int] | None = None, overwrite: bool = False, cscores=None, data_root=None,
                    progress: bool = True, list_only: bool = False, **finetune_options) -> AblationResult | None:
    """Run the cells of `grid` (this `shard` of them) not yet complete in `out` through `finetune`.

    `finetune_options` are `FinetuneConfig` fields (weights, recipe, max_steps, baselines, ...);
    every cell gets its subset, its seed as both subset and model seed, and its lr. `list_only`:
    print the cells (`cell_lines`) and return None."""
    from probekit import runlog
    from probekit.ablate.report import write_tables
    from probekit.datasets import create_dataset
    from probekit.finetune import FinetuneConfig, finetune
    from probekit.finetune.checkpoint import checkpoint_path
    from probekit.names import parse_dataset_split

    if grid.classes:
        raise UserError("--mode finetune takes --sizes and --difficulty; diversity cells (--classes) run on cached "
                        "features with --mode sgd or lbfgs")
    if grid.lrs is None:
        raise UserError("--mode finetune needs --lr (one network per cell and learning rate)")
    name, split = parse_dataset_split(train, "train")
    labels = np.asarray(create_dataset(name, split, root=data_root).targets)
    scores = _load_scores(cscores, labels)
    all_cells, cells = plan_cells(labels, grid, cscores=scores, shard=shard)
    if list_only:
        print("\n".join(cell_lines(all_cells, cells, out)))
        return None
    options = {"mode": "finetune", "model": model, "train": f"{name}:{split}", "id_set": id_set, "ood": list(ood),
               "cscores": str(cscores) if cscores else None, **finetune_options}
    out = Path(out)
    _check_same_ablation(out, options, overwrite)
    todo = [c for c in cells if overwrite or not runlog.is_complete(cell_dir(out, c))]
    result = AblationResult(out, all_cells, [c.id for c in todo], [c.id for c in cells if c not in todo])
    _write_ablation_file(out, grid, options, all_cells)
    for c in todo:
        folder = cell_dir(out, c)
        resume = not overwrite and checkpoint_path(folder).exists()  # a killed cell continues where it stopped
        finetune(FinetuneConfig(model=model, train=f"{name}:{split}", out=str(folder), id_test=id_set, ood=list(ood),
                                subset=c.subset, subset_seed=c.seed, seeds=[c.seed], lrs=[c.lr],
                                cscores=str(cscores) if cscores and c.kind == "difficulty" else None, data_root=data_root,
                                resume=resume, overwrite=overwrite, progress=progress, record_extra={"cell": c.spec()},
                                **finetune_options))
    result.table = write_tables(out)
    return result
