"""`train_head`: one stage-2 run from cached features to a complete run folder.

Reads features only through `probekit.cache`, subsets through `probekit.datasets.subsets`,
computes ER only through `probekit.robustness`, and writes through `probekit.runlog`.
Everything a user can get wrong (files, dimensions, label spaces, NaN, subset, λ, lr,
baseline, solver) is checked before the run folder is touched, so a bad command loses nothing.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probekit.errors import UserError, unknown_name
from probekit.heads.config import TrainHeadConfig
from probekit.records import EvalPlan

SOLVERS = ("sgd", "lbfgs")


@dataclass
class TrainHeadResult:
    """What a run produced: the fitted estimator, its folder, and the per-head summary."""

    estimator: Any
    out: Path | None
    summary: dict
    records: list[dict] = field(default_factory=list)


def _load(spec, *, model, cache_dir, find_kw, role: str):
    """A FeatureSet from a FeatureSet, a `.h5` path or `dataset:split` (the feature lookup, `probekit.features`)."""
    from probekit.features import resolve_features

    return resolve_features(spec, model=model, cache_dir=cache_dir, **find_kw)


def _where(fs) -> str:
    return str(fs.path) if getattr(fs, "path", None) else fs.name


def _check_finite(fs, role: str) -> None:
    bad = int((~np.isfinite(fs.features)).sum())
    if bad:
        raise UserError(f"{role} features {_where(fs)} hold {bad} NaN/Inf values, so no head can be trained or scored on them; "
                        f"extract them again (extraction now refuses weights or a precision that produce NaN/Inf, and says which)")


def _parse_val(val, train_spec) -> tuple[Any, float | None]:
    """`--val` as a split/path, or `SPEC%F` / a bare fraction = held-out stratified fraction of train."""
    if val is None:
        return None, None
    if isinstance(val, (int, float)):
        return None, float(val)
    text = os.fspath(val) if not hasattr(val, "features") else None
    if text is None:
        return val, None
    if "%" in text:
        head, frac = text.rsplit("%", 1)
        train_text = getattr(train_spec, "name", None) or os.fspath(train_spec)
        if head and head != train_text:
            raise UserError(f"--val {text!r}: a held-out fraction must be of the training set {train_spec!r}, e.g. {train_spec}%0.1")
        try:
            return None, float(frac)
        except ValueError:
            raise UserError(f"--val {text!r}: {frac!r} is not a fraction; use e.g. {train_spec}%0.1") from None
    try:
        return None, float(text)
    except ValueError:
        return text, None


def _diversity_classes(subset: str | None, y: np.ndarray, num_classes: int, shifts: dict) -> np.ndarray | None:
    """The classes a `classes=K` subset trains on, or None when every class is trained.

    A head trained on K of C classes is scored on those K classes (rows of other classes
    dropped, argmax over the K logits), as in the paper's data-diversity ablation; otherwise
    its ID and OOD accuracies could never exceed K / C."""
    if not subset or "classes=" not in subset:
        return None
    kept = np.unique(y)
    if len(kept) == num_classes:
        return None
    if any(sh is not None for sh in shifts.values()):
        raise UserError(f"--subset {subset} cannot be combined with class-subset OOD sets (ImageNet-R, ObjectNet); "
                        "drop one of them")
    return kept


def _rows_of_classes(labels: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose label is in `kept`, and their labels renumbered 0..K-1 in `kept` order."""
    rows = np.flatnonzero(np.isin(labels, kept))
    return rows, np.searchsorted(kept, labels[rows])


@dataclass
class RunInputs:
    """The feature sets of one stage-2 run, loaded once and checked against each other."""

    train: Any
    val: Any
    val_fraction: float | None
    id_set: Any
    ood: list
    shifts: dict  # OOD set name -> ClassSubsetShift or None
    mixed: list = field(default_factory=list)  # differences in extraction allowed by --allow-mixed-features

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def label_space(self) -> str | None:
        return self.train.attrs.get("label_space")


def load_inputs(train, id_set, ood: Sequence = (), *, val=None, val_fraction: float | None = None, model: str | None = None,
                cache_dir=None, weights: str = "default", image_size: int | None = None, feature: str | None = None,
                allow_mixed_features: bool = False) -> RunInputs:
    """Load train / validation / ID / OOD features (names, paths or FeatureSets) and refuse sets that do not fit.

    Checks that every set comes from the same extraction (backbone, weights, transform, feature
    kind, precision; `allow_mixed_features` records differences instead), then NaN, feature
    dimensions, label spaces and class-subset shifts, so a bad command fails before any run
    folder is touched. `train_head` and `probekit ablate` both start here."""
    find_kw = {k: v for k, v in (("weights", weights), ("image_size", image_size), ("feature", feature)) if v not in (None, "default")}
    load = lambda spec, role: _load(spec, model=model, cache_dir=cache_dir, find_kw=find_kw, role=role)  # noqa: E731
    tr = load(train, "train")
    val_spec, frac = _parse_val(val, train)
    frac = frac if frac is not None else val_fraction
    va = load(val_spec, "val") if val_spec is not None else None
    te = load(id_set, "ID")
    oods = [load(s, "OOD") for s in ood]
    ood_names = [fs.name for fs in oods]
    if te.name in ood_names:
        raise UserError(f"the OOD set {te.name} is the ID set (--id); pass a different --ood")
    twice = sorted({n for n in ood_names if ood_names.count(n) > 1})
    if twice:
        raise UserError(f"OOD set {twice[0]} is given more than once in --ood; pass each set once")
    roles = [("train", tr)] + ([("validation", va)] if va is not None else []) + [("ID", te)] + [("OOD", o) for o in oods]
    from probekit.cache import check_same_source

    mixed = check_same_source(roles, allow_mixed=allow_mixed_features)
    for role, fs in roles:
        _check_finite(fs, role)
        if fs.features.shape[1] != tr.features.shape[1]:
            raise UserError(f"{role} features {_where(fs)} have dimension {fs.features.shape[1]} but train features {_where(tr)} "
                            f"have {tr.features.shape[1]}; extract both with the same --model / --feature")
    C = tr.num_classes
    space = tr.attrs.get("label_space")
    for role, fs in roles[1:]:
        if role == "OOD":
            continue
        other = fs.attrs.get("label_space")
        if (other and space and other != space) or fs.num_classes != C or (fs.classes and tr.classes and fs.classes != tr.classes):
            raise UserError(f"{role} features {_where(fs)} have label space {fs.attrs.get('label_space')!r} ({fs.num_classes} classes) "
                            f"but train features {_where(tr)} have {space!r} ({C} classes); use sets of the same classes")
        if fs.labels.size and fs.labels.max() >= C:
            raise UserError(f"{role} features {_where(fs)} hold label {int(fs.labels.max())} but the head has {C} classes")
    from probekit.robustness.shifts import check_label_space

    shifts = {}
    for o in oods:
        try:
            shifts[o.name] = check_label_space(space, C, o.name, o.attrs.get("label_space"), o.num_classes)
        except UserError as e:
            raise UserError(f"{e} (train {_where(tr)}, OOD {_where(o)})") from None
    return RunInputs(tr, va, frac, te, oods, shifts, mixed)


def resolve_baselines(specs, oods: Sequence, *, cache_dir=None) -> dict:
    """{OOD set: Baseline} of ``--baseline`` values (`probekit.records.match_baselines`, the rule of every mode)."""
    from probekit.records import match_baselines

    return match_baselines(specs or None, [o.name for o in oods], cache_dir=cache_dir)


@dataclass
class EvalViews:
    """What heads are scored on: the `EvalSet`s (ID first, validation, every OOD set and, for a
    class-subset shift, its class-restricted ID view ``NAME__id``) and the `EvalPlan` naming each
    view once with its size and baseline; restricted to the trained classes for a ``classes=K``
    head (`kept`)."""

    sets: list
    plan: EvalPlan
    scored_rows: dict  # set -> rows of that set that are scored
    kept: np.ndarray | None


def eval_views(te, oods: Sequence, shifts: dict, kept: np.ndarray | None, dev, storage_dtype: str = "float32", *,
               baselines: dict | None = None, val=None) -> EvalViews:
    """The `EvalSet`s of one run and its plan (see `EvalViews`), on `dev` in the storage dtype."""
    import torch

    from probekit.heads.evaluation import EvalSet
    from probekit.records import ID_VIEW_SUFFIX, class_subset_view, with_baselines

    storage = torch.float16 if storage_dtype == "float16" else torch.float32
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev)  # noqa: E731
    scored_rows: dict[str, np.ndarray] = {}

    def eval_set(name, fs, restrict=None):
        if kept is None:
            scored_rows[name] = np.arange(len(fs.labels))
            return EvalSet(name, as_t(fs.features).to(storage), as_t(fs.labels), restrict)
        rows, labels = _rows_of_classes(fs.labels, kept)  # diversity ablation: score on the trained classes only
        if rows.size == 0:
            raise UserError(f"{_where(fs)} has no example of the trained classes {', '.join(map(str, kept.tolist()))}, so a head "
                            "trained on them cannot be scored there; use another subset seed or an evaluation set with every class")
        scored_rows[name] = rows
        kept_t = as_t(kept)
        return EvalSet(name, as_t(fs.features[rows]).to(storage), as_t(labels), lambda logits: logits[..., kept_t])

    sets = [eval_set(te.name, te)]
    val_name = None
    if val is not None:  # scored like the test sets, so "best" can be chosen on it
        val_name = val.name if val.name != te.name else val.name + "[val]"
        sets.append(eval_set(val_name, val))
    views = []
    for o in oods:
        sh = shifts[o.name]
        sets.append(eval_set(o.name, o, sh.restrict_logits if sh else None))
        views.append(class_subset_view(o.name, sets[-1].n, sh, te.labels, _where(te)))
        if sh is not None:
            mask = sh.id_mask(te.labels)
            sets.append(EvalSet(o.name + ID_VIEW_SUFFIX, as_t(te.features[mask]).to(storage),
                                as_t(sh.map_id_labels(te.labels[mask])), sh.restrict_logits))
    plan = EvalPlan(te.name, sets[0].n, tuple(views), val_name, sets[1].n if val_name else None)
    return EvalViews(sets, with_baselines(plan, baselines or {}), scored_rows, kept)


def head_records(views: EvalViews, acc: dict, *, step: int, epoch, loss, heads: Sequence[dict], mode: str,
                 extra: dict | None = None) -> list[dict]:
    """One run record per head from one evaluation's accuracies ``{set: [H]}`` (`records.evaluation_records`).

    `heads`: each head's ``head`` id and its hyper-parameters; `epoch`: a number or ``[H]``;
    `loss`: None or ``[H]``."""
    from probekit.records import evaluation_records

    return evaluation_records(views.plan, acc, step=step, epoch=epoch, heads=heads, mode=mode, loss=loss, extra=extra)


def write_heads(out, state: dict, classes: Sequence[str]) -> Path:
    """``heads.pt`` of a run folder (tensors and plain values, loadable with ``weights_only=True``), atomically."""
    import io

    import torch

    from probekit.atomic import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({**state, "classes": list(classes)}, buf)
    path = Path(out) / "heads.pt"
    atomic_write_bytes(path, buf.getvalue())
    return path


def train_head(cfg: TrainHeadConfig, *, init=None, extra_config: dict | None = None, record_extra: dict | None = None,
               inputs: RunInputs | None = None) -> TrainHeadResult:
    """Train heads on cached features and log acc_id / acc_ood / ER at every evaluation.

    `cfg`: a `TrainHeadConfig` (feature sets: ``dataset:split`` names found in the cache for
    ``cfg.model``, ``.h5`` paths, or `FeatureSet`s; ``val`` may also be ``SPEC%F`` or a fraction;
    ``baselines``: ``--baseline`` values, see `probekit.records.match_baselines`).
    `init=(coef [C, D], intercept [C])` starts every head from given weights (zero-shot hook).
    `extra_config` / `record_extra` are added to config.json / every record (an ablation's cell);
    `inputs` reuses feature sets already loaded with `load_inputs`.
    Feature sets from different extractions are refused unless `allow_mixed_features`.
    SGD runs with `out` checkpoint as they go (`probekit.heads.resume`); SIGTERM / the first
    Ctrl-C stops after the current step with a checkpoint (raising `Stopped`), and
    ``resume=True`` continues a stopped or killed run to the log an uninterrupted run writes.
    Returns a `TrainHeadResult`; with `out`, the run folder holds log.jsonl, summary.json,
    config.json, heads.pt and (on request) predictions.npz.
    """
    import torch

    from probekit import runlog
    from probekit.heads.evaluation import check_positive_list, predict_heads
    from probekit.records import plan_config, summarise_run
    from probekit.runtime import StopRequest, choose_device

    # the run's settings by their CLI names (cfg is the one place they are spelled out)
    train, id_set, ood, val, model, cache_dir = cfg.train, cfg.id_set, cfg.ood, cfg.val, cfg.model, cfg.cache_dir
    weights, image_size, feature, solver, baseline = cfg.weights, cfg.image_size, cfg.feature, cfg.solver, cfg.baselines
    subset, subset_seed, cscores, out, overwrite = cfg.subset, cfg.subset_seed, cfg.cscores, cfg.out, cfg.overwrite
    save_predictions, device, storage_dtype, eval_every, progress = cfg.save_predictions, cfg.device, cfg.storage_dtype, cfg.eval_every, cfg.progress
    lrs, seeds, batch_size, epochs, momentum = cfg.lrs, cfg.seeds, cfg.batch_size, cfg.epochs, cfg.momentum
    weight_decay, schedule, head_init, l2_grid, val_fraction = cfg.weight_decay, cfg.schedule, cfg.head_init, cfg.l2_grid, cfg.val_fraction
    val_seed, refit, max_iter, tol, select_tol = cfg.val_seed, cfg.refit, cfg.max_iter, cfg.tol, cfg.select_tol
    warm_start, lbfgs_dtype, allow_mixed_features, resume = cfg.warm_start, cfg.lbfgs_dtype, cfg.allow_mixed_features, cfg.resume
    from probekit.heads.lbfgs import DEFAULT_L2_GRID, LBFGSLogistic, l2_id
    from probekit.heads.sgd import SGDHeads

    t_start = time.time()
    if solver not in SOLVERS:
        raise unknown_name("solver", str(solver), SOLVERS)
    if solver == "sgd":
        lrs = check_positive_list(lrs, "--lr")
        unused = [flag for flag, given in (("--l2-grid", l2_grid is not None), ("--refit", refit), ("--val", val is not None),
                                           ("--val-fraction", val_fraction is not None)) if given]
        if unused:
            raise UserError(f"{', '.join(unused)} {'is an option' if len(unused) == 1 else 'are options'} of the L-BFGS sweep, "
                            "which --solver sgd does not use; pass --solver lbfgs or drop them")
    else:
        l2_grid = check_positive_list(DEFAULT_L2_GRID if l2_grid is None else l2_grid, "--l2-grid")
    if resume and solver != "sgd":
        raise UserError("--resume continues SGD runs; an L-BFGS sweep starts over: rerun without --resume")
    if val is not None and val_fraction is not None:
        raise UserError(f"--val {val} and --val-fraction {val_fraction} both name the validation data; pass one of them")
    if out is not None:
        runlog.check_out(out, overwrite=overwrite, resume=resume, cache_dir=cache_dir)  # before any work: a bad --out loses nothing
    dev = choose_device(device)

    # -- features ------------------------------------------------------------------------
    inputs = inputs or load_inputs(train, id_set, ood, val=val, val_fraction=val_fraction, model=model, cache_dir=cache_dir,
                         weights=weights, image_size=image_size, feature=feature, allow_mixed_features=allow_mixed_features)
    tr, va, frac, te, oods, shifts = inputs.train, inputs.val, inputs.val_fraction, inputs.id_set, inputs.ood, inputs.shifts
    C, space = inputs.num_classes, inputs.label_space

    # -- subset --------------------------------------------------------------------------
    X, y = tr.features, tr.labels
    rows = None
    if subset:
        from probekit.datasets.subsets import load_cscores, select_subset

        cs = load_cscores(cscores, y) if cscores else None
        rows = select_subset(y, subset, seed=subset_seed, cscores=cs)
        if rows.size == 0:
            raise UserError(f"subset {subset!r} selects no training rows; choose a larger subset")
        X, y = X[rows], y[rows]
    elif cscores:
        raise UserError("--cscores is only used with --subset cscore=...; add a --subset or drop --cscores")
    from probekit.datasets.subsets import warn_if_one_class

    warn_if_one_class(y, f"the training set {tr.name}" + (f" (--subset {subset})" if subset else ""))

    # -- baseline ------------------------------------------------------------------------
    baselines = resolve_baselines(baseline, oods, cache_dir=cache_dir)

    # -- estimator -----------------------------------------------------------------------
    if solver == "sgd":
        est = SGDHeads(lrs, seeds, batch_size=batch_size, epochs=epochs, momentum=momentum, weight_decay=weight_decay,
                       schedule=schedule, eval_every=eval_every, head_init=head_init, init=init, n_classes=C,
                       device=dev, storage_dtype=storage_dtype)
        est._check_params()
        heads = [{"head": f"lr={lr:g},seed={s}", "lr": lr, "seed": s} for lr in est.lrs_ for s in est.seeds_]
    else:
        est = LBFGSLogistic(l2_grid, max_iter=max_iter, tol=tol, select_tol=select_tol, refit=refit, warm_start=warm_start,
                            val_fraction=frac if va is None else None, val_seed=val_seed, eval_every=eval_every,
                            init=init, n_classes=C, device=dev, dtype=lbfgs_dtype)
        est._check_params()
        if va is None and not frac and len(l2_grid) > 1:
            raise UserError("the L-BFGS sweep chooses λ on validation data: pass --val SPLIT|FILE or --val-fraction F")

    # -- evaluation sets -----------------------------------------------------------------
    kept = _diversity_classes(subset, y, C, shifts)
    views = eval_views(te, oods, shifts, kept, dev, storage_dtype, baselines=baselines, val=va)
    sets, scored_rows = views.sets, views.scored_rows

    n_val = 0  # training rows the L-BFGS sweep holds out to choose λ on (they train no head but the refit)
    if solver == "lbfgs" and va is None and frac:
        from probekit.heads.lbfgs import stratified_split

        n_val = len(stratified_split(y, float(frac), val_seed)[1])
    from probekit.cache import provenance

    config = {
        "command": "train-head", "solver": solver, "model": model or tr.attrs.get("backbone"),
        # what the features were made with, read off the train file (the others match it, or see "mixed_features")
        "weights": tr.attrs.get("weights") or None, "image_size": tr.attrs.get("image_size") or tr.attrs.get("input_size") or None,
        "feature": tr.attrs.get("feature") or tr.attrs.get("feature_kind") or None,
        "train": tr.name, "val": va.name if va is not None else None, "val_fraction": frac if va is None else None,
        **plan_config(views.plan),
        "inputs": {role: provenance(fs) for role, fs in [("train", tr), ("val", va), ("id", te)] if fs is not None}
        | {f"ood:{o.name}": provenance(o) for o in oods},
        "allow_mixed_features": allow_mixed_features, "mixed_features": inputs.mixed,
        "backbone": tr.attrs.get("backbone"), "weight_id": tr.attrs.get("weight_id"), "label_space": space, "num_classes": C,
        "feature_dim": int(X.shape[1]), "n_train": int(len(y)) - n_val, "n_val": n_val or (len(va.labels) if va is not None else 0),
        "n_train_total": int(len(tr.labels)),
        "subset": subset, "subset_seed": subset_seed if subset else None,
        "scored_classes": kept.tolist() if kept is not None else None, "cscores": str(cscores) if cscores else None,
        "eval_every": eval_every, "device": str(dev), "storage_dtype": storage_dtype, "save_predictions": save_predictions,
        "init": "given" if init is not None else None, "torch": torch.__version__,
    }
    if solver == "sgd":
        config |= {"lrs": est.lrs_, "seeds": est.seeds_, "batch_size": batch_size, "epochs": epochs, "momentum": momentum,
                   "weight_decay": weight_decay, "schedule": schedule, "head_init": head_init}
    else:
        config |= {"l2_grid": sorted(l2_grid, reverse=True), "refit": refit, "max_iter": max_iter, "tol": tol, "select_tol": select_tol,
                   "warm_start": warm_start, "lbfgs_dtype": lbfgs_dtype, "val_seed": val_seed,
                   "objective": "sum_i CE(W x_i + b, y_i) + (l2/2) ||W||^2, bias unpenalised; l2 = 1/C of sklearn LogisticRegression (two classes: C = 2/l2)"}
    config |= extra_config or {}

    # -- the run -------------------------------------------------------------------------
    from probekit.heads.resume import Checkpointer, remove_checkpoint, restored_predictions, resume_point, stopped

    start = resume_point(out, config, resume=resume, overwrite=overwrite)
    writer = runlog.RunWriter(out, config, overwrite=overwrite, resume=start is not None, cache_dir=cache_dir) if out is not None else None
    records: list[dict] = []
    preds: dict[str, list] = {o.name: [] for o in oods} if save_predictions else {}
    pred_steps: list[int] = []
    if start is not None:  # continue where the checkpoint is: the log up to its step, its predictions
        records = writer.truncate(lambda r: r.get("step", 0) <= start["step"])
        preds, pred_steps = restored_predictions(start) if save_predictions else (preds, pred_steps)
    ckpt = Checkpointer(writer.dir, config) if writer is not None and solver == "sgd" else None
    from probekit.progress import progress_bar

    bar = progress_bar(enabled=progress, unit="step", desc=f"train-head {solver}", leave=False,
               initial=start["step"] if start is not None else 0)

    def on_eval(p):
        if solver == "sgd":
            hs = [{"head": h["head"], "lr": h["lr"], "seed": h["seed"]} for h in heads]
        else:
            l2, rf = p.extra["l2"], p.extra["refit"]
            hs = [{"head": l2_id(l2, rf), "l2": l2, "refit": rf, "objective": p.extra["objective"], "grad_max": p.extra["grad_max"]}]
        batch = head_records(views, p.acc, step=p.step, epoch=p.epoch, loss=p.loss, heads=hs, mode=solver,
                             extra=({"subset": subset} if subset else {}) | (record_extra or {}))
        records.extend(batch)
        if writer is not None:
            writer.log_many(batch)
        if save_predictions and solver == "sgd":
            pred_steps.append(p.step)
            for o in oods:
                es = next(e for e in sets if e.name == o.name)
                preds[o.name].append(predict_heads(es.X, p.W, p.b, es.restrict).cpu().numpy().astype(np.int16))
        bar.update(max(0, p.step - bar.n) if solver == "sgd" else 1)
        if solver == "lbfgs":
            bar.set_postfix_str(f"l2={p.extra['l2']:.3g}", refresh=False)
        if ckpt is not None and ckpt.due():
            ckpt.save(p.state(), preds, pred_steps)

    import contextlib

    stop = StopRequest()  # SGD stops at a step and checkpoints; L-BFGS cannot resume, so Ctrl-C stops it at once
    try:
        with stop if solver == "sgd" else contextlib.nullcontext():
            if solver == "sgd":
                spe = math.ceil(len(y) / min(int(batch_size), len(y)))
                bar.total = max(1, round(epochs * spe))
                est.fit(X, y, eval_sets=sets, callback=on_eval, resume=start["sgd"] if start is not None else None,
                        stop=lambda: stop.requested)
            elif va is not None:
                est.fit(X, y, va.features, va.labels, eval_sets=sets, callback=on_eval)
            else:
                est.fit(X, y, eval_sets=sets, callback=on_eval)
        if solver == "sgd" and est.stopped_:
            if ckpt is not None:
                ckpt.save(est.state_, preds, pred_steps)
            raise stopped(stop.signum, est, ckpt, writer)
    except KeyboardInterrupt:  # a second Ctrl-C (or one during L-BFGS): at once, with what is saved
        bar.close()
        if writer is not None:
            writer.close()
        raise stopped(signal.SIGINT, None, ckpt, writer, resumed_at=start["step"] if start is not None else None) from None
    except BaseException:
        bar.close()
        if writer is not None:
            writer.close()
        raise
    bar.close()

    # -- outputs -------------------------------------------------------------------------
    head_ids = list(dict.fromkeys(r["head"] for r in records)) or ([h["head"] for h in heads] if solver == "sgd" else [])
    extra_summary: dict = {"solver": solver, "n_train": config["n_train"], "elapsed_s": round(time.time() - t_start, 3)}
    best_head = chosen_on = None
    if solver == "lbfgs":
        best_head = l2_id(est.chosen_l2_, bool(refit and getattr(est, "refit_n_iter_", None) is not None))
        chosen_on = views.plan.val_set or (f"{tr.name}%{frac:g}" if frac else None)
        extra_summary |= {"chosen_l2": est.chosen_l2_, "chosen_head": best_head,
                          "val_scores": {l2_id(k): v for k, v in est.val_scores_.items()},
                          "n_iter": {l2_id(k): int(v) for k, v in zip(est.l2_grid_, est.n_iter_)},
                          "objective": {l2_id(k): v for k, v in est.objective_.items()},
                          "converged": {l2_id(k): v for k, v in est.converged_.items()},
                          "stop_reason": {l2_id(k): v for k, v in est.stop_reason_.items()},
                          "tol": {l2_id(k): v for k, v in est.tol_.items()}}
    summary = summarise_run(records, views.plan, mode=solver, heads=head_ids, best_head=best_head, chosen_on=chosen_on,
                            extra=extra_summary | (record_extra or {}))
    if out is not None:
        from probekit.atomic import atomic_write_bytes
        import io

        if solver == "sgd":
            state = {"weight": torch.from_numpy(est.coef_).contiguous(), "bias": torch.from_numpy(est.intercept_).contiguous(),
                     "heads": [h["head"] for h in heads], "lr": torch.tensor([h["lr"] for h in heads]),
                     "seed": torch.tensor([h["seed"] for h in heads])}
        else:
            state = {"weight": torch.from_numpy(est.coef_).contiguous(), "bias": torch.from_numpy(est.intercept_).contiguous(),
                     "chosen_l2": float(est.chosen_l2_), "path_weight": torch.from_numpy(est.path_coef_).contiguous(),
                     "path_bias": torch.from_numpy(est.path_intercept_).contiguous(), "path_l2": torch.tensor(est.l2_grid_),
                     "heads": [l2_id(v) for v in est.l2_grid_]}
        write_heads(writer.dir, state, tr.classes)
        if save_predictions and oods:
            if solver == "lbfgs":  # final prediction of every λ (and the refit), one "step" = -1 (end of each solve)
                Ws = torch.from_numpy(est.path_coef_).transpose(1, 2).contiguous().to(dev)
                bs = torch.from_numpy(est.path_intercept_).to(dev)
                hids = [l2_id(v) for v in est.l2_grid_]
                if refit and getattr(est, "refit_n_iter_", None) is not None:
                    Ws = torch.cat([Ws, est.W_.to(dev)]); bs = torch.cat([bs, est.b_.to(dev)])
                    hids.append(l2_id(est.chosen_l2_, True))
                pred_steps[:] = [-1]
                for o in oods:
                    es = next(e for e in sets if e.name == o.name)
                    preds[o.name] = [predict_heads(es.X, Ws, bs, es.restrict).cpu().numpy().astype(np.int16)]
            else:
                hids = [h["head"] for h in heads]
            arrays = {"steps": np.asarray(pred_steps, np.int64), "heads": np.asarray(hids)}
            for o in oods:
                predicted = np.stack(preds[o.name])
                arrays[o.name] = predicted if kept is None else kept[predicted].astype(np.int16)
                arrays[o.name + "__index"] = o.index[scored_rows[o.name]].astype(np.int64)
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            atomic_write_bytes(writer.dir / "predictions.npz", buf.getvalue())
        writer.finish(summary)
        if ckpt is not None:
            remove_checkpoint(writer.dir)  # heads.pt holds the heads (after a replacing run's swap, writer.dir is --out)
    return TrainHeadResult(est, Path(out) if out is not None else None, summary, records)
