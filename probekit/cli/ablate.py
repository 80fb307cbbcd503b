"""`probekit ablate`: the paper's data ablations (size, diversity, difficulty) as one grid run."""

from __future__ import annotations

import argparse

from probekit.cli import _common

ORDER = 22


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ablate", help="data ablations: heads on subsets by size / number of classes / difficulty x seeds x lrs, in one run",
        description="Train linear heads on a grid of class-balanced training subsets — by size (--sizes, examples per "
                    "class, or all), diversity (--classes, number of classes) and difficulty (--difficulty easiest hardest "
                    "random with --difficulty-size, from C-scores) — crossed with --seeds and --lr, and log ID/OOD accuracy "
                    "and ER at every evaluation like train-head. --mode sgd trains every cell as one head of a single "
                    "batched pass; --mode lbfgs sweeps λ per cell on one feature load. Each cell is a run folder "
                    "OUT/cells/<cell>/ equal to the train-head run of that subset and seed; OUT/summary.csv and "
                    "summary.md list every cell; complete cells are skipped on a rerun. `probekit plot OUT` draws it.")
    _common.add_feature_source(p)
    p.add_argument("--train", required=True, help="training features: dataset:split or a .h5 file")
    p.add_argument("--val", default=None, help="validation features for choosing λ (lbfgs), or TRAIN%%F for a held-out fraction")
    p.add_argument("--val-fraction", type=_common.fraction, default=None, help="hold out this stratified fraction of each cell's subset for choosing λ (lbfgs)")
    p.add_argument("--id", dest="id_set", required=True, help="in-distribution test features: dataset:split or a .h5 file")
    p.add_argument("--ood", nargs="*", default=[], help="OOD test features (any number)")
    p.add_argument("--baseline", type=_common.baseline_spec, default=None, help="ER baseline: a named testbed (see `probekit baseline list`) or a fit JSON file")
    g = p.add_argument_group("grid")
    g.add_argument("--sizes", nargs="+", default=[], metavar="N|all", help="size cells: examples per class (or all)")
    g.add_argument("--classes", nargs="+", default=[], metavar="K", help="diversity cells: all examples of K classes drawn with the seed")
    g.add_argument("--difficulty", nargs="+", default=[], metavar="KIND", help="difficulty cells: easiest, hardest and/or random examples by C-score")
    g.add_argument("--difficulty-size", default=None, metavar="N", help="examples per class of each difficulty cell (e.g. 500)")
    g.add_argument("--cscores", default=None, metavar="FILE", help="C-score .npz (published, or from `probekit cscore`) for --difficulty")
    g.add_argument("--seeds", nargs="+", default=["0"], metavar="S", help="seeds: each draws a cell's subset and its head's init and shuffling (default 0)")
    g.add_argument("--mode", default="sgd", help="sgd (one batched pass over all cells), lbfgs (a λ sweep per cell) or finetune "
                   "(a whole network per cell, one after another; --train/--id/--ood are then datasets)")
    g.add_argument("--budget", default="epochs", help="sgd: epochs (every cell --epochs epochs of its own subset, default) or "
                   "steps (every cell the steps of the largest)")
    g.add_argument("--shard", default=None, metavar="I/N", help="run only every N-th cell starting at the I-th (1-based), e.g. a job array's task")
    g.add_argument("--list", action="store_true", help="print the grid's cells, one line each (index, id, subset, status), and exit")
    p.add_argument("--out", required=True, help="ablation folder (ablation.json, cells/<cell>/, summary.csv, summary.md)")
    p.add_argument("--overwrite", action="store_true", help="recompute every cell, complete ones too")
    p.add_argument("--eval-every", type=_common.nonnegative_int, default=None, help="evaluate every N optimiser steps / L-BFGS iterations (default 1; 0 = "
                   "only start and end; finetune: once per epoch)")
    p.add_argument("--storage-dtype", choices=("float32", "float16"), default="float32", help="keep features in memory as float16")
    _common.add_cache_dir(p)
    _common.add_device(p)
    _common.add_sgd_options(p, lr_default=None, defer_length=True)
    _common.add_lbfgs_options(p)
    g = p.add_argument_group("finetune (--mode finetune; --lr, --epochs, --batch-size apply, the rest is the recipe's)")
    g.add_argument("--recipe", default=None, help="finetune recipe (default chosen from the dataset and --weights)")
    g.add_argument("--max-steps", type=_common.positive_int, default=None, help="stop each cell's network after this many optimiser steps")
    g.add_argument("--eval-subset", type=_common.positive_int, default=None, metavar="N", help="evaluate on N images per class")
    _common.add_data_root(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common.add_json(p, "every cell's result row")
    p.set_defaults(func=run)


def _grid(args: argparse.Namespace):
    from probekit.ablate.grid import make_grid

    lrs = args.lr if args.lr is not None else ([0.001] if args.mode != "lbfgs" else None)  # ablate refuses --lr with lbfgs
    return make_grid(sizes=args.sizes, classes=args.classes, difficulty=args.difficulty, difficulty_size=args.difficulty_size,
                     seeds=args.seeds, lrs=lrs)


def run(args: argparse.Namespace) -> int:
    from probekit.ablate.grid import parse_shard
    from probekit.ablate.run import ablate, list_cells

    from probekit.paths import check_output_dir

    grid = _grid(args)
    shard = parse_shard(args.shard)
    if not args.list:
        check_output_dir(args.out, "ablation folder")  # a file or an unwritable disk as --out: refused before any work
    if args.mode == "finetune":
        res = _finetune(args, grid, shard)
    else:
        common = dict(val=args.val, val_fraction=args.val_fraction, model=args.model, cache_dir=args.cache_dir, weights=args.weights,
                      image_size=args.image_size, feature=args.feature, cscores=args.cscores, shard=shard)
        if args.list:
            for line in list_cells(args.train, args.id_set, args.ood, out=args.out, grid=grid, **common):
                print(line)
            return 0
        res = ablate(args.train, args.id_set, args.ood, out=args.out, grid=grid, mode=args.mode, budget=args.budget,
                     overwrite=args.overwrite, baseline=args.baseline, device=args.device, storage_dtype=args.storage_dtype,
                     eval_every=1 if args.eval_every is None else args.eval_every, progress=not args.no_progress,
                     batch_size=32768 if args.batch_size is None else args.batch_size,
                     epochs=100 if args.epochs is None else args.epochs, momentum=args.momentum, weight_decay=args.weight_decay,
                     schedule=args.schedule, head_init=args.head_init, l2_grid=args.l2_grid, refit=args.refit,
                     max_iter=args.max_iter, tol=args.tol, warm_start=not args.no_warm_start, lbfgs_dtype=args.lbfgs_dtype,
                     **common)
    if res is None:
        return 0
    if args.json:
        _common.print_json({"out": str(res.out), "ran": list(res.ran), "skipped": list(res.skipped), "cells": res.table})
        return 0
    print(f"{len(res.ran)} cells run, {len(res.skipped)} already complete -> {res.out}")
    from probekit.records import percent, points

    ers = list(dict.fromkeys(k for row in res.table for k in row if k.startswith("er:")))
    _common.print_table([("cell", "n_train", "ID acc %", *(f"ER {k[3:]} (points)" for k in ers))] +
                        [(row["cell"], str(row["n_train"]), percent(row["acc_id"]), *(points(row.get(k)) for k in ers))
                         for row in res.table])
    return 0


def _finetune(args: argparse.Namespace, grid, shard):
    from probekit.ablate.finetune import ablate_finetune
    from probekit.errors import UserError

    if not args.model:
        raise UserError("--mode finetune needs --model (the network to fine-tune)")
    if args.epochs is not None and not float(args.epochs).is_integer():
        raise UserError(f"--epochs {args.epochs:g}: fine-tuning takes a whole number of epochs")
    options = dict(weights=args.weights, recipe=args.recipe, max_steps=args.max_steps, eval_every=args.eval_every,
                   batch_size=args.batch_size, epochs=None if args.epochs is None else int(args.epochs),
                   eval_subset=args.eval_subset, image_size=args.image_size, device=args.device,
                   baselines=[args.baseline] if args.baseline else [])
    return ablate_finetune(args.train, args.id_set, args.ood, out=args.out, grid=grid, model=args.model, shard=shard,
                           overwrite=args.overwrite, cscores=args.cscores, data_root=args.data_root,
                           progress=not args.no_progress, list_only=args.list, **options)
