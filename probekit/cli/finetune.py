"""`probekit finetune`: train whole networks and log ID / OOD accuracy and ER every N steps."""

from __future__ import annotations

import argparse

from probekit.cli import _common
from probekit.cli._common import add_data_root, add_device

ORDER = 30


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune whole networks, logging ID/OOD accuracy and ER every N steps",
        description="Full fine-tuning (Andreassen et al. 2022): one network per (lr, seed), the classifier replaced by a "
        "fresh layer of the dataset's class count; a run record every --eval-every steps; checkpoints every epoch and "
        "on SIGTERM / Ctrl-C, continued with --resume. Run under torchrun for several GPUs or nodes.",
    )
    p.add_argument("--model", required=True, help="backbone registry name (torchvision classifier, timm / BiT, efficientnet_lite0)")
    p.add_argument("--weights", default="default", help="'default' (published pretrained), 'none' (random init) or a local weights file")
    p.add_argument("--dataset", "--train", dest="train", required=True, help="training set, DATASET or DATASET:SPLIT (split defaults to train)")
    p.add_argument("--id", dest="id_test", default=None, help="ID test set (default: the training dataset's test split)")
    p.add_argument("--ood", nargs="*", default=[], help="OOD sets, DATASET or DATASET:SPLIT (split defaults to test)")
    p.add_argument("--baseline", type=_common.baseline_spec, nargs="*", default=[], help="baseline for ER: a testbed name or fit JSON for every OOD set, or OOD_SET=BASELINE")
    p.add_argument("--recipe", default=None, help="named preset (paper-pretrained, paper-scratch, imagenet-pretrained, imagenet-scratch, "
                   "digits-pretrained, digits-scratch); default chosen from the dataset and --weights")
    p.add_argument("--epochs", type=_common.positive_int, default=None, help="epochs (recipe: 100 pretrained, 250 random init)")
    p.add_argument("--lr", dest="lrs", type=_common.positive_float, nargs="+", default=None, help="learning rates, one model each (recipe default)")
    p.add_argument("--seeds", type=_common.seed, nargs="+", default=None, help="seeds, one model each (recipe: 0 1 2 3 4)")
    p.add_argument("--batch-size", type=_common.batch_size, default=None, help="global batch size (recipe: 64), split over torchrun processes")
    p.add_argument("--momentum", type=_common.float_type(0, below=1, name="momentum"), default=None, help="SGD momentum (recipe: 0.9)")
    p.add_argument("--weight-decay", type=_common.nonnegative_float, default=None, help="weight decay (recipe: 1e-4)")
    p.add_argument("--schedule", default=None, choices=("constant", "cosine", "step-50-75"),
                   help="learning-rate schedule (recipe: constant): constant, cosine (half-cosine to 0) or step-50-75 (x0.1 at 50%% and 75%% of training)")
    p.add_argument("--augmentation", default=None, choices=("crop-flip", "crop", "resized-crop-flip", "none"), help="training augmentation (recipe: crop-flip; resized-crop-flip for ImageNet, crop for digits)")
    p.add_argument("--image-size", type=_common.image_size, default=None, help="train/eval resolution in pixels (recipe)")
    p.add_argument("--eval-every", type=_common.positive_int, default=None, help="steps between evaluations (default: once per epoch)")
    p.add_argument("--eval-subset", type=_common.positive_int, default=None, metavar="N", help="evaluate on a fixed class-balanced subset of N images per class")
    p.add_argument("--subset", default=None, metavar="SPEC",
                   help="train on a class-balanced subset: per-class=N (data size) or cscore=easiest|hardest|random:N")
    p.add_argument("--subset-seed", type=_common.seed, default=0, help="seed of the subset draw (default 0)")
    p.add_argument("--cscores", default=None, metavar="FILE", help="C-score file (.npz) for --subset cscore=...")
    p.add_argument("--eval-batch-size", type=_common.batch_size, default=256, help="images per evaluation forward pass (default 256)")
    p.add_argument("--max-steps", type=_common.positive_int, default=None, help="stop after this many optimiser steps per model (schedule length unchanged)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="autocast precision (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="channels_last memory format (default: on CUDA)")
    p.add_argument("--workers", type=_common.workers, default=0, help="DataLoader worker processes (default 0: load in the main process)")
    p.add_argument("--out", required=True, help="run folder (config.json, log.jsonl, summary.json, checkpoints/)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a run or checkpoint")
    p.add_argument("--save-model", action="store_true", help="also write each final network's state dict to --out")
    p.add_argument("--save-predictions", nargs="?", const="every-eval", default="end", choices=("end", "every-eval"),
                   help="per-example OOD predictions (predictions.npz): 'end' (default) each network's final step, "
                   "'every-eval' (or the bare flag, as in train-head) every evaluation of the log")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_data_root(p)
    add_device(p)
    _common.add_json(p, "the run's summary (summary.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from probekit.finetune import FinetuneConfig, Stopped, finetune

    cfg = FinetuneConfig(
        model=args.model, train=args.train, out=args.out, id_test=args.id_test, ood=list(args.ood), weights=args.weights,
        recipe=args.recipe, epochs=args.epochs, lrs=args.lrs, seeds=args.seeds, batch_size=args.batch_size,
        momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule, augmentation=args.augmentation,
        image_size=args.image_size, eval_every=args.eval_every, eval_subset=args.eval_subset,
        subset=args.subset, subset_seed=args.subset_seed, cscores=args.cscores,
        eval_batch_size=args.eval_batch_size, baselines=list(args.baseline), max_steps=args.max_steps,
        precision=args.precision, channels_last=args.channels_last, device=args.device, workers=args.workers,
        data_root=args.data_root, resume=args.resume, overwrite=args.overwrite, save_model=args.save_model,
        save_predictions=args.save_predictions, progress=not args.no_progress,
    )
    try:
        summary = finetune(cfg)
    except Stopped as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"probekit: {e}", file=sys.stderr)
        return e.exit_code
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    if args.json:
        _common.print_run_summary(args.out)
        return 0
    from probekit.records import results_table

    _common.print_table(results_table(summary["heads"]))
    print(f"run folder: {args.out}")
    return 0
