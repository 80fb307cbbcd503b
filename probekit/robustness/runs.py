"""ID / OOD points and ER read from run records, for user baselines, plots and analyses.

A record holds ``acc_id``, ``acc_ood`` {set: acc}, optionally ``er`` {set: er}, and for a
class-subset OOD set the ID accuracy measured on its classes in ``acc_id_subset`` {set: acc}.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from probekit.errors import UserError
from probekit.robustness.baseline import Baseline, effective_robustness
from probekit.names import dataset_name


def record_id_acc(record: dict, ood_set: str) -> float | None:
    """The ID accuracy that pairs with `ood_set`: the class-subset one when the record has it."""
    subset = record.get("acc_id_subset") or {}
    if ood_set in subset and subset[ood_set] is not None:
        return subset[ood_set]
    return record.get("acc_id")


def ood_sets(records: Iterable[dict]) -> list[str]:
    """OOD set names present in the records, in first-seen order."""
    out: dict[str, None] = {}
    for r in records:
        for k in r.get("acc_ood") or {}:
            out.setdefault(k)
    return list(out)


def choose_ood_set(available: Sequence[str], wanted: str | None = None, baseline: Baseline | None = None, *, what: str = "runs") -> str:
    """Pick one OOD set: `wanted`, else the baseline's, else the only one; ambiguity is a `UserError`."""
    if not available:
        raise UserError(f"the {what} have no acc_ood values; train with --ood to record OOD accuracy")
    if wanted:
        matches = [s for s in available if s == wanted] or [s for s in available if dataset_name(s) == dataset_name(wanted)]
        if not matches:
            raise UserError(f"OOD set {wanted!r} is not in the {what}; they have: {', '.join(available)}")
        return matches[0]
    if baseline is not None and baseline.ood_set:
        matches = [s for s in available if s == baseline.ood_set] or [s for s in available if dataset_name(s) == dataset_name(baseline.ood_set)]
        if matches:
            return matches[0]
    if len(available) == 1:
        return available[0]
    raise UserError(f"the {what} have several OOD sets ({', '.join(available)}); choose one with --ood-set")


def record_er(record: dict, ood_set: str, baseline: Baseline | None = None) -> float | None:
    """ER of a record for `ood_set`: recomputed with `baseline` when given, else the logged ``er``.

    An ID accuracy of exactly 0 or 1 is clipped with the record's ``n_id`` when it has one,
    else it has no ER (None).
    """
    if baseline is None:
        return (record.get("er") or {}).get(ood_set)
    acc_id, acc_ood = record_id_acc(record, ood_set), (record.get("acc_ood") or {}).get(ood_set)
    if acc_id is None or acc_ood is None:
        return None
    n = record.get("n_id")
    if acc_id in (0, 1) and not n:
        return None
    return effective_robustness(acc_id, acc_ood, baseline, n_id=n, return_clipped=True)[0]


def warn_if_full_id(records: Iterable[dict], ood_set: str, baseline: Baseline | None) -> bool:
    """Warn when a class-subset baseline meets records without the subset ID accuracy for `ood_set`.

    The testbed's x axis is e.g. val-on-objectnet-classes; the full ImageNet val accuracy
    is another quantity, so ER and the plot would compare unlike things.
    """
    if baseline is None or not baseline.id_eval:
        return False
    missing = [r for r in records if ood_set in (r.get("acc_ood") or {}) and ood_set not in (r.get("acc_id_subset") or {})]
    if missing:
        import warnings

        warnings.warn(f"{len(missing)} record(s) lack acc_id_subset[{ood_set!r}]; their full ID accuracy stands in for "
                      f"{baseline.id_eval}, which the {baseline.name} baseline was fitted on", UserWarning, stacklevel=3)
    return bool(missing)


def final_records(records: Iterable[dict]) -> dict[str, dict]:
    """{head: its record with the largest step} (the last one logged on ties)."""
    out: dict[str, dict] = {}
    for r in records:
        h = r.get("head")
        if h is None:
            continue
        if h not in out or (r.get("step") or 0) >= (out[h].get("step") or 0):
            out[h] = r
    return out


def points_from_runs(run_dirs: Sequence[str | os.PathLike], ood_set: str | None = None) -> tuple[list[str], list[float], list[float], str]:
    """(model names, ID accuracies, OOD accuracies, OOD set) from the final record of each head of each run.

    Model names are ``<run folder>/<head>``. An unfinished run (killed, failed or still
    running: no complete summary.json) is refused, since its last record is not a final model.
    """
    from probekit.errors import UserError
    from probekit.runlog import read_run

    runs = [read_run(d) for d in run_dirs]
    unfinished = [str(r.path) for r in runs if not r.complete]
    if unfinished:
        raise UserError(f"run folder {unfinished[0]} is incomplete (no summary.json with status complete: killed, failed or "
                        f"still running); finish it (finetune: the same command with --resume; train-head: rerun it) or leave it out of --runs")
    available = ood_sets(r for run in runs for r in run.records)
    chosen = choose_ood_set(available, ood_set, what="runs")
    names, ids, oods = [], [], []
    for run in runs:
        for head, rec in final_records(run.records).items():
            acc_id, acc_ood = record_id_acc(rec, chosen), (rec.get("acc_ood") or {}).get(chosen)
            if acc_id is None or acc_ood is None:
                continue
            names.append(f"{run.path.name}/{head}")
            ids.append(float(acc_id))
            oods.append(float(acc_ood))
    return names, ids, oods, chosen


def shared_sizes(run_dirs: Sequence[str | os.PathLike], ood_set: str) -> tuple[int | None, int | None]:
    """(ID rows, OOD rows) the final records of these runs were scored on for `ood_set`, when they all agree.

    The ID size is that of the view paired with `ood_set` (its class-restricted one for a
    class-subset shift); None where records lack sizes (runs written before the record layer)
    or disagree."""
    from probekit.runlog import read_run

    ids, oods = set(), set()
    for d in run_dirs:
        for rec in final_records(read_run(d).records).values():
            ids.add((rec.get("n_id_subset") or {}).get(ood_set) or rec.get("n_id"))
            oods.add((rec.get("n_ood") or {}).get(ood_set))
    one = lambda values: next(iter(values)) if len(values) == 1 else None  # noqa: E731
    return one(ids), one(oods)
