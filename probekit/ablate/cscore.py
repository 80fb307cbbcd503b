"""C-scores estimated from cached features (Jiang et al. 2021, "Characterizing Structural Regularities of Labeled Data").

The C-score of a training example is the expected accuracy on it of a model trained on a
random subset of the *rest* of the data, averaged over subset sizes. Jiang et al. estimate it
with thousands of networks; here the model is a linear head on frozen features, so many heads,
each on its own random subset (``SGDHeads.fit(head_rows=...)``), train in one batched pass.
Every example's score is the fraction of the heads that did not see it which classify it
correctly. The estimate's stability is the Spearman ρ between two whole estimates made with
different seeds (`stability_seed`: other random subsets, other head initialisations and data
orders; its heads train in the same batched pass, so it costs as many heads again), and, from one
estimate alone, its split-half rank correlation: the Spearman ρ between the scores of the even
and the odd heads (two independent estimates of half the size, so it understates the stability
of the whole). The scores written are those of `seed` alone.

The output is the `.npz` the `--cscores` option reads: ``scores`` and ``labels`` in the feature
file's row order (plus ``index``, the source-dataset index of each row, and how it was made).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probekit.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class CScores:
    """An estimate: per training row its score, label, source index and how many heads held it out."""

    scores: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    held_out: np.ndarray
    ratios: list[float]
    n_heads: int
    split_half_spearman: float
    train: str
    seed: int = 0
    stability_seed: int | None = None      # the second estimate's seed (None: not made)
    two_seed_spearman: float | None = None  # Spearman ρ between the estimates of `seed` and `stability_seed`
    compare_spearman: float | None = None   # Spearman ρ with the `compare` reference file

    def arrays(self) -> dict[str, np.ndarray]:
        extra = {} if self.stability_seed is None else {"stability_seed": np.asarray(self.stability_seed, np.int64),
                                                        "two_seed_spearman": np.asarray(self.two_seed_spearman)}
        return {"scores": self.scores, "labels": self.labels, "index": self.index, "held_out": self.held_out,
                "ratios": np.asarray(self.ratios, np.float64), "n_heads": np.asarray(self.n_heads),
                "seed": np.asarray(self.seed, np.int64), "split_half_spearman": np.asarray(self.split_half_spearman), **extra}


def random_subsets(n: int, ratios: Sequence[float], heads_per_ratio: int, seed: int) -> list[np.ndarray]:
    """`heads_per_ratio` uniform random subsets of ``round(r * n)`` rows per ratio r, every row left out of at least one.

    A row that every subset happened to draw is dropped from the largest subset that holds it,
    so every example gets a held-out score."""
    rng = np.random.default_rng(seed)
    subsets = [np.sort(rng.choice(n, max(1, min(n - 1, round(r * n))), replace=False)) for r in ratios for _ in range(heads_per_ratio)]
    member = np.zeros((len(subsets), n), dtype=bool)
    for h, rows in enumerate(subsets):
        member[h, rows] = True
    for i in np.flatnonzero(member.all(0)):
        h = int(np.argmax(member.sum(1)))
        member[h, i] = False
    return [np.flatnonzero(m) for m in member]


def estimate_cscores(train, *, model: str | None = None, cache_dir=None, weights: str = "default", image_size: int | None = None,
                     feature: str | None = None, ratios: Sequence[float] = (0.25, 0.5, 0.75), heads_per_ratio: int = 8,
                     seed: int = 0, stability_seed: int | None = None, compare=None, lr: float = 0.1, batch_size: int = 128,
                     epochs: float = 20, momentum: float = 0.9, weight_decay: float = 0.0, device=None,
                     storage_dtype: str = "float32", progress: bool = True) -> CScores:
    """Estimate the C-score of every row of the training features `train` (``dataset:split``, ``.h5`` or FeatureSet).

    `stability_seed`: also make a second, independent estimate with this seed (its heads in the same
    pass) and report the Spearman ρ between the two (``two_seed_spearman``); the scores are `seed`'s.
    `compare`: a C-score file of the same rows (e.g. Jiang et al.'s CIFAR-10), read and checked
    before any training; ``compare_spearman`` is the rank correlation with it."""
    import torch
    from scipy.stats import spearmanr
    from probekit.progress import progress_bar

    from probekit.heads.evaluation import predict_heads
    from probekit.runtime import choose_device
    from probekit.heads.run import _check_finite, _load
    from probekit.heads.sgd import SGDHeads, head_steps

    ratios = [float(r) for r in ratios]
    bad = [r for r in ratios if not 0.0 < r < 1.0]
    if not ratios or bad:
        raise UserError(f"--ratios must be fractions strictly between 0 and 1 (the share of the rest each head trains on), got {bad or ratios}")
    if len(set(ratios)) != len(ratios):
        raise UserError(f"--ratios repeats a value ({ratios}); give each once")
    if int(heads_per_ratio) != heads_per_ratio or heads_per_ratio < 1 or heads_per_ratio * len(ratios) < 2:
        raise UserError(f"--heads-per-ratio must be a positive whole number with at least 2 heads in all, got {heads_per_ratio!r}")
    if stability_seed is not None and int(stability_seed) == int(seed):
        raise UserError(f"--stability-seed {stability_seed} equals --seed: the second estimate needs another seed")
    dev = choose_device(device)
    find_kw = {k: v for k, v in (("weights", weights), ("image_size", image_size), ("feature", feature)) if v not in (None, "default")}
    tr = _load(train, model=model, cache_dir=cache_dir, find_kw=find_kw, role="train")
    _check_finite(tr, "train")
    X, y = tr.features, tr.labels
    if len(y) < 4:
        raise UserError(f"training features {tr.name} have {len(y)} rows; C-scores need a real training set")
    reference = None
    if compare is not None:  # refused (another dataset, unreadable) before the work, not after it
        from probekit.datasets.subsets import load_cscores

        reference = load_cscores(compare, y)
    seeds = [int(seed)] + ([int(stability_seed)] if stability_seed is not None else [])
    subsets = [rows for s in seeds for rows in random_subsets(len(y), ratios, int(heads_per_ratio), s)]
    H = len(subsets) // len(seeds)  # heads of one estimate; those of seed k are [k * H, (k + 1) * H)
    est = SGDHeads(heads=[(lr, s * 100_003 + h) for s in seeds for h in range(H)], batch_size=batch_size, epochs=epochs,
                   momentum=momentum, weight_decay=weight_decay, eval_every=0, n_classes=tr.num_classes, device=dev,
                   storage_dtype=storage_dtype)
    bar = progress_bar(total=int(head_steps([len(s) for s in subsets], batch_size, epochs).max()), enabled=progress, unit="step",
                       desc=f"cscore ({len(subsets)} heads)", leave=False)
    try:
        est.fit(X, y, head_rows=subsets, callback=lambda p: bar.update(max(0, p.step - bar.n)))
    finally:
        bar.close()
    pred = predict_heads(torch.from_numpy(np.ascontiguousarray(X)).to(dev), est.W_, est.b_).cpu().numpy()  # [heads, N]
    held = np.ones((len(subsets), len(y)), dtype=bool)
    for h, rows in enumerate(subsets):
        held[h, rows] = False
    correct = (pred == y[None]) & held

    def score(heads: np.ndarray) -> np.ndarray:
        n = held[heads].sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return correct[heads].sum(0) / n

    def rank_corr(a: np.ndarray, b: np.ndarray) -> float:
        both = np.isfinite(a) & np.isfinite(b)
        return float(spearmanr(a[both], b[both]).statistic) if both.sum() > 2 else float("nan")

    scores = score(np.arange(H))
    rho = rank_corr(score(np.arange(0, H, 2)), score(np.arange(1, H, 2)))
    two_seed = rank_corr(scores, score(np.arange(H, 2 * H))) if len(seeds) == 2 else None
    compared = rank_corr(scores, reference) if reference is not None else None
    log.info("cscore: %d heads on %s, split-half Spearman %.3f%s", H, tr.name, rho,
             f", Spearman {two_seed:.3f} with a second estimate (seed {seeds[1]})" if two_seed is not None else "")
    return CScores(scores.astype(np.float64), y.astype(np.int64), np.asarray(tr.index, np.int64), held[:H].sum(0).astype(np.int64),
                   ratios, H, rho, tr.name, seed=int(seed), stability_seed=seeds[1] if len(seeds) == 2 else None,
                   two_seed_spearman=two_seed, compare_spearman=compared)


def write_cscores(path: str | os.PathLike, result: CScores, *, overwrite: bool = False) -> Path:
    """The `.npz` (`scores`, `labels`, ...), atomically; an existing file is kept unless `overwrite`."""
    import io

    from probekit.atomic import atomic_write_bytes

    path = Path(path)
    if path.suffix != ".npz":
        raise UserError(f"--out {path}: C-scores are written as a .npz file; use a name ending in .npz")
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass --overwrite to replace it or choose another --out")
    buf = io.BytesIO()
    np.savez(buf, **result.arrays())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def rank_correlation(result: CScores, reference: str | os.PathLike) -> float:
    """Spearman ρ between an estimate and a published C-score file of the same rows (e.g. Jiang et al.'s CIFAR-10)."""
    from scipy.stats import spearmanr

    from probekit.datasets.subsets import load_cscores

    ref = load_cscores(reference, result.labels)
    return float(spearmanr(result.scores, ref).statistic)
