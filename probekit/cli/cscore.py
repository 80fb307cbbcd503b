"""`probekit cscore`: estimate C-scores (example difficulty) of a training set from its cached features."""

from __future__ import annotations

import argparse

from probekit.cli import _common

ORDER = 23


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cscore", help="estimate C-scores (held-out accuracy per example) from cached features, for --cscores",
        description="Estimate every training example's C-score (Jiang et al. 2021): the accuracy on it of linear heads "
                    "trained on random subsets of the rest (--ratios of the data, --heads-per-ratio heads each, all trained "
                    "in one batched SGD pass). Writes the .npz that --cscores reads (keys scores and labels, in the feature "
                    "file's row order) and reports the estimate's stability: the Spearman correlation between it and a second, "
                    "independent estimate with another seed (--stability-seed; its heads train in the same pass, as many "
                    "again), and between the scores of two independent halves of the heads (split-half).")
    _common.add_feature_source(p)
    p.add_argument("--train", required=True, help="training features: dataset:split or a .h5 file")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="C-score file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--ratios", type=_common.fraction, nargs="+", default=[0.25, 0.5, 0.75], help="subset sizes as fractions of the data (default 0.25 0.5 0.75)")
    p.add_argument("--heads-per-ratio", type=_common.positive_int, default=8, help="heads (random subsets) per ratio (default 8)")
    p.add_argument("--seed", type=_common.seed, default=0, help="seed of the subsets and heads (default 0)")
    p.add_argument("--stability-seed", type=_seed_or_none, default=None, metavar="S|none",
                   help="seed of the second estimate the stability is measured against (default --seed + 1); none: skip it "
                        "(half the heads), reporting only the split-half correlation")
    p.add_argument("--compare", default=None, metavar="FILE.npz", help="a published C-score file of the same rows: report the rank correlation")
    p.add_argument("--lr", type=_common.positive_float, default=0.1, help="SGD learning rate of the heads (default 0.1)")
    p.add_argument("--batch-size", type=_common.batch_size, default=128, help="minibatch size (default 128)")
    p.add_argument("--epochs", type=_common.positive_float, default=20, help="epochs of each head over its subset (default 20)")
    p.add_argument("--momentum", type=_common.float_type(0, below=1, name="momentum"), default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=_common.nonnegative_float, default=0.0, help="weight decay (default 0)")
    p.add_argument("--storage-dtype", choices=("float32", "float16"), default="float32", help="keep features in memory as float16")
    _common.add_cache_dir(p)
    _common.add_device(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _seed_or_none(text: str):
    """``--stability-seed``: a seed, or "none" (no second estimate)."""
    if str(text).strip().lower() == "none":
        return "none"
    try:
        return _common.seed(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e} (or none to skip the second estimate)") from None


_seed_or_none.__name__ = "seed or none"


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from probekit.ablate.cscore import estimate_cscores, write_cscores
    from probekit.errors import UserError

    out = Path(args.out)
    if out.suffix != ".npz":
        raise UserError(f"--out {out}: C-scores are written as a .npz file; use a name ending in .npz")
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it or choose another --out")
    if args.compare is not None and not Path(args.compare).is_file():
        raise UserError(f"--compare {args.compare}: no such file (the published CIFAR-10 file is cifar10-cscores-orig-order.npz)")
    if args.stability_seed == "none":
        stability = None
    elif args.stability_seed is not None:
        stability = args.stability_seed
    else:
        stability = args.seed + 1 if args.seed < _common.SEED_MAX else args.seed - 1
    res = estimate_cscores(args.train, model=args.model, cache_dir=args.cache_dir, weights=args.weights, image_size=args.image_size,
                           feature=args.feature, ratios=args.ratios, heads_per_ratio=args.heads_per_ratio, seed=args.seed,
                           stability_seed=stability, compare=args.compare, lr=args.lr, batch_size=args.batch_size,
                           epochs=args.epochs, momentum=args.momentum, weight_decay=args.weight_decay, device=args.device,
                           storage_dtype=args.storage_dtype, progress=not args.no_progress)
    path = write_cscores(out, res, overwrite=args.overwrite)
    if res.two_seed_spearman is not None:
        stable = (f"stability: Spearman {res.two_seed_spearman:.3f} with a second estimate (seed {res.stability_seed}), "
                  f"split-half Spearman {res.split_half_spearman:.3f}")
    else:
        stable = f"stability: split-half Spearman {res.split_half_spearman:.3f} (no second estimate)"
    print(f"{len(res.scores)} C-scores from {res.n_heads} heads, seed {res.seed} (mean {res.scores.mean():.3f}); {stable} -> {path}")
    if res.compare_spearman is not None:
        print(f"Spearman with {args.compare}: {res.compare_spearman:.3f}")
    return 0
