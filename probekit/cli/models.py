"""`probekit models [PATTERN]`: backbone names, their feature dimension and eval preprocessing."""

from __future__ import annotations

import argparse

ORDER = 80
DESCRIBE_MAX = 40  # meta-device builds take ~0.1-1 s each: beyond this many names, list names only


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list backbone names with feature dimension and eval image size",
                              description="Backbone names --model accepts, with feature dimension, eval crop and resize, "
                                          "crop mode and interpolation (from a build on the meta device: nothing is "
                                          "downloaded or loaded). Without PATTERN: probekit's own list; with one, also "
                                          "every timm and open_clip name that matches.")
    p.add_argument("pattern", nargs="?", default=None, metavar="PATTERN",
                   help="shell-style pattern, e.g. 'resnet*' or 'convnext*384' (a plain word matches anywhere)")
    p.add_argument("--pretrained", action="store_true", help="timm: only names with published weights (name.tag)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from probekit.backbones.catalog import describe, list_models
    from probekit.cli._common import print_table

    names = list_models(args.pattern, pretrained=args.pretrained)
    if not names:
        print(f"no backbone name matches {args.pattern!r}; try a shorter pattern, e.g. 'resnet*'")
        return 0
    if len(names) > DESCRIBE_MAX:
        if args.json:
            print(json.dumps([{"name": n} for n in names], indent=2))
        else:
            print("\n".join(names))
            print(f"{len(names)} names; pass a narrower PATTERN (at most {DESCRIBE_MAX} matches) to see dimensions and sizes")
        return 0
    rows = [describe(n) for n in names]
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    show = lambda v: "-" if v is None else str(v)  # noqa: E731
    print_table([("name", "family", "D", "crop", "resize", "mode", "interpolation")] +
                [(r.name, r.family, show(r.feature_dim), show(r.input_size), show(r.resize), show(r.crop_mode),
                  show(r.interpolation)) for r in rows])
    return 0
