"""The testbeds shipped with probekit and the named baselines fitted on them.

ImageNet → ImageNetV2 / ObjectNet / ImageNet-R: per-model accuracies of the Taori et
al. testbed; the baseline is fitted on the rows marked ``taori_line_fit``, as the
testbed's own plots do. CIFAR-10 → CIFAR-10.1: per-image predictions of 30 models
(Recht et al. 2018); their CIFAR-10 accuracies need the CIFAR-10 test labels, so
that baseline is built once (`build_cifar10_baseline`) and stored in the cache folder.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from probekit.errors import UserError, unknown_name
from probekit.paths import cache_dir as resolve_cache_dir
from probekit.paths import input_file
from probekit.robustness.baseline import Baseline, fit_baseline
from probekit.robustness.shipped import shipped_path
from probekit.robustness.transforms import check_accuracies

IMAGENET_TESTBED_SOURCE = "modestyachts/imagenet-testbed@0170eec658d664289d9f61de8f90f967f49abca0 (Taori et al. 2020)"
CIFAR_TESTBED_SOURCE = "modestyachts/CIFAR-10.1@d9982abb0bfc4846b8d13a11e66b887d946205d0 (Recht et al. 2018), 30 models"
CIFAR10_TEST_SIZE = 10_000


@dataclass(frozen=True)
class NamedTestbed:
    name: str
    id_set: str
    ood_set: str
    csv: str | None = None          # shipped per-model accuracies (percent)
    id_eval: str | None = None      # how the ID accuracy was measured for a class-subset shift
    cifar_version: str | None = None  # built from shipped predictions + the user's CIFAR-10 labels


NAMED: dict[str, NamedTestbed] = {t.name: t for t in (
    NamedTestbed("imagenet-imagenetv2", "imagenet:val", "imagenetv2", csv="imagenet_to_imagenetv2_testbed.csv"),
    NamedTestbed("imagenet-objectnet", "imagenet:val", "objectnet", csv="imagenet_to_objectnet_testbed.csv",
                 id_eval="val-on-objectnet-classes"),
    NamedTestbed("imagenet-imagenet-r", "imagenet:val", "imagenet-r", csv="imagenet_to_imagenet_r_testbed.csv",
                 id_eval="val-on-imagenet-r-classes"),
    NamedTestbed("cifar10-cifar10.1", "cifar10:test", "cifar10.1:test", cifar_version="v6"),
    NamedTestbed("cifar10-cifar10.1-v4", "cifar10:test", "cifar10.1-v4:test", cifar_version="v4"),
)}


def list_baselines() -> list[str]:
    return list(NAMED)


@dataclass
class ModelRow:
    model: str
    id: float   # fraction
    ood: float  # fraction
    model_type: str = ""
    line_fit: bool = True


def read_testbed_csv(path: str | os.PathLike) -> list[ModelRow]:
    """Rows of a testbed CSV as fractions.

    Two layouts: the shipped one (``model, id_top1, ood_top1`` in percent, with
    ``model_type`` and ``taori_line_fit``) and a user's (``model, id, ood`` as fractions;
    percentages are refused with a hint).
    """
    path = input_file(path, "testbed CSV", hint="pass a CSV with columns model,id,ood")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's CSV export starts with a BOM
            table = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"testbed CSV {path} cannot be read as CSV ({e})") from None
    fields = [c.strip() for c in table[0]] if table else []
    rows = []
    for i, cells in enumerate(table[1:], start=2):
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) != len(fields):
            raise UserError(f"{path} line {i} has {len(cells)} fields but the header has {len(fields)} "
                            f"({','.join(fields)}); fix the row")
        rows.append({k: v.strip() for k, v in zip(fields, cells)})
    shipped = {"model", "id_top1", "ood_top1"} <= set(fields)
    if not shipped and not {"model", "id", "ood"} <= set(fields):
        raise UserError(f"testbed CSV {path} needs columns model,id,ood (fractions); it has {','.join(fields) or 'none'}")
    id_col, ood_col, scale = ("id_top1", "ood_top1", 100.0) if shipped else ("id", "ood", 1.0)
    out = []
    for i, r in enumerate(rows, start=2):
        if not r.get(id_col) or not r.get(ood_col):
            continue  # e.g. the CIFAR-10 testbed's empty id_top1 before the labels are known
        try:
            a, b = float(r[id_col]) / scale, float(r[ood_col]) / scale
        except ValueError:
            raise UserError(f"{path} line {i}: {id_col}/{ood_col} must be numbers, got {r[id_col]!r}, {r[ood_col]!r}") from None
        check_accuracies([a, b], f"{path} line {i} accuracy")
        out.append(ModelRow(r["model"], a, b, r.get("model_type", ""), r.get("taori_line_fit", "1") not in ("0", "")))
    return out


def fit_csv(path: str | os.PathLike, transform: str = "logit", *, bootstrap: int = 0, seed: int = 0,
            line_fit_only: bool = True, name: str | None = None, **meta: Any) -> Baseline:
    """Fit a baseline on a testbed CSV (all rows, or the ``taori_line_fit`` ones of a shipped CSV)."""
    rows = [r for r in read_testbed_csv(path) if r.line_fit or not line_fit_only]
    return fit_baseline([r.id for r in rows], [r.ood for r in rows], transform, bootstrap=bootstrap, seed=seed,
                        names=[r.model for r in rows], name=name or Path(path).stem, source=meta.pop("source", str(path)), **meta)


def load_testbed_points(name_or_csv: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> list[tuple[str, float, float]]:
    """(model, id, ood) fractions of every model of a named testbed (all rows, not only the fit) or a CSV."""
    named = NAMED.get(str(name_or_csv))
    if named and named.csv:
        return [(r.model, r.id, r.ood) for r in read_testbed_csv(shipped_path(named.csv))]
    if named:
        return list(load_baseline(named.name, cache_dir=cache_dir).points)
    return [(r.model, r.id, r.ood) for r in read_testbed_csv(name_or_csv)]


# --- CIFAR-10 -> CIFAR-10.1 -------------------------------------------------------------------

@lru_cache(maxsize=1)
def cifar10_predictions() -> dict[tuple[str, str], np.ndarray]:
    """{(model, split): predicted classes} of the 30 shipped models; split 'original' | 'v4' | 'v6'.

    The ``__true_labels__`` rows hold the CIFAR-10.1 v4 / v6 labels.
    """
    out = {}
    with open(shipped_path("cifar10_recht2018_predictions.csv"), newline="") as f:
        for r in csv.DictReader(f):
            digits = np.frombuffer(r["predictions"].encode("ascii"), dtype=np.uint8) - ord("0")
            if len(digits) != int(r["n"]):
                raise RuntimeError(f"shipped testbed damaged: {r['model']}/{r['split']} has {len(digits)} predictions, expected {r['n']}")
            out[(r["model"], r["split"])] = digits.astype(np.int64)
    return out


def cifar10_models() -> list[str]:
    return sorted({m for m, s in cifar10_predictions() if s == "original"})


def cifar101_labels(version: str = "v6") -> np.ndarray:
    """CIFAR-10.1 labels (v6: 2,000 images, v4: 2,021), in the dataset's file order."""
    if version not in ("v4", "v6"):
        raise UserError(f"unknown CIFAR-10.1 version {version!r}; use v6 or v4")
    return cifar10_predictions()[("__true_labels__", version)]


def cifar101_correct(version: str = "v6") -> dict[str, np.ndarray]:
    """{model: bool per CIFAR-10.1 image} for the 30 shipped models."""
    labels = cifar101_labels(version)
    return {m: cifar10_predictions()[(m, version)] == labels for m in cifar10_models()}


def baseline_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    return resolve_cache_dir(cache_dir) / "baselines" / f"{name}.json"


def build_cifar10_baseline(labels: np.ndarray | str | os.PathLike, *, name: str = "cifar10-cifar10.1",
                           cache_dir: str | os.PathLike | None = None, save: bool = True) -> tuple[Baseline, Path | None]:
    """Complete the CIFAR-10 testbed with the CIFAR-10 test labels, fit and store the baseline.

    `labels`: an array or a ``.npy`` file, from the caller (the CLI reads them from the
    CIFAR-10 test split, `probekit.datasets.cifar.cifar10_test_labels`): robustness reads no
    dataset. Labels that most shipped models disagree with are refused: they are not the
    CIFAR-10 test labels in test-batch order.
    """
    spec = NAMED.get(name)
    if spec is None or spec.cifar_version is None:
        raise unknown_name("buildable baseline", name, [n for n, t in NAMED.items() if t.cifar_version])
    if isinstance(labels, (str, os.PathLike)):
        try:
            labels = np.load(labels, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read labels file {labels} as a .npy array ({e}); save the CIFAR-10 test labels with numpy.save") from None
    labels = np.asarray(labels).ravel()
    if labels.shape != (CIFAR10_TEST_SIZE,) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 9:
        raise UserError(f"CIFAR-10 test labels must be {CIFAR10_TEST_SIZE} integers in 0..9 (test-batch order), got shape {labels.shape} dtype {labels.dtype}")
    preds = cifar10_predictions()
    models = cifar10_models()
    id_acc = np.array([(preds[(m, "original")] == labels).mean() for m in models])
    if np.median(id_acc) < 0.5:
        raise UserError(f"the shipped CIFAR-10 models get a median {np.median(id_acc):.1%} on these labels (published: 75-97%); "
                        "they are not the CIFAR-10 test labels in test-batch order")
    correct = cifar101_correct(spec.cifar_version)
    ood_acc = np.array([correct[m].mean() for m in models])
    baseline = fit_baseline(id_acc, ood_acc, "logit", names=models, name=name,
                            source=f"{CIFAR_TESTBED_SOURCE}; CIFAR-10.1 {spec.cifar_version} from shipped predictions, "
                                   "CIFAR-10 test accuracy from the user's CIFAR-10 test labels",
                            id_set=spec.id_set, ood_set=spec.ood_set, n_id=CIFAR10_TEST_SIZE, n_ood=len(cifar101_labels(spec.cifar_version)))
    path = baseline.save(baseline_path(name, cache_dir)) if save else None
    return baseline, path


# --- loading ----------------------------------------------------------------------------------

def _looks_like_path(text: str) -> bool:
    return text.endswith(".json") or os.sep in text or "/" in text or Path(text).exists()


def load_baseline(name_or_path: str | os.PathLike, *, transform: str | None = None,
                  cache_dir: str | os.PathLike | None = None) -> Baseline:
    """A named baseline (`list_baselines`) or a JSON fit file written by `Baseline.save`.

    `transform` None means: logit for a named baseline, the file's own transform for a
    file. A stored fit asked for with another transform is refitted from its points.
    """
    text = os.fspath(name_or_path)
    if text in NAMED:
        spec = NAMED[text]
        if spec.csv:
            return _imagenet_baseline(text, transform or "logit")
        transform = transform or "logit"
        path = baseline_path(text, cache_dir)
        if not path.exists():
            raise UserError(f"baseline {text!r} is not built yet ({path} missing); place CIFAR-10 under the data root and run "
                            f"`probekit baseline build {text}` (or `--labels FILE.npy`)")
        b = Baseline.load(path)
    elif _looks_like_path(text):
        b = Baseline.load(text)
    else:
        raise unknown_name("baseline", text, NAMED, hint="probekit baseline list")
    if transform and b.transform != transform:
        if len(b.points) < 3:
            raise UserError(f"baseline {text} was fitted with the {b.transform} transform and stores no points to refit "
                            f"with {transform}; use --transform {b.transform} or refit it")
        b = refit(b, transform)
    return b


def refit(b: Baseline, transform: str) -> Baseline:
    """The same testbed points fitted with another transform."""
    names, x, y = zip(*b.points)
    return fit_baseline(x, y, transform, bootstrap=b.bootstrap, names=list(names), name=b.name, source=b.source,
                        id_set=b.id_set, ood_set=b.ood_set, id_eval=b.id_eval)


@lru_cache(maxsize=None)
def _imagenet_baseline_cached(name: str, transform: str) -> Baseline:
    spec = NAMED[name]
    rows = read_testbed_csv(shipped_path(spec.csv))
    fit_rows = [r for r in rows if r.line_fit]
    return fit_baseline([r.id for r in fit_rows], [r.ood for r in fit_rows], transform, names=[r.model for r in fit_rows],
                        name=name, source=f"{spec.csv}: {len(fit_rows)} of {len(rows)} models (taori_line_fit == 1); "
                                          f"{IMAGENET_TESTBED_SOURCE}",
                        id_set=spec.id_set, ood_set=spec.ood_set, id_eval=spec.id_eval)


def _imagenet_baseline(name: str, transform: str) -> Baseline:
    import copy

    return copy.deepcopy(_imagenet_baseline_cached(name, transform))
