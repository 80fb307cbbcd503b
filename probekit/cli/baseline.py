"""`probekit baseline list|show|fit|build`: the ER baselines (named testbeds and user fits)."""

from __future__ import annotations

import argparse

from probekit.cli._common import accuracy, add_cache_dir, add_data_root, int_type, seed, BOOTSTRAP_MAX

ORDER = 40


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("baseline", help="list, show, fit or build effective-robustness baselines",
                                   description="Effective-robustness baselines: the linear fit of T(OOD acc) on T(ID acc) over a testbed.")
    sub = parser.add_subparsers(dest="baseline_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    p = sub.add_parser("list", help="named baselines and whether they are ready")
    add_cache_dir(p)
    p.set_defaults(func=run_list)

    p = sub.add_parser("show", help="slope, intercept, r, n and source of a baseline")
    p.add_argument("baseline", metavar="NAME|FILE", help="a named baseline (see `probekit baseline list`) or a JSON fit file")
    p.add_argument("--transform", choices=("logit", "probit"), default=None,
                   help="accuracy transform (default: logit for a named baseline, the file's own for a file)")
    p.add_argument("--json", action="store_true", help="print the fit as JSON (without its points)")
    p.add_argument("--point", nargs=2, type=accuracy, metavar=("ID", "OOD"), default=None,
                   help="also print the expected OOD accuracy and the ER of a model with these accuracies (fractions)")
    add_cache_dir(p)
    p.set_defaults(func=run_show)

    p = sub.add_parser("fit", help="fit a baseline on your own models (CSV or run folders)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", metavar="FILE", help="CSV with columns model,id,ood (accuracies as fractions)")
    src.add_argument("--runs", metavar="DIR", nargs="+", help="run folders; the final record of each head is one model")
    p.add_argument("--ood-set", default=None, help="which OOD set of the runs (when they have several)")
    p.add_argument("--transform", choices=("logit", "probit"), default="logit")
    p.add_argument("--bootstrap", type=int_type(0, BOOTSTRAP_MAX, name="resample count"), default=0, metavar="N", help="bootstrap resamples for 95%% intervals of slope and intercept")
    p.add_argument("--seed", type=seed, default=0, help="seed of the bootstrap")
    p.add_argument("--name", default=None, help="name stored in the fit (default: the file / folder name)")
    p.add_argument("--out", metavar="FILE.json", default=None, help="write the fit here (pass it as --baseline FILE.json)")
    p.set_defaults(func=run_fit)

    p = sub.add_parser("build", help="build the CIFAR-10 -> CIFAR-10.1 baseline once CIFAR-10 is on disk")
    p.add_argument("name", metavar="NAME", help="cifar10-cifar10.1 (v6) or cifar10-cifar10.1-v4")
    p.add_argument("--labels", metavar="FILE.npy", default=None, help="CIFAR-10 test labels (10,000, test-batch order) instead of the dataset on disk")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 into the data root when it is missing")
    add_data_root(p)
    add_cache_dir(p)
    p.set_defaults(func=run_build)


def run_list(args: argparse.Namespace) -> int:
    from probekit.robustness.testbeds import NAMED, baseline_path

    for name, spec in NAMED.items():
        if spec.csv:
            state = f"shipped ({spec.csv})"
        else:
            path = baseline_path(name, args.cache_dir)
            state = f"built ({path})" if path.exists() else f"not built: run `probekit baseline build {name}`"
        subset = f" [ID as {spec.id_eval}]" if spec.id_eval else ""
        print(f"{name:22s} {spec.id_set} -> {spec.ood_set}{subset}  {state}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    import json

    from probekit.robustness import load_baseline

    b = load_baseline(args.baseline, transform=args.transform, cache_dir=args.cache_dir)
    if args.json:
        d = b.to_json()
        d.pop("points")
        print(json.dumps(d, indent=2))
    else:
        print(b.describe())
    if args.point:
        from probekit.robustness import effective_robustness

        acc_id, acc_ood = args.point
        er = effective_robustness(acc_id, acc_ood, b)
        print(f"model at ID {acc_id:.4f}, OOD {acc_ood:.4f}: baseline expects OOD {float(b.expected_ood(acc_id)):.4f}, "
              f"ER = {er:+.4f} ({100 * er:+.2f} points)")
    return 0


def run_fit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from probekit.robustness import fit_baseline
    from probekit.robustness.runs import points_from_runs, shared_sizes
    from probekit.robustness.testbeds import fit_csv

    from probekit.paths import output_file

    if args.out is not None:
        output_file(args.out, "baseline file")  # before the (bootstrap) fit, not after
    if args.csv is not None:
        b = fit_csv(args.csv, args.transform, bootstrap=args.bootstrap, seed=args.seed, line_fit_only=False,
                    name=args.name or Path(args.csv).stem, source=f"user CSV {args.csv}")
    else:
        names, ids, oods, ood_set = points_from_runs(args.runs, args.ood_set)
        n_id, n_ood = shared_sizes(args.runs, ood_set)  # lets an accuracy of exactly 0 or 1 be clipped, as in the records
        b = fit_baseline(ids, oods, args.transform, bootstrap=args.bootstrap, seed=args.seed, names=names,
                         name=args.name or "runs", source=f"final records of {len(args.runs)} run folder(s): {', '.join(args.runs)}",
                         ood_set=ood_set, n_id=n_id, n_ood=n_ood)
    print(b.describe())
    if args.out is not None:
        print(f"wrote {b.save(args.out)}")
    return 0


def run_build(args: argparse.Namespace) -> int:
    from probekit.robustness import build_cifar10_baseline

    labels = args.labels
    if labels is None:
        from probekit.datasets.cifar import cifar10_test_labels

        labels = cifar10_test_labels(args.data_root, download=args.download)
    b, path = build_cifar10_baseline(labels, name=args.name, cache_dir=args.cache_dir)
    print(b.describe())
    print(f"wrote {path}")
    return 0
