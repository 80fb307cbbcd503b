"""The summary table of an ablation: one row per cell, read back from the cell folders.

Rows come from the records themselves (final record, peak ER over the trajectory), so a table
rebuilt after more shards finish, or by `probekit plot`, always says what the folders hold.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from probekit.errors import UserError

TABLE_CSV = "summary.csv"
TABLE_MD = "summary.md"
CELL_FIELDS = ("cell", "kind", "value", "size", "classes", "difficulty", "seed", "lr")


def is_ablation(folder: str | os.PathLike) -> bool:
    from probekit.ablate.run import ABLATION_FILE

    return (Path(folder) / ABLATION_FILE).is_file()


def cell_folders(out: str | os.PathLike) -> list[Path]:
    """The cell run folders of an ablation, in grid order (as ``ablation.json``'s grid lists them)."""
    from probekit.ablate.run import CELLS_DIR

    folder = Path(out) / CELLS_DIR
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _chosen_head(run) -> str | None:
    if run.summary and run.summary.get("chosen_head") in run.heads:
        return run.summary["chosen_head"]  # L-BFGS: the λ chosen on validation
    return run.heads[-1] if run.heads else None


def cell_row(run) -> dict | None:
    """The table row of one cell folder: its spec, final acc / ER and the peak ER with its step."""
    cell = run.config.get("cell")
    head = _chosen_head(run)
    if not cell or head is None:
        return None
    rs = run.head_records(head)
    last = rs[-1]
    row = {"cell": cell["id"], "kind": cell["kind"], "value": cell["size"] if cell["kind"] == "size" and cell["size"] else
           ("all" if cell["kind"] == "size" else (cell["classes"] if cell["kind"] == "classes" else cell["difficulty"])),
           "size": cell.get("size"), "classes": cell.get("classes"), "difficulty": cell.get("difficulty"), "seed": cell["seed"],
           "lr": cell.get("lr"), "head": head, "complete": run.complete, "n_train": run.config.get("n_train"),
           "steps": last["step"], "acc_id": last["acc_id"]}
    for s, a in (last.get("acc_ood") or {}).items():
        row[f"acc_ood:{s}"] = a
    for s, e in (last.get("er") or {}).items():
        row[f"er:{s}"] = e
        vals = [(r["er"][s], r["step"]) for r in rs if (r.get("er") or {}).get(s) is not None]
        if vals:
            peak, step = max(vals, key=lambda v: v[0])
            row[f"er_peak:{s}"], row[f"er_peak_step:{s}"] = peak, step
    return row


def ablation_table(out: str | os.PathLike) -> list[dict]:
    """Every cell folder of `out` as a table row (incomplete cells too, marked ``complete: False``)."""
    from probekit.runlog import read_run

    if not is_ablation(out):
        raise UserError(f"{out} is not an ablation folder (no ablation.json); pass the --out folder of `probekit ablate`")
    rows = []
    for folder in cell_folders(out):
        try:
            run = read_run(folder)
        except UserError:
            continue  # a cell whose log was never started (killed before its first record)
        row = cell_row(run)
        if row is not None:
            rows.append(row)
    order = _grid_order(out)
    rows.sort(key=lambda r: order.get(r["cell"], len(order)))
    return rows


def _grid_order(out) -> dict[str, int]:
    """Cell id -> its position in the grid (``ablation.json`` lists every cell id in grid order)."""
    from probekit.ablate.run import ABLATION_FILE

    try:
        ids = json.loads((Path(out) / ABLATION_FILE).read_text()).get("cells") or []
    except (OSError, json.JSONDecodeError):
        return {}
    return {i: n for n, i in enumerate(ids)}


def _columns(rows: list[dict]) -> list[str]:
    cols: dict[str, None] = {}
    for r in rows:
        for k in r:
            cols.setdefault(k)
    return list(cols)


def table_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_columns(rows), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def table_markdown(rows: list[dict]) -> str:
    """A markdown table: the cell, its training size and steps, final accuracies, final and peak ER."""
    skip = {"kind", "value", "size", "classes", "difficulty", "seed", "lr", "head", "er_peak_step"}
    cols = [c for c in _columns(rows) if c not in skip and not c.startswith("er_peak_step:")]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_tables(out: str | os.PathLike) -> list[dict]:
    """``summary.csv`` and ``summary.md`` of the ablation in `out` (atomically); returns the rows."""
    from probekit.atomic import atomic_write_text

    rows = ablation_table(out)
    if rows:
        atomic_write_text(Path(out) / TABLE_CSV, table_csv(rows))
        atomic_write_text(Path(out) / TABLE_MD, table_markdown(rows))
    return rows
