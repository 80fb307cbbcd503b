"""Score a zero-shot head on cached image features and log it like any other head.

The record is the one `train-head` writes (step 0, ``head: "zero-shot"``), so a zero-shot run
sits on the same ID-vs-OOD plot and ER table as the heads trained from it. Class-subset
shifts (ImageNet-R, ObjectNet) go through `probekit.robustness.shifts`; ER only through
`probekit.robustness.effective_robustness`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from probekit.errors import UserError
from probekit.records import EvalPlan, Predictions
from probekit.zeroshot.head import HEAD_ID, ZeroShotHead, check_clip_features


@dataclass
class ZeroShotResult:
    """The step-0 record, the plan it was measured on, and the per-set predictions (OOD label space)."""

    record: dict
    plan: EvalPlan
    predictions: Predictions


def evaluate_zero_shot(head: ZeroShotHead, id_set: Any, ood_sets: list[Any] = (), *, baseline: Any = None,
                       cache_dir: Any = None) -> ZeroShotResult:
    """Accuracy on the ID set and every OOD set (FeatureSets), turned into the record by `probekit.records`.

    Every set is checked first (feature kind, backbone + weights, classes), so a bad set fails
    before any work. `baseline`: ``--baseline`` values (see `records.match_baselines`).
    """
    from probekit.records import class_subset_view, evaluation_records, match_baselines, with_baselines
    from probekit.robustness.shifts import check_label_space, evaluate_shift, predict_shift

    check_clip_features(head, id_set, f"ID set {id_set.name}")
    checked = []
    for fs in ood_sets:
        check_clip_features(head, fs, f"OOD set {fs.name}", expect_classes=False)
        n_ood_classes = len(fs.attrs.get("classes") or []) or int(fs.labels.max(initial=-1)) + 1
        shift = check_label_space(head.classes.label_space or id_set.attrs.get("label_space"), head.num_classes,
                                  fs.name, fs.attrs.get("label_space"), n_ood_classes)
        top = int(fs.labels.max(initial=-1))
        limit = shift.num_classes if shift is not None else head.num_classes
        if top >= limit:
            raise UserError(f"OOD set {fs.name} has label {top} but is scored over {limit} classes; "
                            f"its labels must be class indices of {shift.name if shift else 'the head'}")
        checked.append((fs, shift))
    baselines = match_baselines(baseline, [fs.name for fs in ood_sets], cache_dir=cache_dir)

    id_logits = head.logits(id_set.features)
    acc: dict[str, float] = {id_set.name: float((id_logits.argmax(1) == id_set.labels).mean())}
    predictions = Predictions(heads=[HEAD_ID], steps=[0])
    views = []
    for fs, shift in checked:
        logits = head.logits(fs.features)
        acc[fs.name] = float(evaluate_shift(logits, fs.labels, shift))
        predictions.sets[fs.name] = [np.asarray(predict_shift(logits, shift)).astype(np.int16)[None]]
        predictions.index[fs.name] = fs.index
        view = class_subset_view(fs.name, len(fs), shift, id_set.labels, id_set.name)
        if view.id_key:
            acc[view.id_key] = float(evaluate_shift(id_logits, id_set.labels, shift, on="id"))
        views.append(view)
    plan = with_baselines(EvalPlan(id_set.name, len(id_set), tuple(views)), baselines)
    record = evaluation_records(plan, acc, step=0, epoch=0.0, heads=[{"head": HEAD_ID}], mode="zero-shot",
                                extra={"logit_scale": head.logit_scale, "num_classes": head.num_classes})[0]
    return ZeroShotResult(record, plan, predictions)


def zero_shot_config(head: ZeroShotHead, result: ZeroShotResult, id_set: Any, ood_sets: list[Any], extra: dict | None = None) -> dict:
    """The run's config.json: what the head was built from and what it was scored on."""
    from probekit.records import plan_config

    return {
        "command": "zero-shot", "mode": "zero-shot", "model": head.model, "weight_id": head.weight_id,
        "classes": head.classes.source, "num_classes": head.num_classes, "num_templates": len(head.classes.templates),
        "templates": list(head.classes.templates), "text_cache_key": head.embeddings.key,
        "logit_scale": head.logit_scale, **plan_config(result.plan), "id_path": str(id_set.path) if id_set.path else None,
        "ood_paths": [str(fs.path) if fs.path else None for fs in ood_sets], **(extra or {}),
    }


def write_zero_shot_run(out: str | os.PathLike, head: ZeroShotHead, id_set: Any, ood_sets: list[Any], *,
                        baseline: Any = None, overwrite: bool = False, config_extra: dict | None = None,
                        cache_dir: Any = None) -> ZeroShotResult:
    """Evaluate and write the run folder (config.json, log.jsonl with one record, predictions.npz, summary.json)."""
    from probekit.records import summarise_run, write_predictions
    from probekit.runlog import RunWriter

    start = time.perf_counter()
    result = evaluate_zero_shot(head, id_set, ood_sets, baseline=baseline, cache_dir=cache_dir)
    config = zero_shot_config(head, result, id_set, ood_sets, config_extra)
    with RunWriter(out, config, overwrite=overwrite) as writer:
        writer.log(result.record)
        if result.predictions.sets:
            write_predictions(writer.dir, result.predictions)
        writer.finish(summarise_run([result.record], result.plan, mode="zero-shot",
                                    extra={"text_cache_hit": head.cache_hit, "seconds": round(time.perf_counter() - start, 3)}))
    return result
