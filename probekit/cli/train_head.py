"""`probekit train-head`: stage 2, linear heads on cached features with ER at every evaluation."""

from __future__ import annotations

import argparse

from probekit.cli import _common
from probekit.heads.config import TrainHeadConfig

ORDER = 20


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-head", help="stage 2: train linear heads on cached features, logging ID/OOD accuracy and ER every iteration",
        description="Train logistic-regression heads on cached features and log, per head and evaluation, ID accuracy, "
                    "OOD accuracy on every --ood set and effective robustness (with --baseline). --solver sgd trains "
                    "all --lr x --seeds heads together in one vectorised pass (BiT defaults: lr 0.001, batch 32768, "
                    "100 epochs, momentum 0.9, no weight decay); --solver lbfgs sweeps the L2 strength "
                    "(λ = 1/C of scikit-learn's LogisticRegression, C = 2/λ for two classes; default ten values 1e-6..1e7) and picks λ on "
                    "validation accuracy. Feature sets are dataset:split names found in the cache for --model, or .h5 paths.")
    _common.add_feature_source(p)
    p.add_argument("--train", required=True, help="training features: dataset:split or a .h5 file")
    p.add_argument("--val", default=None, help="validation features (dataset:split or .h5), or TRAIN%%F for a stratified held-out fraction F of train")
    p.add_argument("--val-fraction", type=_common.fraction, default=None, help="hold out this stratified fraction of train for choosing λ (lbfgs)")
    p.add_argument("--id", dest="id_set", required=True, help="in-distribution test features: dataset:split or a .h5 file")
    p.add_argument("--ood", nargs="*", default=[], help="OOD test features (any number)")
    p.add_argument("--baseline", type=_common.baseline_spec, nargs="*", default=[], metavar="NAME|FILE|OOD_SET=NAME",
                   help="ER baseline: a named testbed (see `probekit baseline list`) or a fit JSON file, applied to the OOD sets "
                        "it was fitted for; or OOD_SET=BASELINE for one set")
    p.add_argument("--solver", default="sgd", help="sgd (batched SGD heads) or lbfgs (L2 sweep)")
    p.add_argument("--subset", default=None, help="class-balanced training subset: per-class=N, classes=K, cscore=easiest|hardest|random:N")
    p.add_argument("--subset-seed", type=_common.seed, default=0, help="seed of the subset draw (default 0)")
    p.add_argument("--cscores", default=None, help="C-score .npz file for --subset cscore=...")
    p.add_argument("--out", required=True, help="run folder (log.jsonl, summary.json, config.json, heads.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out (all its files, when the new run finishes)")
    p.add_argument("--resume", action="store_true", help="continue the stopped or killed SGD run in --out from its last checkpoint")
    p.add_argument("--save-predictions", action="store_true", help="also write per-example OOD predictions (predictions.npz)")
    p.add_argument("--eval-every", type=_common.nonnegative_int, default=1, help="evaluate every N optimiser steps / L-BFGS iterations (default 1; 0 = only start and end)")
    p.add_argument("--storage-dtype", choices=("float32", "float16"), default="float32", help="keep features in memory as float16 to halve memory (compute stays float32)")
    p.add_argument("--allow-mixed-features", action="store_true", help="accept feature sets from different extractions (other "
                   "weights, image size, feature kind or precision) for a deliberate comparison; recorded in config.json")
    _common.add_cache_dir(p)
    _common.add_device(p)
    _common.add_sgd_options(p)
    p.add_argument("--seeds", type=_common.seed, nargs="+", default=[0], help="seeds: each head's init and shuffling (default 0)")
    _common.add_lbfgs_options(p)
    g = p.add_argument_group("zero-shot init (CLIP)")
    g.add_argument("--init", default=None, choices=("zero-shot",), help="start every SGD head and the L-BFGS sweep from CLIP's "
                   "zero-shot head (text embeddings x logit scale), so step 0 is the zero-shot evaluation")
    g.add_argument("--classes", default=None, metavar="imagenet|cifar10|FILE", help="class names of the labels, for --init zero-shot")
    g.add_argument("--templates", default=None, metavar="FILE", help="prompt templates for --init zero-shot (default: the CLIP paper's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common.add_json(p, "the run's summary (summary.json)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace, train=None) -> TrainHeadConfig:
    """The `TrainHeadConfig` these arguments describe (`train` replaces ``--train`` when resolved already)."""
    return TrainHeadConfig(
        train=args.train if train is None else train, id_set=args.id_set, ood=list(args.ood), val=args.val, model=args.model,
        weights=args.weights, image_size=args.image_size, feature=args.feature, cache_dir=args.cache_dir, solver=args.solver,
        baselines=list(args.baseline), subset=args.subset, subset_seed=args.subset_seed, cscores=args.cscores, out=args.out,
        overwrite=args.overwrite, save_predictions=args.save_predictions, device=args.device, storage_dtype=args.storage_dtype,
        eval_every=args.eval_every, progress=not args.no_progress, lrs=list(args.lr), seeds=list(args.seeds),
        batch_size=args.batch_size, epochs=args.epochs, momentum=args.momentum, weight_decay=args.weight_decay,
        schedule=args.schedule, head_init=args.head_init, l2_grid=args.l2_grid, val_fraction=args.val_fraction,
        refit=args.refit, max_iter=args.max_iter, tol=args.tol, select_tol=args.select_tol or None, warm_start=not args.no_warm_start,
        lbfgs_dtype=args.lbfgs_dtype, allow_mixed_features=args.allow_mixed_features, resume=args.resume)


def run(args: argparse.Namespace) -> int:
    import sys

    from probekit.runtime import Stopped
    from probekit.heads.run import train_head
    from probekit.zeroshot.init import resolve_init

    train, init, init_config = resolve_init(args.init, args.classes, args.templates, train=args.train, model=args.model,
                                            weights=args.weights, cache_dir=args.cache_dir, device=args.device,
                                            image_size=args.image_size, feature=args.feature)
    try:
        res = train_head(config_from_args(args, train), init=init, extra_config=init_config)
    except Stopped as e:  # SIGTERM / Ctrl-C: exit 128 + signal with what to do next, like extract and finetune
        print(f"probekit: {e}", file=sys.stderr)
        return e.exit_code
    s = res.summary
    if args.json:
        _common.print_run_summary(res.out)
        return 0
    from probekit.records import results_table

    if s["solver"] == "lbfgs":
        _common.print_table(results_table({s["chosen_head"]: s["heads"].get(s["chosen_head"], {})}))
        print(f"chosen l2={s['chosen_l2']:g}" + (f" (on {s['best']['chosen_on']})" if s["best"]["chosen_on"] else ""))
    else:
        _common.print_table(results_table(s["heads"]))
        if s.get("best"):
            b = s["best"]
            print(f"best on {b['chosen_on']}: {b['head']} at step {b['step']} (val {100 * b['acc_val']:.2f} %, ID {100 * b['acc_id']:.2f} %)")
    print(f"-> {res.out}")
    return 0
