"""`probekit analyze unique-correct RUN`: analyses of a run's saved predictions."""

from __future__ import annotations

import argparse

ORDER = 60


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("analyze", help="analyses of a run's saved predictions (unique-correct)",
                                   description="Analyses of a run's saved predictions against the shipped testbeds.")
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    p = sub.add_parser("unique-correct", help="CIFAR-10.1 examples no testbed model gets right: how many the run gets right, over training",
                       description="The CIFAR-10.1 examples that none of the 30 shipped testbed models (Recht et al. 2018) classify "
                                   "correctly, and the fraction of them the run's saved predictions (predictions.npz) get right at each step.")
    p.add_argument("run", metavar="RUN", help="run folder with predictions.npz")
    p.add_argument("--cifar101-version", choices=("v6", "v4"), default="v6", help="CIFAR-10.1 version (default v6)")
    p.add_argument("--ood-set", default=None, help="name of the predictions array (default: the cifar10.1 set for the version)")
    p.add_argument("--json", metavar="FILE", default=None, help="write all rows (step, head, fraction) as JSON")
    p.add_argument("--csv", metavar="FILE", default=None, help="write all rows as CSV")
    p.set_defaults(func=run_unique_correct)


def run_unique_correct(args: argparse.Namespace) -> int:
    from probekit.analysis import unique_correct
    from probekit.atomic import atomic_write_json, atomic_write_text

    from probekit.paths import output_file

    for option, path in (("--json", args.json), ("--csv", args.csv)):
        if path is not None:
            output_file(path, "output file", option=option)
    result = unique_correct(args.run, version=args.cifar101_version, ood_set=args.ood_set)
    print(result.table())
    if args.json is not None:
        atomic_write_json(args.json, result.to_json())
        print(f"wrote {args.json}")
    if args.csv is not None:
        atomic_write_text(args.csv, result.to_csv())
        print(f"wrote {args.csv}")
    return 0
