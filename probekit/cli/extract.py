"""`probekit extract`: stage 1, frozen-backbone features of one dataset split into the feature store."""

from __future__ import annotations

import argparse

from probekit.cli import _common

ORDER = 10


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "extract", help="stage 1: cache a frozen backbone's features of a dataset split (HDF5)",
        description="Run a frozen pretrained backbone over one dataset split and store its penultimate features in "
                    "the feature store (one HDF5 file per backbone + weights, dataset, split, transform). A second "
                    "identical run is a cache hit; a killed run resumes where its committed work ends. Under "
                    "`torchrun --nproc-per-node N -m probekit extract ...` the ranks share the work and one file results.")
    p.add_argument("--model", required=True, help="backbone name, e.g. efficientnet_lite0, resnet50, resnetv2_50x1_bit.goog_in21k, ViT-B-32-quickgelu")
    p.add_argument("--dataset", required=True, help="dataset name, e.g. digits, mnist5k, cifar10, imagenet, folder:PATH")
    p.add_argument("--split", required=True, help="split, e.g. train, test, val")
    p.add_argument("--weights", default="default", help="default (published pretrained), none (random init), or a local weights file")
    _common.add_cache_dir(p)
    _common.add_data_root(p)
    p.add_argument("--batch-size", type=_common.batch_size, default=None, help="images per forward pass (default 256 on GPU, 64 on CPU); a resumed run keeps its original batch size")
    _common.add_device(p)
    p.add_argument("--workers", type=_common.workers, default=None, help="DataLoader worker processes (default: min(8, CPUs) on GPU, 0 on CPU)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="compute precision; bf16/fp16 run under autocast and make a separate entry (default fp32)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="storage dtype of the features (default float32)")
    p.add_argument("--image-size", type=_common.image_size, default=None, help="input resolution instead of the backbone's own (a different entry)")
    p.add_argument("--feature", default=None, help="which features, e.g. pre-projection for CLIP's 768-d token (default: the backbone's penultimate / image embedding)")
    p.add_argument("--skip-bad", action="store_true", help="skip corrupt or unreadable images and record their indices, instead of failing")
    p.add_argument("--download", action="store_true", help="download the dataset if it is missing and a public download exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    import sys

    from probekit import cache
    from probekit.extract import Stopped, extract

    try:
        path = extract(args.model, args.dataset, args.split, weights=args.weights, cache_dir=args.cache_dir,
                       data_root=args.data_root, batch_size=args.batch_size, device=args.device, workers=args.workers,
                       precision=args.precision, dtype=args.dtype, image_size=args.image_size, feature=args.feature,
                       skip_bad=args.skip_bad, download=args.download, progress=not args.no_progress)
    except Stopped as e:  # SIGTERM / Ctrl-C: exit 128 + signal, like finetune
        print(f"probekit: {e}", file=sys.stderr)
        return e.exit_code
    if int(os.environ.get("RANK", "0") or 0) == 0:
        attrs = cache.read_attrs(path)
        skipped = f", {attrs.get('n_skipped')} skipped" if attrs.get("n_skipped") else ""
        print(f"{path}  ({attrs.get('rows')} x {attrs.get('dim')} {attrs.get('dtype')}{skipped})")
    return 0
