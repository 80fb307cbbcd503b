"""Class-balanced seeded subsets and C-score files."""

from __future__ import annotations

import numpy as np
import pytest

from probekit.datasets import load_cscores, select_subset
from probekit.datasets.subsets import parse_subset_spec
from probekit.errors import UserError


@pytest.fixture
def labels():
    # Unbalanced on purpose: class k has 30 + 5k examples, shuffled.
    y = np.concatenate([np.full(30 + 5 * k, k) for k in range(10)])
    return np.random.default_rng(123).permutation(y)


def test_per_class_balanced_sorted_deterministic(labels):
    rows = select_subset(labels, "per-class=7", seed=0)
    assert rows.dtype == np.int64 and np.all(np.diff(rows) > 0)
    assert np.array_equal(np.bincount(labels[rows], minlength=10), [7] * 10)
    assert np.array_equal(rows, select_subset(labels, "per-class=7", seed=0))
    assert not np.array_equal(rows, select_subset(labels, "per-class=7", seed=1))
    # The smallest class has 30: all of it is allowed, more is refused.
    full = select_subset(labels, "per-class=30", seed=3)
    assert np.all(np.isin(np.flatnonzero(labels == 0), full))
    with pytest.raises(UserError, match="class 0 has only 30"):
        select_subset(labels, "per-class=31")


def test_classes_diversity(labels):
    rows = select_subset(labels, "classes=3", seed=0)
    chosen = np.unique(labels[rows])
    assert len(chosen) == 3
    # All examples of the chosen classes, nothing else.
    assert np.array_equal(rows, np.flatnonzero(np.isin(labels, chosen)))
    draws = {tuple(np.unique(labels[select_subset(labels, "classes=3", seed=s)])) for s in range(6)}
    assert len(draws) > 1
    assert np.array_equal(rows, select_subset(labels, "classes=3", seed=0))
    both = select_subset(labels, "classes=4,per-class=5", seed=2)
    counts = np.bincount(labels[both], minlength=10)
    assert sorted(counts[counts > 0].tolist()) == [5] * 4
    assert len(select_subset(labels, "classes=10", seed=5)) == len(labels)
    with pytest.raises(UserError, match="only 10 classes"):
        select_subset(labels, "classes=11")


def test_cscore_orders(labels):
    scores = np.random.default_rng(0).random(len(labels))
    easy = select_subset(labels, "cscore=easiest:50", cscores=scores)
    hard = select_subset(labels, "cscore=hardest:50", cscores=scores)
    rand = select_subset(labels, "cscore=random:50", seed=0)
    for rows in (easy, hard, rand):
        assert np.array_equal(np.bincount(labels[rows], minlength=10), [5] * 10)
    assert len(np.intersect1d(easy, hard)) == 0
    for k in range(10):
        members = np.flatnonzero(labels == k)
        top5 = members[np.argsort(-scores[members])[:5]]
        assert np.array_equal(np.sort(top5), easy[labels[easy] == k])
        # Every chosen easy example scores at least as high as every unchosen one of its class.
        rest = np.setdiff1d(members, easy)
        assert scores[easy[labels[easy] == k]].min() >= scores[rest].max()
        assert scores[hard[labels[hard] == k]].max() <= scores[np.setdiff1d(members, hard)].min()
    assert scores[easy].mean() > scores[rand].mean() > scores[hard].mean()
    assert not np.array_equal(rand, select_subset(labels, "cscore=random:50", seed=1))


@pytest.mark.parametrize("spec,match", [
    ("per-class=0", "positive"),
    ("per-class=-3", "positive"),
    ("per-class=x", "whole number"),
    ("", "empty"),
    ("size=5", "unknown key"),
    ("cscore=medium:10", "easiest"),
    ("cscore=easiest:55", "multiple of the 10"),
    ("cscore=easiest:310", "only 30"),
    ("cscore=random:10,classes=2", "cannot be combined"),
    ("per-class=2,per-class=3", "twice"),
])
def test_refusals(labels, spec, match):
    with pytest.raises(UserError, match=match):
        select_subset(labels, spec, cscores=np.zeros(len(labels)))


def test_cscore_needs_aligned_scores(labels):
    with pytest.raises(UserError, match="C-score file"):
        select_subset(labels, "cscore=easiest:10")
    with pytest.raises(UserError, match="C-scores for"):
        select_subset(labels, "cscore=hardest:10", cscores=np.zeros(5))
    nan = np.zeros(len(labels))
    nan[3] = np.nan
    with pytest.raises(UserError, match="1 C-scores are NaN"):
        select_subset(labels, "cscore=hardest:10", cscores=nan)
    with pytest.raises(UserError, match="no labels"):
        select_subset(np.array([], dtype=np.int64), "per-class=1")


def test_parse_spec():
    assert parse_subset_spec("classes=5, per-class=20") == {"classes": 5, "per-class": 20}
    assert parse_subset_spec("cscore=hardest:5000") == {"cscore": ("hardest", 5000)}


def test_load_cscores_cifar_layout(tmp_path, labels):
    scores = np.linspace(0, 1, len(labels))
    path = tmp_path / "cifar10-cscores-orig-order.npz"
    np.savez(path, labels=labels, scores=scores)
    assert np.array_equal(load_cscores(path, labels), scores)
    wrong = labels.copy()
    wrong[:4] = (wrong[:4] + 1) % 10
    with pytest.raises(UserError, match="at 4 of"):
        load_cscores(path, wrong)
    with pytest.raises(UserError, match="has 525 scores but the features have 520"):
        load_cscores(path, labels[:-5])
    with pytest.raises(UserError, match="not found"):
        load_cscores(tmp_path / "nope.npz", labels)
    np.savez(tmp_path / "bad.npz", other=scores)
    with pytest.raises(UserError, match="no 'scores'"):
        load_cscores(tmp_path / "bad.npz", labels)


def test_load_cscores_by_filename(tmp_path):
    names = np.array([f"n0144_{i}.JPEG" for i in range(6)])
    file_labels = np.array([0, 0, 1, 1, 2, 2])
    scores = np.arange(6) / 10
    path = tmp_path / "imagenet-cscores-with-filename.npz"
    np.savez(path, filenames=names.astype("S"), labels=file_labels, scores=scores)
    # The features list the files in another order, with full paths.
    order = [4, 0, 2]
    ours = [f"/data/imagenet/train/n0144/{names[i]}" for i in order]
    got = load_cscores(path, file_labels[order], filenames=ours)
    assert np.allclose(got, scores[order])
    with pytest.raises(UserError, match="disagrees"):
        load_cscores(path, np.array([0, 0, 0]), filenames=ours)
    with pytest.raises(UserError, match="no score for 1 of 3"):
        load_cscores(path, file_labels[order], filenames=ours[:2] + ["/x/missing.JPEG"])
    np.savez(tmp_path / "names_only.npz", filenames=names, scores=scores)
    with pytest.raises(UserError, match="keyed by file name"):
        load_cscores(tmp_path / "names_only.npz", file_labels)
    assert np.allclose(load_cscores(tmp_path / "names_only.npz", file_labels[order], filenames=ours), scores[order])
