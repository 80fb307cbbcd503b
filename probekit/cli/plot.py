"""`probekit plot RUN...`: the ID-vs-OOD figure, ER curves and sweep summaries of runs."""

from __future__ import annotations

import argparse

from probekit.cli import _common
from probekit.cli._common import add_cache_dir

ORDER = 50


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plot", help="plot runs: OOD vs ID accuracy, ER curves, sweeps (PNG + SVG)",
                              description="Plot run folders: OOD vs ID accuracy on logit axes with the testbed and its baseline, "
                                          "ER against step/epoch per head, and ER against subset size / classes / C-score subset.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (train-head / finetune --out), or one ablation folder "
                   "(ablate --out: ER against size / classes / difficulty and ID vs OOD per cell, and its summary table)")
    p.add_argument("--out", default=None, metavar="DIR", help="folder for the figures (default: the first run folder)")
    p.add_argument("--baseline", type=_common.baseline_spec, default=None, metavar="NAME|FILE",
                   help="baseline line and ER (default: the baseline the runs logged ER with, from their config.json); see `probekit baseline list`")
    p.add_argument("--transform", choices=("logit", "probit"), default=None,
                   help="axes / baseline transform (default: logit for a named baseline, the file's own for a file)")
    p.add_argument("--testbed", default=None, metavar="CSV|NAME", help="testbed points (default: the baseline's models)")
    p.add_argument("--ood-set", default=None, help="OOD set to plot when runs have several")
    p.add_argument("--x", choices=("step", "epoch"), default="step", help="x axis of the ER curves")
    p.add_argument("--format", nargs="+", choices=("png", "svg"), default=["png", "svg"], dest="formats")
    add_cache_dir(p)
    p.set_defaults(func=run)


def _logged_baseline(runs: list, ood_set: str | None):
    """The baseline the runs logged ER with (config.json, any spelling: `records.logged_baselines`),
    when they agree on one for the plotted OOD set: a Baseline, a name still to load, or None.

    A run records the fit itself, not only the name or path it was given, so its figure keeps
    its baseline even after the fit file moves."""
    import json

    from probekit.names import dataset_name
    from probekit.records import logged_baselines

    found = {}
    for r in runs:
        for s, b in logged_baselines(r.config or {}).items():
            if ood_set and s != "*" and dataset_name(s) != dataset_name(ood_set):
                continue
            found[json.dumps(b.to_json() if hasattr(b, "to_json") else b, sort_keys=True)] = b
    return found.popitem()[1] if len(found) == 1 else None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from probekit.errors import UserError
    from probekit.plots import as_run_data, plot_er_curves, plot_id_vs_ood, plot_sweep, sweep_table
    from probekit.robustness import load_baseline, load_testbed_points
    from probekit.robustness.testbeds import NAMED

    from probekit.ablate.report import cell_folders, is_ablation, write_tables
    from probekit.paths import output_dir

    ablations = [r for r in args.runs if is_ablation(r)]
    out = output_dir(args.out or (ablations or args.runs)[0], "figure folder")  # before any work
    if ablations:
        if len(args.runs) > 1:
            raise UserError("plot one ablation folder at a time (its cells are the runs); pass it alone")
        args.runs = [str(p) for p in cell_folders(ablations[0])]
        if not args.runs:
            raise UserError(f"ablation folder {ablations[0]} has no cell folders yet; run `probekit ablate` first")
    runs = [as_run_data(r) for r in args.runs]
    for folder, r in zip(args.runs, runs):
        if r.summary is None:  # read_run leaves the summary out unless the run is complete
            last = max((rec.get("step") or 0 for rec in r.records), default=0)
            print(f"note: run {folder} is incomplete (killed, failed or still running); plotted up to step {last}")
    name = args.baseline
    baseline = load_baseline(name, transform=args.transform, cache_dir=args.cache_dir) if name else None
    logged = _logged_baseline(runs, args.ood_set) if baseline is None else None
    if isinstance(logged, str) or (logged is not None and args.transform and args.transform != logged.transform):
        name = logged if isinstance(logged, str) else logged.name
        try:  # by name: the runs' own baseline when it still resolves (a name, or a fit file that still exists)
            baseline = load_baseline(name, transform=args.transform, cache_dir=args.cache_dir)
        except UserError as e:
            print(f"note: the runs' baseline {name!r} cannot be loaded ({e}); plotting without it (pass --baseline)")
            name = None
    elif logged is not None:
        baseline, name = logged, logged.name
    if args.testbed:
        points = load_testbed_points(args.testbed, cache_dir=args.cache_dir)
    elif name in NAMED and NAMED[name].csv:
        points = load_testbed_points(name)
    else:
        points = baseline.points if baseline else []
    if ablations:
        from probekit.plots import plot_ablation

        written = plot_ablation(runs, out / "ablation", baseline=baseline, testbed_points=points, ood_set=args.ood_set,
                                formats=args.formats)
        rows = write_tables(ablations[0])
        for path in written:
            print(f"wrote {path}")
        print(f"wrote {Path(ablations[0]) / 'summary.csv'} and summary.md ({len(rows)} cells)")
        return 0
    written = plot_id_vs_ood(runs, baseline, points, out / "id_vs_ood", ood_set=args.ood_set, formats=args.formats)
    try:
        written += plot_er_curves(runs, out / f"er_vs_{args.x}", x=args.x, ood_set=args.ood_set, baseline=baseline, formats=args.formats)
    except UserError as e:
        print(f"skipped ER curves: {e}")
    if sweep_table(runs, ood_set=args.ood_set, baseline=baseline):
        written += plot_sweep(runs, out / "sweep", ood_set=args.ood_set, baseline=baseline, formats=args.formats)
    for path in written:
        print(f"wrote {path}")
    return 0
