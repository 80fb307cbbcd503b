"""Analyses of saved predictions against the shipped testbeds.

`unique_correct`: the paper observes that models with effective robustness classify
correctly about 10 % of the CIFAR-10.1 examples that no testbed model gets right. Here:
the examples none of the 30 shipped models (Recht et al. 2018) classify correctly, and
the fraction of them each head of a run gets right at each saved evaluation.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probekit.errors import UserError
from probekit.names import dataset_name

PREDICTIONS_FILE = "predictions.npz"
CIFAR101_SETS = {"v6": "cifar10.1", "v4": "cifar10.1-v4"}


def hard_examples(version: str = "v6") -> np.ndarray:
    """Indices of the CIFAR-10.1 images that none of the 30 shipped models classifies correctly."""
    from probekit.robustness.testbeds import cifar101_correct

    correct = np.stack(list(cifar101_correct(version).values()))
    return np.flatnonzero(~correct.any(axis=0))


@dataclass
class UniqueCorrect:
    version: str
    ood_set: str
    n_examples: int          # CIFAR-10.1 images the run predicted
    n_hard: int              # of those, how many no testbed model gets right
    steps: list[int]
    heads: list[str]
    fraction: np.ndarray     # [T, H] fraction of the hard examples each head gets right
    accuracy: np.ndarray     # [T, H] accuracy on all predicted examples, for reference
    rows: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"analysis": "unique-correct", "version": self.version, "ood_set": self.ood_set, "n_examples": self.n_examples,
                "n_hard": self.n_hard, "rows": self.rows}

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["step", "head", "hard_correct", "n_hard", "fraction_hard_correct", "accuracy"], lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        return buf.getvalue()

    def table(self) -> str:
        """Per evaluation step: mean / min / max over heads of the fraction of hard examples right."""
        lines = [f"CIFAR-10.1 {self.version} ({self.ood_set}): {self.n_hard} of {self.n_examples} examples are misclassified by all 30 testbed models",
                 f"{'step':>8}  {'mean':>7}  {'min':>7}  {'max':>7}  {'acc(all)':>8}   fraction of those the run gets right, over {len(self.heads)} head(s)"]
        for t, step in enumerate(self.steps):
            f = self.fraction[t]
            lines.append(f"{step:>8}  {f.mean():>7.1%}  {f.min():>7.1%}  {f.max():>7.1%}  {self.accuracy[t].mean():>8.1%}")
        return "\n".join(lines)


def _find_set(keys: list[str], version: str, ood_set: str | None, path: Path) -> str:
    sets = [k for k in keys if k not in ("steps", "heads") and not k.endswith("__index")]
    if ood_set:
        if ood_set not in sets:
            raise UserError(f"{path} has no predictions for {ood_set!r}; it has: {', '.join(sets) or 'none'}")
        return ood_set
    want = CIFAR101_SETS[version]
    matches = [k for k in sets if dataset_name(k) == want]
    if not matches:
        raise UserError(f"{path} has no CIFAR-10.1 {version} predictions (a set named {want}:SPLIT); it has: "
                        f"{', '.join(sets) or 'none'}; train with --ood {want}:test and saved predictions, or pass --ood-set")
    return matches[0]


def unique_correct(run_dir: str | os.PathLike, *, version: str = "v6", ood_set: str | None = None) -> UniqueCorrect:
    """Fraction of the no-testbed-model-gets-it-right CIFAR-10.1 examples each head gets right, per step."""
    from probekit.robustness.testbeds import cifar101_labels

    if version not in CIFAR101_SETS:
        raise UserError(f"unknown CIFAR-10.1 version {version!r}; use v6 or v4")
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.exists():
        raise UserError(f"{run_dir} has no {PREDICTIONS_FILE}; train with saved predictions on CIFAR-10.1 first")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise UserError(f"{path} cannot be read as a .npz of predictions ({e})") from None
    for key in ("steps", "heads"):
        if key not in data:
            raise UserError(f"{path} lacks the {key!r} array; see docs/architecture.md (saved predictions)")
    name = _find_set(list(data), version, ood_set, path)
    preds = data[name]
    steps, heads = data["steps"].astype(np.int64), [str(h) for h in data["heads"]]
    index = data.get(f"{name}__index")
    if index is None:
        raise UserError(f"{path} lacks {name}__index (dataset index of each row); see docs/architecture.md (saved predictions)")
    labels_all = cifar101_labels(version)
    if preds.ndim != 3 or preds.shape[:2] != (len(steps), len(heads)) or preds.shape[2] != len(index):
        raise UserError(f"{path}: {name} has shape {preds.shape}, expected [steps={len(steps)}, heads={len(heads)}, rows={len(index)}]")
    if len(index) and (index.min() < 0 or index.max() >= len(labels_all)):
        raise UserError(f"{path}: {name}__index points outside CIFAR-10.1 {version} ({len(labels_all)} images); is it the right version?")
    labels = labels_all[index]
    hard = np.isin(index, hard_examples(version))
    correct = preds == labels[None, None, :]
    n_hard = int(hard.sum())
    fraction = correct[:, :, hard].mean(axis=2) if n_hard else np.full(correct.shape[:2], np.nan)
    accuracy = correct.mean(axis=2)
    rows = [{"step": int(s), "head": h, "hard_correct": int(correct[t, j, hard].sum()), "n_hard": n_hard,
             "fraction_hard_correct": float(fraction[t, j]), "accuracy": float(accuracy[t, j])}
            for t, s in enumerate(steps) for j, h in enumerate(heads)]
    return UniqueCorrect(version, name, int(len(index)), n_hard, [int(s) for s in steps], heads, fraction, accuracy, rows)
