"""Score a zero-shot head on cached image features and log it like any other head.

The record is the one `train-head` writes (step 0, ``head: "zero-shot"``), so a zero-shot run
sits on the same ID-vs-OOD plot and ER table as the heads trained from it. Class-subset
shifts (ImageNet-R, ObjectNet) go through `probekit.robustness.shifts`; ER only through
`probekit.robustness.effective_robustness`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from probekit.errors import UserError
from probekit.zeroshot.head import HEAD_ID, ZeroShotHead, check_features


@dataclass
class ZeroShotResult:
    """The step-0 record, plus the per-set predictions (OOD label space) for `predictions.npz`."""

    record: dict
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    index: dict[str, np.ndarray] = field(default_factory=dict)


def evaluate_zero_shot(head: ZeroShotHead, id_set: Any, ood_sets: list[Any] = (), *, baseline: Any = None) -> ZeroShotResult:
    """Accuracy on the ID set and every OOD set (FeatureSets), ER where `baseline` applies.

    Every set is checked first (feature kind, backbone + weights, classes), so a bad set fails
    before any work. Record keys follow docs/architecture.md: ``acc_id`` (full label space),
    ``acc_ood``, ``er``, and for class-subset shifts ``acc_id_subset`` / ``id_eval``.
    """
    from probekit.robustness import effective_robustness
    from probekit.robustness.shifts import check_label_space, evaluate_shift, predict_shift

    check_features(head, id_set, f"ID set {id_set.name}")
    plans = []
    for fs in ood_sets:
        check_features(head, fs, f"OOD set {fs.name}", expect_classes=False)
        n_ood_classes = len(fs.attrs.get("classes") or []) or int(fs.labels.max(initial=-1)) + 1
        shift = check_label_space(head.classes.label_space or id_set.attrs.get("label_space"), head.num_classes,
                                  fs.name, fs.attrs.get("label_space"), n_ood_classes)
        top = int(fs.labels.max(initial=-1))
        limit = shift.num_classes if shift is not None else head.num_classes
        if top >= limit:
            raise UserError(f"OOD set {fs.name} has label {top} but is scored over {limit} classes; "
                            f"its labels must be class indices of {shift.name if shift else 'the head'}")
        plans.append((fs, shift))
    if baseline is not None and ood_sets and not any(baseline.applies_to(fs.name) for fs in ood_sets):
        raise UserError(f"baseline {baseline.name} is fitted for OOD set {baseline.ood_set}, which is not among "
                        f"--ood {' '.join(fs.name for fs in ood_sets)}; pass the baseline of one of these sets")

    id_logits = head.logits(id_set.features)
    acc_id = float((id_logits.argmax(1) == id_set.labels).mean())
    record: dict[str, Any] = {
        "step": 0, "epoch": 0.0, "head": HEAD_ID, "mode": "zero-shot", "loss": None,
        "acc_id": acc_id, "acc_ood": {}, "id_set": id_set.name,
        "logit_scale": head.logit_scale, "num_classes": head.num_classes,
    }
    if baseline is not None:
        record["er"] = {}
    predictions, index = {}, {}
    clipped = False
    for fs, shift in plans:
        logits = head.logits(fs.features)
        acc = float(evaluate_shift(logits, fs.labels, shift))
        record["acc_ood"][fs.name] = acc
        predictions[fs.name] = np.asarray(predict_shift(logits, shift)).astype(np.int16)
        index[fs.name] = fs.index
        pair_id, n_id = acc_id, len(id_set)
        if shift is not None:
            pair_id = float(evaluate_shift(id_logits, id_set.labels, shift, on="id"))
            n_id = int(shift.id_mask(id_set.labels).sum())
            record.setdefault("acc_id_subset", {})[fs.name] = pair_id
            record.setdefault("id_eval", {})[fs.name] = shift.id_eval
        if baseline is not None and baseline.applies_to(fs.name):
            er, was_clipped = effective_robustness(pair_id, acc, baseline, n_id=n_id, n_ood=len(fs), return_clipped=True)
            record["er"][fs.name] = float(er)
            clipped = clipped or bool(was_clipped)
    if clipped:
        record["clipped"] = True
    return ZeroShotResult(record, predictions, index)


def zero_shot_config(head: ZeroShotHead, id_set: Any, ood_sets: list[Any], baseline: Any, extra: dict | None = None) -> dict:
    """The run's config.json: what the head was built from and what it was scored on."""
    return {
        "command": "zero-shot", "mode": "zero-shot", "model": head.model, "weight_id": head.weight_id,
        "classes": head.classes.source, "num_classes": head.num_classes, "num_templates": len(head.classes.templates),
        "templates": list(head.classes.templates), "text_cache_key": head.embeddings.key,
        "logit_scale": head.logit_scale, "id": id_set.name, "id_path": str(id_set.path) if id_set.path else None,
        "ood": [fs.name for fs in ood_sets], "ood_paths": [str(fs.path) if fs.path else None for fs in ood_sets],
        "baseline": getattr(baseline, "name", None), **(extra or {}),
    }


def write_zero_shot_run(out: str | os.PathLike, head: ZeroShotHead, id_set: Any, ood_sets: list[Any], *,
                        baseline: Any = None, overwrite: bool = False, config_extra: dict | None = None) -> ZeroShotResult:
    """Evaluate and write the run folder (config.json, log.jsonl with one record, predictions.npz, summary.json)."""
    import io

    from probekit.atomic import atomic_write_bytes
    from probekit.runlog import RunWriter

    start = time.perf_counter()
    result = evaluate_zero_shot(head, id_set, ood_sets, baseline=baseline)
    config = zero_shot_config(head, id_set, ood_sets, baseline, config_extra)
    with RunWriter(out, config, overwrite=overwrite) as writer:
        writer.log(result.record)
        if result.predictions:
            arrays: dict[str, np.ndarray] = {"steps": np.array([0], dtype=np.int64), "heads": np.array([HEAD_ID])}
            for name, pred in result.predictions.items():
                arrays[name] = pred[None, None, :]
                arrays[name + "__index"] = np.asarray(result.index[name], dtype=np.int64)
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            atomic_write_bytes(writer.dir / "predictions.npz", buf.getvalue())
        summary = {k: result.record[k] for k in ("acc_id", "acc_ood", "er", "acc_id_subset", "id_eval") if k in result.record}
        writer.finish({"head": HEAD_ID, "heads": 1, "records": 1, "text_cache_hit": head.cache_hit,
                       "seconds": round(time.perf_counter() - start, 3), **summary})
    return result
