"""Class-balanced, seeded subsets of a labelled set: the paper's data-property ablations.

Specs (combine with commas only where noted):
  per-class=N            N examples of every class (size ablation)
  classes=K              all examples of K classes drawn with the seed (diversity ablation)
  classes=K,per-class=N  N examples of each of K drawn classes
  cscore=easiest:N       N in total, N/num_classes per class, highest C-score first (C-score high = easy)
  cscore=hardest:N       ... lowest C-score first
  cscore=random:N        ... drawn with the seed (the control for the two above)
C-scores are from Jiang et al. 2020 (`load_cscores`). Every selector returns sorted row indices.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np

from probekit.errors import UserError

log = logging.getLogger(__name__)
SPEC_HELP = ("per-class=N, classes=K, classes=K,per-class=N, or cscore=easiest:N|hardest:N|random:N")


def warn_if_one_class(labels, what: str) -> bool:
    """Warn when the training rows hold a single class: every head then learns to predict it (a run, but a useless one)."""
    present = np.unique(np.asarray(labels))
    if len(present) == 1:
        log.warning(f"{what} holds only class {int(present[0])} ({len(labels)} rows): every head will learn to predict "
                    "that class; check the data or --subset")
    return len(present) == 1


def _positive_int(key: str, text: str, spec: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"subset {spec!r}: {key} must be a whole number, got {text!r}") from None
    if value <= 0:
        raise UserError(f"subset {spec!r}: {key} must be positive, got {value}")
    return value


def parse_subset_spec(spec: str) -> dict:
    """`"classes=5,per-class=20"` -> `{"classes": 5, "per-class": 20}`; cscore -> `{"cscore": (mode, N)}`."""
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise UserError(f"empty subset spec; use {SPEC_HELP}")
    out: dict = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep:
            raise UserError(f"subset {spec!r}: {part!r} is not KEY=VALUE; use {SPEC_HELP}")
        if key in out:
            raise UserError(f"subset {spec!r}: {key} given twice")
        if key in ("per-class", "classes"):
            out[key] = _positive_int(key, value.strip(), spec)
        elif key == "cscore":
            mode, sep2, n = value.strip().partition(":")
            if mode not in ("easiest", "hardest", "random") or not sep2:
                raise UserError(f"subset {spec!r}: use cscore=easiest:N, cscore=hardest:N or cscore=random:N")
            out[key] = (mode, _positive_int("cscore N", n.strip(), spec))
        else:
            raise UserError(f"subset {spec!r}: unknown key {key!r}; use {SPEC_HELP}")
    if "cscore" in out and len(out) > 1:
        raise UserError(f"subset {spec!r}: cscore=... cannot be combined with other keys")
    return out


def select_subset(labels, spec: str, *, seed: int = 0, cscores=None) -> np.ndarray:
    """Sorted row indices of the class-balanced subset `spec` of `labels`, drawn with `seed`.

    The same (labels, spec, seed) always gives the same rows; `cscores` (aligned with
    `labels`, see `load_cscores`) is needed for `cscore=easiest|hardest:N`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise UserError(f"subset {spec!r}: no labels to select from")
    opts = parse_subset_spec(spec)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    members = {c: np.flatnonzero(labels == c) for c in classes.tolist()}

    if "cscore" in opts:
        mode, total = opts["cscore"]
        return _by_cscore(labels, members, mode, total, rng, cscores, spec)

    if "classes" in opts:
        k = opts["classes"]
        if k > len(classes):
            raise UserError(f"subset {spec!r}: classes={k} but the data has only {len(classes)} classes")
        classes = np.sort(rng.choice(classes, size=k, replace=False))
    chosen = [members[c] for c in classes.tolist()]
    if "per-class" in opts:
        n = opts["per-class"]
        _check_fits(n, {c: len(members[c]) for c in classes.tolist()}, spec)
        chosen = [rng.choice(rows, size=n, replace=False) for rows in chosen]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _check_fits(n: int, sizes: dict, spec: str) -> None:
    smallest = min(sizes, key=lambda c: sizes[c])
    if n > sizes[smallest]:
        raise UserError(f"subset {spec!r}: asks for {n} examples per class but class {smallest} has only "
                        f"{sizes[smallest]}; use at most {sizes[smallest]} per class")


def _by_cscore(labels, members, mode, total, rng, cscores, spec) -> np.ndarray:
    k = len(members)
    if total % k:
        raise UserError(f"subset {spec!r}: N={total} is not a multiple of the {k} classes; "
                        f"use a multiple of {k} so every class gets N/{k}")
    per = total // k
    _check_fits(per, {c: len(r) for c, r in members.items()}, spec)
    if mode != "random":
        if cscores is None:
            raise UserError(f"subset {spec!r} needs a C-score file (--cscores PATH, e.g. cifar10-cscores-orig-order.npz)")
        scores = np.asarray(cscores, dtype=np.float64)
        if scores.shape != labels.shape:
            raise UserError(f"subset {spec!r}: {len(scores)} C-scores for {len(labels)} examples")
        if not np.isfinite(scores).all():
            raise UserError(f"subset {spec!r}: {int((~np.isfinite(scores)).sum())} C-scores are NaN or infinite")
    chosen = []
    for rows in members.values():
        if mode == "random":
            chosen.append(rng.choice(rows, size=per, replace=False))
            continue
        s = scores[rows]
        # High C-score = easy. Ties broken by row index so the result never depends on sort stability.
        order = np.lexsort((rows, -s)) if mode == "easiest" else np.lexsort((rows, s))
        chosen.append(rows[order[:per]])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _npz_array(path: Path, key: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            return z[key]
    except ValueError:
        # Object arrays of file names are pickles: read them with the plain-data unpickler, never pickle.load.
        from probekit import safe_pickle

        try:
            return safe_pickle.npz_array(path, key)
        except pickle.UnpicklingError as e:
            raise UserError(f"C-score file {path} holds code, not data, in {key!r} ({e}); use the published .npz") from None


def load_cscores(path: str | os.PathLike, labels, *, filenames=None) -> np.ndarray:
    """C-scores aligned with `labels` (float64), refusing a file that does not match the data.

    CIFAR-10 (`cifar10-cscores-orig-order.npz`, keys `labels`, `scores`) is in training-set
    order: its labels must equal `labels`. A file with `filenames` and `scores` (ImageNet's)
    is matched by base file name against `filenames` (one per row of `labels`).
    """
    path = Path(path).expanduser()
    labels = np.asarray(labels)
    if not path.is_file():
        raise UserError(f"C-score file {path} not found; download it from https://pluskid.github.io/structural-regularity/")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"C-score file {path} is not a readable .npz ({str(e)[:80]}); pass the published .npz or "
                        f"one written by `probekit cscore`") from None
    if not isinstance(z, np.lib.npyio.NpzFile):  # a single .npy array: no keys to tell scores from labels
        raise UserError(f"C-score file {path} is a single .npy array, not an .npz with 'scores' (and 'labels'); "
                        f"pass the published .npz or one written by `probekit cscore`")
    with z:
        keys = set(z.files)
    if "scores" not in keys:
        raise UserError(f"C-score file {path} has no 'scores' array (keys: {sorted(keys)})")
    scores = _npz_array(path, "scores").astype(np.float64).ravel()
    file_labels = _npz_array(path, "labels").ravel() if "labels" in keys else None

    if filenames is not None and "filenames" in keys:
        names = [_basename(n) for n in _npz_array(path, "filenames").ravel()]
        where = {n: i for i, n in enumerate(names)}
        wanted = [_basename(n) for n in filenames]
        if len(wanted) != len(labels):
            raise UserError(f"{len(wanted)} file names for {len(labels)} labels")
        absent = [n for n in wanted if n not in where]
        if absent:
            raise UserError(f"C-score file {path} has no score for {len(absent)} of {len(wanted)} images "
                            f"(e.g. {absent[0]!r}); is it the file for this dataset and split?")
        rows = np.array([where[n] for n in wanted], dtype=np.int64)
        scores = scores[rows]
        file_labels = file_labels[rows] if file_labels is not None else None
    elif "filenames" in keys and file_labels is None:
        raise UserError(f"C-score file {path} is keyed by file name; pass the dataset's file names to match it")

    if len(scores) != len(labels):
        raise UserError(f"C-score file {path} has {len(scores)} scores but the features have {len(labels)} rows; "
                        f"it must cover the training set in its original order")
    if file_labels is not None:
        differ = int((np.asarray(file_labels).astype(np.int64) != labels.astype(np.int64)).sum())
        if differ:
            raise UserError(f"C-score file {path} disagrees with the features' labels at {differ} of {len(labels)} "
                            f"rows; it must be in the features' (original training-set) order")
    return scores


def _basename(name) -> str:
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return os.path.basename(str(name).replace("\\", "/"))
