"""`probekit demo`: the whole method offline on bundled data."""

from __future__ import annotations

import argparse

from probekit.cli._common import add_cache_dir, add_device

ORDER = 1


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole method offline on bundled data (digits -> MNIST-5k, EfficientNet-Lite0)",
        description="Extract EfficientNet-Lite0 features of the bundled digits and MNIST-5k, fit a baseline "
        "through models trained from scratch, train SGD heads and the L-BFGS sweep with ER at every iteration, "
        "fine-tune the backbone briefly, and write figures plus summary.md / summary.json. A second run reuses "
        "everything already complete.",
    )
    parser.add_argument("--out", default="demo", help="folder for runs, figures and the summary (default: demo)")
    parser.add_argument("--quick", action="store_true", help="smaller settings that finish in about two minutes")
    add_cache_dir(parser)
    add_device(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from probekit.demo import run_demo

    run_demo(args.out, quick=args.quick, cache_dir=args.cache_dir, device=args.device)
    return 0
