"""`probekit cache ls | info ENTRY | rm ENTRY | prune`: what the feature store holds, and tidying it."""

from __future__ import annotations

import argparse
from pathlib import Path

from probekit.cli import _common
from probekit.errors import UserError

ORDER = 90


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cache", help="list, inspect and tidy the feature store",
                                   description="List the feature files in the store (complete, partial, corrupt), show one entry's "
                                               "attributes, remove entries, or prune abandoned partials and corrupt files.")
    sub = parser.add_subparsers(dest="cache_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    ls = sub.add_parser("ls", help="table of entries: model, weights, size, precision, dataset, split, N, D, status",
                        description="One row per feature file: model, weights, image size, precision and storage dtype, dataset, "
                                    "split, rows, feature dimension, size on disk, status.")
    _common.add_cache_dir(ls)
    ls.add_argument("--json", action="store_true", help="print the entries as a JSON list (every field, sizes in bytes)")
    ls.set_defaults(func=run_ls)
    info = sub.add_parser("info", help="all attributes of one entry", description="Every attribute of one feature file, and its arrays' shapes.")
    info.add_argument("entry", metavar="ENTRY", help="file name, path, or a unique prefix of a file name")
    _common.add_cache_dir(info)
    info.add_argument("--verify", action="store_true", help="also read the arrays and check the stored checksum")
    info.set_defaults(func=run_info)
    rm = sub.add_parser("rm", help="delete feature files (not while their extract runs)",
                        description="Delete feature files named by path, file name or unique prefix, with their lock files. "
                                    "An entry whose extract is still running is refused.")
    rm.add_argument("entries", nargs="+", metavar="ENTRY", help="file name, path, or a unique prefix of a file name")
    _common.add_cache_dir(rm)
    rm.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    rm.set_defaults(func=run_rm)
    prune = sub.add_parser("prune", help="delete abandoned partial files and corrupt files",
                           description="Delete the partial files whose writer is gone (killed extracts; a rerun of the extract "
                                       "would resume them instead) and files that cannot be read as feature files. Complete "
                                       "entries and partials being written are kept.")
    _common.add_cache_dir(prune)
    prune.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    prune.set_defaults(func=run_prune)


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
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no feature files in {folder}")
        return 0
    header = ("model", "weights", "px", "prec", "dtype", "dataset", "split", "N", "D", "size", "status", "file")
    table = [header] + [(r.get("model", "?"), _weights(r), str(r.get("image_size") or "-") if "model" in r else "",
                         r.get("precision", ""), r.get("dtype", ""), r.get("dataset", "?"), r.get("split", "?"),
                         str(r.get("rows", "")), str(r.get("dim", "")), human_size(r["bytes"]), r["status"], r["file"])
                        for r in rows]
    _common.print_table(table)
    total = sum(r["bytes"] for r in rows)
    print(f"{len(rows)} file(s), {human_size(total)} in {folder}")
    return 0


def _weights(row: dict) -> str:
    """Weights as given at extract time; a file shows its sha256 prefix, so two files of one name differ."""
    weights, weight_id = str(row.get("weights", "")), str(row.get("weight_id", ""))
    if weights in ("default", "none", ""):
        return weights or ("?" if "model" in row else "")
    return f"{Path(weights).name}@{weight_id.removeprefix('sha256:')[:8]}" if weight_id.startswith("sha256:") else weights


def _remove(paths_: list, dry_run: bool) -> int:
    from probekit import cache

    total = 0
    for path in paths_:
        size = path.stat().st_size
        if dry_run:
            print(f"would delete {path} ({human_size(size)})")
        else:
            for removed in cache.remove_entry(path):
                print(f"deleted {removed}")
        total += size
    verb = "would free" if dry_run else "freed"
    print(f"{len(paths_)} file(s); {verb} {human_size(total)}")
    return 0


def run_rm(args: argparse.Namespace) -> int:
    from probekit import cache

    targets = list(dict.fromkeys(cache.resolve_entry(e, args.cache_dir) for e in args.entries))  # all named first
    for path in targets:
        if path.is_dir():
            raise UserError(f"{path} is a folder, not a feature file; pass entries from `probekit cache ls`")
        if cache.writer_alive(path):
            raise UserError(f"{path.name} is being written by a running probekit extract; stop it first, or wait")
    return _remove(targets, args.dry_run)


def run_prune(args: argparse.Namespace) -> int:
    from probekit import cache, paths

    rows = cache.prunable_entries(args.cache_dir)
    if not rows:
        print(f"nothing to prune in {paths.cache_dir(args.cache_dir)}")
        return 0
    for r in rows:
        print(f"{r['status']}: {r['file']}")
    return _remove([Path(r["path"]) for r in rows], args.dry_run)


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
