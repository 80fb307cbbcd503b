"""`probekit datasets`: dataset names and splits, what is on disk, and which features are cached."""

from __future__ import annotations

import argparse

from probekit.cli import _common

ORDER = 85


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("datasets", help="list datasets and splits: on disk or not, classes, cached features",
                              description="Every registered dataset and split: whether its files are on disk under the data "
                                          "root (or bundled), its image count and classes, and how many complete feature "
                                          "entries the feature store holds for it.")
    _common.add_data_root(p)
    _common.add_cache_dir(p)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from probekit import cache
    from probekit.cli._common import print_table
    from probekit.datasets.registry import dataset_status

    rows = dataset_status(args.data_root)
    cached: dict[tuple, int] = {}
    for entry in cache.list_entries(args.cache_dir):
        if entry["status"] == "complete":
            key = (entry.get("dataset"), entry.get("split"))
            cached[key] = cached.get(key, 0) + 1
    for r in rows:
        r["cached_entries"] = cached.get((r["dataset"], r["split"]), 0)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    show = lambda v: "-" if v is None else str(v)  # noqa: E731
    print_table([("dataset", "split", "label space", "images", "classes", "on disk", "cached")] +
                [(r["dataset"], r["split"], r["label_space"], show(r["images"]), show(r["classes"]), r["on_disk"],
                  str(r["cached_entries"])) for r in rows])
    print("also: folder:PATH with split 'all' or a subfolder name (one subfolder of images per class)")
    return 0
