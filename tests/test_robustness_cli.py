"""`probekit baseline list|show|fit|build` end to end, and bad input through the CLI (issue 4)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probekit.cli import main
from probekit.errors import UserError
from probekit.robustness import build_cifar10_baseline, effective_robustness, inverse_transform, load_baseline, transform
from probekit.robustness.runs import points_from_runs
from probekit.robustness.testbeds import shipped_path, cifar10_models, cifar10_predictions, cifar101_correct
from probekit.runlog import RunWriter


def _cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_user_error(capsys, argv, pattern):
    rc, out, err = _cli(capsys, *argv)
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("probekit: error: "), err
    assert "Traceback" not in err
    import re

    assert re.search(pattern, lines[0]), lines[0]


def _synthetic_cifar_labels() -> np.ndarray:
    """Labels the shipped models mostly agree with: the per-image majority vote of their predictions."""
    preds = np.stack([cifar10_predictions()[(m, "original")] for m in cifar10_models()])
    return np.array([np.bincount(col, minlength=10).argmax() for col in preds.T], dtype=np.int64)


def _write_run(path, points, ood="cifar10.1:test", extra_config=None):
    """A run folder with one head per (id, ood) final point and a short trajectory before it."""
    with RunWriter(path, {"mode": "sgd", **(extra_config or {})}) as w:
        for h, (a, o) in enumerate(points):
            for step, frac in ((0, 0.5), (10, 0.8), (20, 1.0)):
                w.log({"step": step, "epoch": step / 10, "head": f"lr=0.01,seed={h}", "loss": 1.0,
                       "acc_id": a * frac, "acc_ood": {ood: o * frac, "other:test": 0.5}})
        w.finish({})


def test_list_and_show(capsys):
    rc, out, _ = _cli(capsys, "baseline", "list")
    assert rc == 0 and "imagenet-objectnet" in out and "val-on-objectnet-classes" in out
    rc, out, _ = _cli(capsys, "baseline", "show", "imagenet-imagenetv2")
    assert rc == 0
    assert "T(ood) = 0.92323 * T(id) - 0.49769" in out and "r = 0.99802, n = 85" in out and "imagenet-testbed" in out
    rc, out, _ = _cli(capsys, "baseline", "show", "imagenet-imagenet-r", "--transform", "probit", "--json")
    d = json.loads(out)
    # CLIP ViT-B/32 zero-shot from the shipped testbed (63.302 / 55.770): about +5.6 points on ImageNetV2
    rc, out, _ = _cli(capsys, "baseline", "show", "imagenet-imagenetv2", "--point", "0.63302", "0.5577")
    assert rc == 0 and "ER = +0.0563 (+5.63 points)" in out
    _assert_user_error(capsys, ["baseline", "show", "imagenet-imagenetv2", "--point", "63.3", "55.8"], r"looks like a percentage")
    assert d["slope"] == pytest.approx(0.77189, abs=1e-5) and d["transform"] == "probit" and d["n"] == 80


def test_build_cifar_baseline_from_synthetic_labels(tmp_path, capsys):
    labels = _synthetic_cifar_labels()
    np.save(tmp_path / "labels.npy", labels)
    cache = tmp_path / "cache"
    _assert_user_error(capsys, ["baseline", "show", "cifar10-cifar10.1", "--cache-dir", str(cache)], r"baseline build cifar10-cifar10\.1")
    rc, out, _ = _cli(capsys, "baseline", "build", "cifar10-cifar10.1", "--labels", str(tmp_path / "labels.npy"), "--cache-dir", str(cache))
    assert rc == 0 and (cache / "baselines" / "cifar10-cifar10.1.json").exists()
    b = load_baseline("cifar10-cifar10.1", cache_dir=cache)
    assert b.n == 30 and b.ood_set == "cifar10.1:test" and len(b.points) == 30
    # the fit is the regression of the 30 models' accuracies, computed independently here
    preds, correct = cifar10_predictions(), cifar101_correct("v6")
    x = np.array([(preds[(m, "original")] == labels).mean() for m in cifar10_models()])
    y = np.array([correct[m].mean() for m in cifar10_models()])
    slope, intercept = np.polyfit(transform(x), transform(y), 1)
    assert (b.slope, b.intercept) == (pytest.approx(slope), pytest.approx(intercept))
    import csv

    with open(shipped_path("cifar10_to_cifar10.1_testbed.csv"), newline="") as f:
        published = {r["model"]: float(r["ood_top1"]) / 100 for r in csv.DictReader(f)}
    np.testing.assert_allclose(y, [published[m] for m in cifar10_models()], atol=1e-9)  # v6 accuracies of the 30 models
    rc, out, _ = _cli(capsys, "baseline", "list", "--cache-dir", str(cache))
    assert "cifar10-cifar10.1 " in out and "built" in out


def test_build_refuses_wrong_labels(tmp_path, capsys):
    np.save(tmp_path / "short.npy", np.zeros(100, dtype=np.int64))
    _assert_user_error(capsys, ["baseline", "build", "cifar10-cifar10.1", "--labels", str(tmp_path / "short.npy"),
                                "--cache-dir", str(tmp_path)], r"10000 integers in 0\.\.9")
    shuffled = np.random.default_rng(0).permutation(_synthetic_cifar_labels())
    with pytest.raises(UserError, match="not the CIFAR-10 test labels"):
        build_cifar10_baseline(shuffled, cache_dir=tmp_path)
    _assert_user_error(capsys, ["baseline", "build", "imagenet-imagenetv2", "--labels", str(tmp_path / "short.npy")],
                       r"unknown buildable baseline")


def test_build_cli_reads_labels_through_the_datasets_registry(tmp_path, monkeypatch):
    import probekit.datasets.cifar as cifar

    seen = {}

    def fake(root, download=False):
        seen["root"] = root
        return _synthetic_cifar_labels()

    monkeypatch.setattr(cifar, "cifar10_test_labels", fake)
    assert main(["baseline", "build", "cifar10-cifar10.1-v4", "--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path)]) == 0
    b = load_baseline("cifar10-cifar10.1-v4", cache_dir=tmp_path)
    assert seen["root"] == str(tmp_path / "data") and b.ood_set == "cifar10.1-v4:test"


def test_fit_csv(tmp_path, capsys):
    ids = np.array([0.55, 0.62, 0.7, 0.78, 0.85, 0.9])
    oods = inverse_transform(0.9 * transform(ids) - 0.3)
    csv_path = tmp_path / "mine.csv"
    csv_path.write_text("model,id,ood\n" + "".join(f"m{i},{a},{o}\n" for i, (a, o) in enumerate(zip(ids, oods))))
    out_json = tmp_path / "fit.json"
    rc, out, _ = _cli(capsys, "baseline", "fit", "--csv", str(csv_path), "--out", str(out_json), "--bootstrap", "200")
    assert rc == 0 and "n = 6 models" in out and "bootstrap 95% CI" in out
    b = load_baseline(out_json)
    assert (b.slope, b.intercept, b.n) == (pytest.approx(0.9), pytest.approx(-0.3), 6)
    rc, out, _ = _cli(capsys, "baseline", "show", str(out_json))
    assert rc == 0 and "T(ood) = 0.90000 * T(id) - 0.30000" in out
    # percentages, too few rows, duplicates, wrong columns, wrong schema: one line, exit 2
    (tmp_path / "pct.csv").write_text("model,id,ood\na,55,40\nb,60,45\nc,70,55\n")
    _assert_user_error(capsys, ["baseline", "fit", "--csv", str(tmp_path / "pct.csv")], r"percentage.*divide by 100")
    (tmp_path / "two.csv").write_text("model,id,ood\na,0.5,0.4\nb,0.6,0.5\n")
    _assert_user_error(capsys, ["baseline", "fit", "--csv", str(tmp_path / "two.csv")], r"at least 3 models, got 2")
    (tmp_path / "dup.csv").write_text("model,id,ood\na,0.5,0.4\nb,0.6,0.5\na,0.7,0.6\n")
    _assert_user_error(capsys, ["baseline", "fit", "--csv", str(tmp_path / "dup.csv")], r"model 'a' more than once")
    (tmp_path / "cols.csv").write_text("name,x,y\na,0.5,0.4\n")
    _assert_user_error(capsys, ["baseline", "fit", "--csv", str(tmp_path / "cols.csv")], r"needs columns model,id,ood")
    (tmp_path / "neg.csv").write_text("model,id,ood\na,0.5,-0.4\nb,0.6,0.5\nc,0.7,0.6\n")
    _assert_user_error(capsys, ["baseline", "fit", "--csv", str(tmp_path / "neg.csv")], r"negative")
    (tmp_path / "wrong.json").write_text('{"fits": {}}')
    _assert_user_error(capsys, ["baseline", "show", str(tmp_path / "wrong.json")], r"not a probekit baseline file")
    _assert_user_error(capsys, ["baseline", "show", "cifar10-cifar10"], r"unknown baseline.*did you mean")
    _assert_user_error(capsys, ["baseline", "fit", "--csv", str(tmp_path / "nope.csv")], r"does not exist")


def test_fit_runs(tmp_path, capsys):
    pts = [(0.6, 0.45), (0.7, 0.55), (0.8, 0.66), (0.9, 0.8)]
    _write_run(tmp_path / "a", pts[:2])
    _write_run(tmp_path / "b", pts[2:])
    names, ids, oods, ood = points_from_runs([tmp_path / "a", tmp_path / "b"], "cifar10.1:test")
    assert names == ["a/lr=0.01,seed=0", "a/lr=0.01,seed=1", "b/lr=0.01,seed=0", "b/lr=0.01,seed=1"]
    assert ids == pytest.approx([p[0] for p in pts]) and oods == pytest.approx([p[1] for p in pts])
    _assert_user_error(capsys, ["baseline", "fit", "--runs", str(tmp_path / "a"), str(tmp_path / "b")], r"several OOD sets.*--ood-set")
    out_json = tmp_path / "runs.json"
    rc, out, _ = _cli(capsys, "baseline", "fit", "--runs", str(tmp_path / "a"), str(tmp_path / "b"), "--ood-set", "cifar10.1:test",
                      "--transform", "probit", "--out", str(out_json))
    assert rc == 0 and "n = 4 models" in out
    b = load_baseline(out_json, transform="probit")
    slope, intercept = np.polyfit(transform(np.array(ids), "probit"), transform(np.array(oods), "probit"), 1)
    assert (b.slope, b.intercept, b.ood_set) == (pytest.approx(slope), pytest.approx(intercept), "cifar10.1:test")
    # the fit file is what --baseline FILE takes: ER of one of its points against itself is its residual
    assert effective_robustness(0.7, 0.55, b) == pytest.approx(0.55 - b.expected_ood(0.7))
    _assert_user_error(capsys, ["baseline", "fit", "--runs", str(tmp_path / "a"), "--ood-set", "cifar10.1:test"], r"at least 3 models")
    _assert_user_error(capsys, ["baseline", "fit", "--runs", str(tmp_path)], r"not a probekit run folder")


def test_build_without_cifar10_on_disk_says_what_to_do(tmp_path, capsys):
    _assert_user_error(capsys, ["baseline", "build", "cifar10-cifar10.1", "--data-root", str(tmp_path / "empty"),
                                "--cache-dir", str(tmp_path)], r"CIFAR-10.*not found.*--labels FILE\.npy")


def test_build_from_a_real_cifar10_test_batch_layout(tmp_path):
    """The labels come through probekit.datasets' cifar10 reader (torchvision's pickled batch layout)."""
    import pickle

    pytest.importorskip("probekit.datasets.cifar")
    folder = tmp_path / "data" / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = _synthetic_cifar_labels()
    data = np.zeros((10000, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": labels.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    from probekit.datasets.cifar import cifar10_test_labels

    b, path = build_cifar10_baseline(cifar10_test_labels(tmp_path / "data"), cache_dir=tmp_path / "cache")
    assert path.exists() and b.n == 30
