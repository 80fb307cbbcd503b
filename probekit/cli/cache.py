"""`probekit cache ls | info ENTRY`: what the feature store holds."""

from __future__ import annotations

import argparse

from probekit.cli import _common

ORDER = 90


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cache", help="list and inspect the feature store",
                                   description="List the feature files in the store (complete, partial, corrupt) and show one entry's attributes.")
    sub = parser.add_subparsers(dest="cache_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    ls = sub.add_parser("ls", help="table of entries: model, dataset, split, N, D, size, status",
                        description="One row per feature file: model, dataset, split, rows, feature dimension, size on disk, status.")
    _common.add_cache_dir(ls)
    ls.set_defaults(func=run_ls)
    info = sub.add_parser("info", help="all attributes of one entry", description="Every attribute of one feature file, and its arrays' shapes.")
    info.add_argument("entry", metavar="ENTRY", help="file name, path, or a unique prefix of a file name")
    _common.add_cache_dir(info)
    info.add_argument("--verify", action="store_true", help="also read the arrays and check the stored checksum")
    info.set_defaults(func=run_info)


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def run_ls(args: argparse.Namespace) -> int:
    from probekit import cache, paths

    rows = cache.list_entries(args.cache_dir)
    folder = paths.cache_dir(args.cache_dir)
    if not rows:
        print(f"no feature files in {folder}")
        return 0
    header = ("model", "dataset", "split", "N", "D", "size", "status", "file")
    table = [header] + [(r.get("model", "?"), r.get("dataset", "?"), r.get("split", "?"), str(r.get("rows", "")),
                         str(r.get("dim", "")), human_size(r["bytes"]), r["status"], r["file"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    total = sum(r["bytes"] for r in rows)
    print(f"{len(rows)} file(s), {human_size(total)} in {folder}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    import json

    import h5py

    from probekit import cache

    path = cache.resolve_entry(args.entry, args.cache_dir)
    attrs = cache.read_attrs(path)
    print(f"file: {path}")
    print(f"size: {human_size(path.stat().st_size)}")
    with h5py.File(path, "r", locking=False) as f:
        for name in ("features", "labels", "index", "skipped"):
            if name in f:
                print(f"{name}: shape {list(f[name].shape)} {f[name].dtype}")
    for key in sorted(attrs):
        value = attrs[key]
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
            if len(value) > 300 and key == "classes":
                value = value[:300] + f" ... ({len(attrs[key])} classes)"
        print(f"{key}: {value}")
    if args.verify:
        fs = cache.load_features(path)
        print(f"verified: checksum matches ({len(fs)} rows)")
    return 0
