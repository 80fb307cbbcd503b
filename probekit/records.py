"""The one evaluation-and-record layer every mode shares: plan, records, summary, predictions.

`train-head` (SGD heads, the L-BFGS sweep), `finetune` and `zero-shot` only *measure*
accuracies. What they are measured on is an `EvalPlan`: the ID set, an optional validation
set, and per OOD set its size, its class-subset shift (ImageNet-R / ObjectNet: the ID
accuracy on the x axis is then val restricted to the shift's classes, a view of its own)
and the baseline that gives ER on it. `evaluation_records` is the one pure function that
turns those accuracies into run records (``er``, ``clipped``, ``acc_id_subset``,
``id_eval``, ``n_id``, ``n_ood``); `summarise_run` is the one ``summary.json``;
`plan_config` the one spelling of baselines in ``config.json``; `write_predictions` the one
``predictions.npz``. Reading old run folders (other spellings) is `logged_baselines`'s job.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from probekit.errors import UserError
from probekit.robustness.baseline import Baseline, effective_robustness
from probekit.names import dataset_name
from probekit.robustness.shifts import ClassSubsetShift

SUMMARY_SCHEMA = "probekit-run-summary"
SUMMARY_VERSION = 2
PREDICTIONS_FILE = "predictions.npz"
ID_VIEW_SUFFIX = "__id"   # accuracy key of OOD set S's class-restricted ID view: S + "__id"


@dataclass(frozen=True)
class OODView:
    """One OOD set as scored: its rows, its class-subset shift, and the baseline that applies to it."""

    name: str                                   # e.g. "cifar10.1:test", "objectnet:test"
    n: int                                      # rows scored
    shift: ClassSubsetShift | None = None
    n_id: int | None = None                     # rows of the ID view restricted to the shift's classes
    baseline: Baseline | None = None

    @property
    def id_key(self) -> str | None:
        """The accuracy key of this set's class-restricted ID view, or None without a shift."""
        return self.name + ID_VIEW_SUFFIX if self.shift is not None else None


@dataclass(frozen=True)
class EvalPlan:
    """Every view an evaluation measures, named once, with the size and baseline of each."""

    id_set: str
    n_id: int
    ood: tuple[OODView, ...] = ()
    val_set: str | None = None
    n_val: int | None = None

    def keys(self) -> list[str]:
        """Every accuracy key a producer must measure: ID, validation, each OOD set, each restricted ID view."""
        keys = [self.id_set] + ([self.val_set] if self.val_set else []) + [v.name for v in self.ood]
        return keys + [v.id_key for v in self.ood if v.id_key]


def class_subset_view(name: str, n: int, shift: ClassSubsetShift | None, id_labels: Any, id_where: str) -> OODView:
    """An `OODView`; with a shift, sized by the ID rows of its classes (none of them is a UserError)."""
    if shift is None:
        return OODView(name, int(n))
    n_id = int(shift.id_mask(np.asarray(id_labels)).sum())
    if n_id == 0:
        raise UserError(f"no row of ID set {id_where} belongs to the {shift.name} classes; is the ID set ImageNet val?")
    return OODView(name, int(n), shift, n_id)


def match_baselines(specs: Any, ood_names: Sequence[str], *, cache_dir: Any = None) -> dict[str, Baseline]:
    """{OOD set: Baseline} from ``--baseline`` values, the same rule in every mode.

    `specs`: None, a `Baseline`, a name / fit file, ``OOD_SET=NAME_OR_FILE``, or a list of them.
    A baseline fitted for one OOD dataset applies only to it (`Baseline.applies_to`); one that
    fits none of `ood_names` is refused, so a run never silently logs no ER.
    """
    from probekit.robustness import load_baseline

    if specs is None:
        return {}
    if isinstance(specs, Mapping):  # already matched (e.g. an ablation handing its cells the same baselines)
        return {n: specs[n] for n in ood_names if n in specs}
    if isinstance(specs, (str, os.PathLike, Baseline)):
        specs = [specs]
    ood_names = list(ood_names)
    out: dict[str, Baseline] = {}
    for spec in specs:
        if isinstance(spec, Baseline):
            b, named = spec, []
        else:
            spec = os.fspath(spec)
            target, sep, source = spec.rpartition("=")
            named = [n for n in ood_names if target in (n, dataset_name(n))] if sep else []
            if sep and target and not named and not os.path.exists(spec):
                raise UserError(f"--baseline {spec!r} names OOD set {target!r}, which is not among --ood "
                                f"{' '.join(ood_names) or '(none)'}; use OOD_SET=BASELINE with one of those")
            b = load_baseline(source if named else spec, cache_dir=cache_dir)
        if named:
            out.update({n: b for n in named})
            continue
        fitting = [n for n in ood_names if b.applies_to(n)]
        if ood_names and not fitting:
            raise UserError(f"baseline {b.name} is fitted for OOD set {b.ood_set}, which is not among --ood "
                            f"{' '.join(ood_names)}; pass the baseline of one of these sets")
        for n in fitting:
            out.setdefault(n, b)
    if specs and not ood_names:
        raise UserError("--baseline needs at least one --ood set to compute effective robustness on")
    return out


def with_baselines(plan: EvalPlan, baselines: Mapping[str, Baseline]) -> EvalPlan:
    """The plan with each OOD view's baseline set from `baselines` (see `match_baselines`)."""
    return replace(plan, ood=tuple(replace(v, baseline=baselines.get(v.name)) for v in plan.ood))


def _per_head(value: Any, h: int) -> Any:
    arr = np.asarray(value)
    return arr.item() if arr.ndim == 0 else arr.reshape(-1)[h].item()


def evaluation_records(plan: EvalPlan, acc: Mapping[str, Any], *, step: int, epoch: float, heads: Sequence[Mapping[str, Any]],
                       mode: str, loss: Any = None, extra: Mapping[str, Any] | None = None) -> list[dict]:
    """One record per head from the accuracies of one evaluation; pure, the same for every mode.

    `acc` maps every key of `plan.keys()` to a fraction (one head) or an array [H]; `heads`
    gives each head's ``head`` id and its hyper-parameters (``lr``, ``seed``, ``l2``...);
    `epoch` is a number or [H] (heads with row sets of their own); `loss` is None, a number or [H]. ER is computed once over all heads per OOD set that has
    a baseline, against the ID accuracy the testbed plots for that set.
    """
    missing = [k for k in plan.keys() if k not in acc]
    if missing:
        raise ValueError(f"accuracies missing for {missing} (the plan needs {plan.keys()})")
    H = len(heads)
    er: dict[str, np.ndarray] = {}
    clipped = np.zeros(H, dtype=bool)
    for v in plan.ood:
        if v.baseline is None:
            continue
        x, n_x = (acc[v.id_key], v.n_id) if v.id_key else (acc[plan.id_set], plan.n_id)
        e, c = effective_robustness(np.broadcast_to(np.asarray(x, np.float64), (H,)), np.broadcast_to(np.asarray(acc[v.name], np.float64), (H,)),
                                    v.baseline, n_id=n_x, n_ood=v.n, return_clipped=True)
        er[v.name] = np.asarray(e, np.float64).reshape(H)
        clipped |= np.asarray(c, bool).reshape(H)
    shifted = [v for v in plan.ood if v.id_key]
    out = []
    for h, fields in enumerate(heads):
        r: dict[str, Any] = {"step": int(step), "epoch": float(_per_head(epoch, h)), "head": fields["head"], "mode": mode,
                             **{k: v for k, v in fields.items() if k != "head"},
                             "loss": None if loss is None else float(_per_head(loss, h)),
                             "acc_id": float(_per_head(acc[plan.id_set], h)),
                             "acc_ood": {v.name: float(_per_head(acc[v.name], h)) for v in plan.ood},
                             "id_set": plan.id_set, "n_id": plan.n_id, "n_ood": {v.name: v.n for v in plan.ood}}
        if plan.val_set:
            r["val_set"], r["acc_val"] = plan.val_set, float(_per_head(acc[plan.val_set], h))
        if shifted:
            r["acc_id_subset"] = {v.name: float(_per_head(acc[v.id_key], h)) for v in shifted}
            r["id_eval"] = {v.name: v.shift.id_eval for v in shifted}
            r["n_id_subset"] = {v.name: v.n_id for v in shifted}
        if er:
            r["er"] = {s: float(e[h]) for s, e in er.items()}
            if clipped[h]:
                r["clipped"] = True
        r.update(extra or {})
        out.append(r)
    return out


# -- config.json ---------------------------------------------------------------------------------

def plan_config(plan: EvalPlan) -> dict:
    """The plan's part of ``config.json``: sets, sizes and the one spelling of baselines.

    ``baselines`` is ``{ood_set: full fit (Baseline.to_json())}``, so a run keeps its baseline
    even after the fit file moves; `logged_baselines` reads it back."""
    return {"id_set": plan.id_set, "val_set": plan.val_set, "ood": [v.name for v in plan.ood],
            "baselines": {v.name: v.baseline.to_json() for v in plan.ood if v.baseline is not None},
            "class_subset_shifts": {v.name: v.shift.id_eval for v in plan.ood if v.shift is not None}}


def logged_baselines(config: Mapping[str, Any]) -> dict[str, Baseline | str]:
    """{OOD set (or "*" for all): the Baseline a run logged ER with} from its ``config.json``.

    Reads the current spelling (``baselines: {set: fit}``) and the three older ones:
    train-head ``baseline`` + ``baseline_fit`` (+ ``er_sets``), finetune ``baselines: {set: name}``
    + ``baseline_fit``, zero-shot ``baseline`` (a name only: returned as that string).
    """
    logged = config.get("baselines")
    fit = config.get("baseline_fit")
    if isinstance(logged, dict) and all(isinstance(v, dict) for v in logged.values()):
        return {s: Baseline.from_json(v, origin=f"config.json baseline of {s}") for s, v in logged.items()}
    if isinstance(logged, dict):  # finetune before the record layer: names, and the shared fit when there is one
        shared = Baseline.from_json(fit, origin="config.json baseline_fit") if isinstance(fit, dict) else None
        return {s: shared if shared is not None else str(name) for s, name in logged.items()}
    if isinstance(fit, dict):  # train-head before the record layer
        b = Baseline.from_json(fit, origin="config.json baseline_fit")
        return {s: b for s in config.get("er_sets") or []} or {"*": b}
    if isinstance(config.get("baseline"), str):  # zero-shot before the record layer
        return {"*": config["baseline"]}
    return {}


# -- summary.json ----------------------------------------------------------------------------------

HEAD_FIELDS = ("lr", "seed", "l2", "refit")


def summarise_heads(records: Sequence[dict], heads: Sequence[str] | None = None) -> dict:
    """Per head: its final record's values, and its oracle values (maxima over evaluations of *test* numbers).

    The oracle values describe the trajectory (the paper's ER peak during fine-tuning); they are
    not a model one could select without looking at the test sets."""
    if heads is None:
        heads = list(dict.fromkeys(r["head"] for r in records if "head" in r))
    out = {}
    for h in heads:
        rs = [r for r in records if r.get("head") == h]
        if not rs:
            continue
        last = rs[-1]
        final = {k: last[k] for k in ("step", "acc_id", "acc_ood", "acc_val", "er", "loss", "clipped") if k in last}
        oracle: dict[str, Any] = {"acc_id": max(r["acc_id"] for r in rs),
                                  "acc_ood": {s: max(r["acc_ood"][s] for r in rs) for s in last["acc_ood"]}}
        peaks = {}
        for s in last.get("er") or {}:
            vals = [(r["er"][s], r["step"]) for r in rs if (r.get("er") or {}).get(s) is not None]
            if vals:
                er, step = max(vals, key=lambda v: v[0])
                peaks[s] = {"er": er, "step": step}
        if peaks:
            oracle["er_peak"] = peaks
        out[h] = {"steps": last["step"], **{k: last[k] for k in HEAD_FIELDS if k in last}, "final": final, "oracle": oracle}
    return out


def choose_best(records: Sequence[dict], *, head: str | None = None, chosen_on: str | None = None) -> dict | None:
    """The selected model, reported on test: `head`'s final record when the solver chose it on validation
    (L-BFGS λ), else the record of highest validation accuracy (first on ties); None without validation."""
    if head is not None:
        rs = [r for r in records if r.get("head") == head]
        best = rs[-1] if rs else None
    else:
        scored = [r for r in records if r.get("acc_val") is not None]
        best = max(scored, key=lambda r: r["acc_val"]) if scored else None
        chosen_on = best.get("val_set") if best else None
    if best is None:
        return None
    return {"head": best["head"], "step": best["step"], "chosen_on": chosen_on,
            **{k: best[k] for k in ("acc_val", "acc_id", "acc_ood", "er", "acc_id_subset") if k in best}}


def summarise_run(records: Sequence[dict], plan: EvalPlan, *, mode: str, heads: Sequence[str] | None = None,
                  best_head: str | None = None, chosen_on: str | None = None, extra: Mapping[str, Any] | None = None) -> dict:
    """The one ``summary.json`` body (`RunWriter.finish` adds ``status``) for every mode.

    ``heads`` per head (`summarise_heads`), ``best`` chosen on validation where there is one
    (`choose_best`; None otherwise: the test sets never choose), plus the mode's `extra`."""
    return {"schema": SUMMARY_SCHEMA, "version": SUMMARY_VERSION, "mode": mode, "id_set": plan.id_set,
            "val_set": plan.val_set, "ood": [v.name for v in plan.ood],
            "baselines": {v.name: v.baseline.name for v in plan.ood if v.baseline is not None},
            "heads": summarise_heads(records, heads), "best": choose_best(records, head=best_head, chosen_on=chosen_on),
            "records": len(records), **(extra or {})}


def percent(value: float | None) -> str:
    """An accuracy (fraction) as a table cell in %, "-" when absent."""
    return "-" if value is None else f"{100 * value:.2f}"


def points(value: float | None) -> str:
    """An ER (fraction) as a table cell in signed points, "-" when absent."""
    return "-" if value is None else f"{100 * value:+.2f}"


def results_table(heads: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, ...]]:
    """The final record of each head of `summarise_heads` as table rows (header first): accuracies
    in %, ER in points, as the demo and the papers report them."""
    finals = {name: entry.get("final") or {} for name, entry in heads.items()}
    oods = list(dict.fromkeys(k for f in finals.values() for k in (f.get("acc_ood") or {})))
    ers = list(dict.fromkeys(k for f in finals.values() for k, v in (f.get("er") or {}).items() if v is not None))
    rows = [("head", "step", "ID acc %", *(f"{k} acc %" for k in oods), *(f"ER {k} (points)" for k in ers))]
    for name, f in finals.items():
        rows.append((name, str(f.get("step", "-")), percent(f.get("acc_id")), *(percent((f.get("acc_ood") or {}).get(k)) for k in oods),
                     *(points((f.get("er") or {}).get(k)) for k in ers)))
    return rows


# -- predictions.npz -------------------------------------------------------------------------------

@dataclass
class Predictions:
    """Predicted classes per OOD set, in the OOD label space, for ``predictions.npz``."""

    steps: list[int] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)
    sets: dict[str, list[np.ndarray]] = field(default_factory=dict)   # set -> T arrays [H, N]
    index: dict[str, np.ndarray] = field(default_factory=dict)        # set -> dataset index [N] of each row

    def add(self, step: int, predicted: Mapping[str, Any]) -> None:
        """One evaluation: {set: [H, N] predicted classes}."""
        self.steps.append(int(step))
        for name, p in predicted.items():
            self.sets.setdefault(name, []).append(np.asarray(p).astype(np.int16).reshape(len(self.heads), -1))

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"steps": np.asarray(self.steps, np.int64), "heads": np.asarray(self.heads, dtype=str)}
        for name, rows in self.sets.items():
            out[name] = np.stack(rows)
            out[name + "__index"] = np.asarray(self.index[name], np.int64)
        return out


def write_predictions(run_dir: str | os.PathLike, predictions: Predictions) -> Path:
    """``predictions.npz`` in `run_dir` (or the ``.npz`` path given) (docs/formats.md): ``steps`` [T], ``heads`` [H], per set S ``S`` int16 [T, H, N] and ``S__index`` [N]."""
    from probekit.atomic import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, **predictions.arrays())
    path = Path(run_dir)
    path = path if path.suffix == ".npz" else path / PREDICTIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def merge_predictions(parts: Sequence[Predictions]) -> Predictions:
    """Heads evaluated one after another (finetune) as one file: same steps and sets, heads concatenated."""
    if not parts:
        return Predictions()
    first = parts[0]
    merged = Predictions(list(first.steps), [h for p in parts for h in p.heads], {}, dict(first.index))
    for name in first.sets:
        merged.sets[name] = [np.concatenate([p.sets[name][t] for p in parts]) for t in range(len(first.steps))]
    return merged


def read_predictions(path: str | os.PathLike) -> Predictions:
    """A ``predictions.npz`` read back (arrays only, no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    p = Predictions([int(s) for s in data["steps"]], [str(h) for h in data["heads"]])
    for k, v in data.items():
        if k in ("steps", "heads") or k.endswith("__index"):
            continue
        p.sets[k] = list(v)
        p.index[k] = data[k + "__index"]
    return p
