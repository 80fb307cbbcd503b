"""`probekit analyze unique-correct` on synthetic saved predictions (issue 4)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from probekit.analysis import hard_examples, unique_correct
from probekit.cli import main
from probekit.robustness.testbeds import cifar101_correct, cifar101_labels


def test_hard_examples_are_missed_by_every_testbed_model():
    hard = hard_examples("v6")
    correct = np.stack(list(cifar101_correct("v6").values()))
    assert correct.shape == (30, 2000)
    assert len(hard) > 0 and not correct[:, hard].any()
    easy = np.setdiff1d(np.arange(2000), hard)
    assert correct[:, easy].any(axis=0).all()
    assert len(hard_examples("v4")) > 0


def _save_predictions(run, labels, index, fractions, seed=0, name="cifar10.1:test"):
    """Predictions for 2 heads x len(fractions) steps: right on all easy rows, right on the first k hard rows."""
    hard = np.isin(index, hard_examples("v6"))
    hard_rows = np.flatnonzero(hard)
    preds = np.empty((len(fractions), 2, len(index)), dtype=np.int16)
    for t, frac in enumerate(fractions):
        for h in range(2):
            p = labels[index].copy()
            k = int(round(frac[h] * len(hard_rows)))
            p[hard_rows[k:]] = (p[hard_rows[k:]] + 1) % 10
            preds[t, h] = p
    run.mkdir(parents=True, exist_ok=True)
    np.savez(run / "predictions.npz", steps=np.arange(len(fractions)) * 10, heads=np.array(["lr=0.1,seed=0", "lr=0.1,seed=1"]),
             **{name: preds, f"{name}__index": index})


def test_unique_correct_fractions_over_training(tmp_path, capsys):
    labels = cifar101_labels("v6")
    index = np.random.default_rng(0).permutation(2000)  # rows in another order than the dataset: index aligns them
    n_hard = len(hard_examples("v6"))
    fractions = [(0.0, 0.0), (0.5, 0.25), (1.0, 0.5)]
    _save_predictions(tmp_path / "run", labels, index, fractions)
    res = unique_correct(tmp_path / "run")
    assert res.n_hard == n_hard and res.n_examples == 2000 and res.steps == [0, 10, 20]
    expected = np.array([[round(f * n_hard) / n_hard for f in row] for row in fractions])
    np.testing.assert_allclose(res.fraction, expected)
    assert res.accuracy[2, 0] == 1.0 and res.accuracy[0, 0] == pytest.approx(1 - n_hard / 2000)
    rc = main(["analyze", "unique-correct", str(tmp_path / "run"), "--json", str(tmp_path / "u.json"), "--csv", str(tmp_path / "u.csv")])
    out = capsys.readouterr().out
    assert rc == 0 and f"{n_hard} of 2000 examples" in out and "100.0%" in out
    rows = json.loads((tmp_path / "u.json").read_text())["rows"]
    assert len(rows) == 6 and rows[-1]["fraction_hard_correct"] == pytest.approx(expected[2, 1])
    with open(tmp_path / "u.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 6


def test_unique_correct_on_a_subset_of_rows(tmp_path):
    labels = cifar101_labels("v6")
    index = np.concatenate([hard_examples("v6")[:4], np.arange(100)])
    index = np.unique(index)
    _save_predictions(tmp_path / "run", labels, index, [(1.0, 0.0)])
    res = unique_correct(tmp_path / "run")
    assert res.n_hard == int(np.isin(index, hard_examples("v6")).sum()) and res.n_examples == len(index)
    np.testing.assert_allclose(res.fraction, [[1.0, 0.0]])


def test_unique_correct_bad_input(tmp_path, capsys):
    def err(argv):
        rc = main(argv)
        e = capsys.readouterr().err
        assert rc == 2 and e.count("\n") == 1 and "Traceback" not in e
        return e

    assert "no predictions.npz" in err(["analyze", "unique-correct", str(tmp_path)])
    labels = cifar101_labels("v6")
    _save_predictions(tmp_path / "other", labels, np.arange(2000), [(0.0, 0.0)], name="mnist5k:test")
    assert "no CIFAR-10.1 v6 predictions" in err(["analyze", "unique-correct", str(tmp_path / "other")])
    _save_predictions(tmp_path / "v4", labels, np.arange(2000), [(0.0, 0.0)])
    # v6 predictions read as v4: index ok (2000 < 2021) but the set name does not match
    assert "no CIFAR-10.1 v4 predictions" in err(["analyze", "unique-correct", str(tmp_path / "v4"), "--cifar101-version", "v4"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "predictions.npz").write_bytes(b"not a zip")
    assert "cannot be read" in err(["analyze", "unique-correct", str(tmp_path / "bad")])
    np.savez(tmp_path / "bad" / "predictions.npz", steps=np.arange(2), heads=np.array(["a"]),
             **{"cifar10.1:test": np.zeros((2, 1, 5), np.int16), "cifar10.1:test__index": np.arange(4)})
    assert "has shape (2, 1, 5)" in err(["analyze", "unique-correct", str(tmp_path / "bad")])
