"""The record layer every mode shares (`probekit.records`): plan, records, summary, config, predictions.

The contract test feeds the same accuracies through train-head (SGD and L-BFGS), finetune and
zero-shot (a 1000-class ImageNet head, scored on a full-view OOD set and on the ImageNet-R class subset) and
checks that every mode writes the same record fields, the same per-set baseline
in config.json and summaries of the same schema.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("open_clip")

from probekit.cli import main  # noqa: E402
from probekit.errors import UserError  # noqa: E402
from probekit.records import (  # noqa: E402
    EvalPlan,
    OODView,
    Predictions,
    evaluation_records,
    logged_baselines,
    match_baselines,
    merge_predictions,
    read_predictions,
    summarise_run,
    write_predictions,
)
from probekit.robustness import effective_robustness, fit_baseline  # noqa: E402
from probekit.robustness.shifts import shift_for  # noqa: E402
from probekit.runlog import read_run  # noqa: E402
from test_zeroshot import MODEL, _matching_features, _write_features, class_file, clip  # noqa: E402, F401
from probekit.zeroshot import zero_shot_head  # noqa: E402


def _baseline(ood_set=None):
    return fit_baseline([0.5, 0.6, 0.7, 0.8], [0.4, 0.45, 0.6, 0.7], names=list("abcd"), name="line", ood_set=ood_set)


def test_records_carry_er_clipping_sizes_and_the_class_restricted_id_view():
    b = _baseline()
    shift = shift_for("objectnet:test")
    plan = EvalPlan("imagenet:val", 1000, (OODView("imagenetv2:test", 500, None, None, b),
                                           OODView("objectnet:test", 300, shift, 250, b),
                                           OODView("other:test", 40)))
    acc = {"imagenet:val": np.array([0.7, 1.0]), "imagenetv2:test": np.array([0.6, 0.8]), "objectnet:test": np.array([0.3, 0.4]),
           "objectnet:test__id": np.array([0.75, 0.9]), "other:test": np.array([0.1, 0.2])}
    recs = evaluation_records(plan, acc, step=3, epoch=0.5, heads=[{"head": "a", "lr": 0.1}, {"head": "b", "lr": 0.2}],
                              mode="sgd", loss=np.array([1.0, 2.0]))
    a, c = recs
    assert a["head"] == "a" and a["lr"] == 0.1 and a["loss"] == 1.0 and a["n_id"] == 1000
    assert a["n_ood"] == {"imagenetv2:test": 500, "objectnet:test": 300, "other:test": 40}
    assert set(a["er"]) == {"imagenetv2:test", "objectnet:test"}  # no baseline for other:test
    assert a["er"]["imagenetv2:test"] == pytest.approx(effective_robustness(0.7, 0.6, b))
    assert a["er"]["objectnet:test"] == pytest.approx(effective_robustness(0.75, 0.3, b))  # against the restricted ID view
    assert a["acc_id_subset"] == {"objectnet:test": 0.75} and a["id_eval"] == {"objectnet:test": shift.id_eval}
    assert "clipped" not in a and c["clipped"] is True  # acc_id 1.0 is clipped with n_id for the logit
    assert c["er"]["imagenetv2:test"] == pytest.approx(effective_robustness(1.0, 0.8, b, n_id=1000, return_clipped=True)[0])
    with pytest.raises(ValueError, match="objectnet:test__id"):
        evaluation_records(plan, {k: v for k, v in acc.items() if k != "objectnet:test__id"}, step=0, epoch=0, heads=[{"head": "a"}],
                           mode="sgd")


def test_baseline_specs_match_ood_sets_by_dataset_and_refuse_other_shifts(tmp_path):
    baseline_json = str(tmp_path / "mnist.json")
    fit_baseline([0.6, 0.7, 0.8], [0.3, 0.38, 0.5], names=list("abc"), ood_set="mnist5k:test").save(baseline_json)
    both = ["mnist5k:test", "digits:test"]
    assert list(match_baselines([f"mnist5k={baseline_json}"], both)) == ["mnist5k:test"]
    assert list(match_baselines([baseline_json], both)) == ["mnist5k:test"]  # fitted for mnist5k only
    assert list(match_baselines(_baseline(), both)) == both                  # no OOD set: every set
    with pytest.raises(UserError, match="not among --ood"):
        match_baselines([baseline_json], ["digits:test"])
    with pytest.raises(UserError, match="not among --ood"):
        match_baselines([f"cifar10.1={baseline_json}"], both)
    with pytest.raises(UserError, match="at least one --ood"):
        match_baselines([baseline_json], [])
    # folder: sets are told apart by their whole path, not the text before the first ':'
    fit_baseline([0.6, 0.7, 0.8], [0.3, 0.38, 0.5], names=list("abc"), ood_set="folder:/data/a:test").save(baseline_json)
    assert list(match_baselines([baseline_json], ["folder:/data/a:test", "folder:/data/b:test"])) == ["folder:/data/a:test"]


def test_old_config_spellings_still_read():
    b = _baseline("mnist5k:test")
    fit = b.to_json()
    assert logged_baselines({"baselines": {"mnist5k:test": fit}})["mnist5k:test"].slope == b.slope          # current
    assert logged_baselines({"baseline": "x", "baseline_fit": fit, "er_sets": ["mnist5k:test"]})["mnist5k:test"].slope == b.slope
    assert logged_baselines({"baseline": "x", "baseline_fit": fit})["*"].slope == b.slope                    # train-head, no er_sets
    assert logged_baselines({"baselines": {"m:test": "line"}, "baseline_fit": fit})["m:test"].slope == b.slope  # finetune
    assert logged_baselines({"baselines": {"m:test": "line"}, "baseline_fit": None}) == {"m:test": "line"}
    assert logged_baselines({"baseline": "cifar10-cifar10.1", "baseline_source": "s"}) == {"*": "cifar10-cifar10.1"}  # zero-shot
    assert logged_baselines({}) == {}


def test_best_is_chosen_on_validation_and_test_maxima_are_oracle_values():
    plan = EvalPlan("id:test", 10, (OODView("ood:test", 10),), "id:val", 10)
    acc = [(0.5, 0.9, 0.4), (0.8, 0.7, 0.6), (0.6, 0.95, 0.3)]  # (val, id, ood) per step
    recs = [r for t, (v, i, o) in enumerate(acc)
            for r in evaluation_records(plan, {"id:val": v, "id:test": i, "ood:test": o}, step=t, epoch=t, heads=[{"head": "h"}], mode="sgd")]
    s = summarise_run(recs, plan, mode="sgd")
    assert s["best"] == {"head": "h", "step": 1, "chosen_on": "id:val", "acc_val": 0.8, "acc_id": 0.7, "acc_ood": {"ood:test": 0.6}}
    assert s["heads"]["h"]["oracle"] == {"acc_id": 0.95, "acc_ood": {"ood:test": 0.6}}
    assert s["heads"]["h"]["final"]["acc_id"] == 0.95 and s["schema"] == "probekit-run-summary"
    no_val = EvalPlan("id:test", 10, (OODView("ood:test", 10),))
    assert summarise_run([{k: v for k, v in r.items() if k not in ("acc_val", "val_set")} for r in recs], no_val, mode="sgd")["best"] is None


def test_predictions_round_trip_and_merge(tmp_path):
    a, b = Predictions(heads=["a"]), Predictions(heads=["b"])
    for p, shift in ((a, 0), (b, 1)):
        p.add(7, {"s:test": (np.arange(4)[None] + shift) % 3})
        p.index["s:test"] = np.array([5, 6, 7, 8])
    merged = read_predictions(write_predictions(tmp_path, merge_predictions([a, b])))
    assert merged.heads == ["a", "b"] and merged.steps == [7]
    np.testing.assert_array_equal(merged.sets["s:test"][0], [[0, 1, 2, 0], [1, 2, 0, 1]])
    np.testing.assert_array_equal(merged.index["s:test"], [5, 6, 7, 8])


# ------------------------------------------------------------------ the contract: every mode, the same records

IN1K = tuple(f"object number {i}" for i in range(1000))
WRONG_ID = 50     # ImageNet val rows labelled wrong, all of classes outside ImageNet-R's 200
RIGHT_R = 120     # of ImageNet-R's 200 rows, those labelled right
RIGHT_OOD = 600   # of the full-view OOD set's 1000 rows, those labelled right
FULL_OOD = "imagenet:train"  # the full-view OOD set: ImageNet's train split in every mode (finetune reads its images)


def _fake_imagenet(root):
    """ImageNet train / val (1000 wnid folders, one 8 px image each) and ImageNet-R (200 folders): what finetune reads."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for tree, n in (("imagenet/train", 1000), ("imagenet/val", 1000), ("imagenet-r", 200)):
        for i in range(n):
            folder = root / tree / f"n{i:08d}"
            folder.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / "0.png")
    return root


def test_same_accuracies_give_the_same_records_in_every_mode(tmp_path, clip, monkeypatch, capsys):  # noqa: F811
    """Zero-shot, train-head SGD and L-BFGS (step 0, started from the zero-shot head) and finetune (its evaluator
    returning the same numbers) of a 1000-class ImageNet head, scored on a full-view OOD set and on ImageNet-R (a
    class-subset shift, whose ER is against the ID accuracy on its 200 classes), all see acc_id 0.95, acc_id_subset
    1.0 (clipped for the logit with the 200 rows of that view), acc_ood 0.6 on both sets: their records (id_eval,
    acc_id_subset, n_id_subset and ER included), config.json baselines and summary schemas must agree."""
    weights, _ = clip
    store = tmp_path / "cache"
    classes = tmp_path / "in1k.txt"
    classes.write_text("\n".join(IN1K) + "\n")
    head = zero_shot_head(MODEL, str(classes), weights=weights, cache_dir=store)
    X = head.W.T / np.linalg.norm(head.W.T, axis=1, keepdims=True)  # row i: class i's text embedding
    assert (head.logits(X).argmax(1) == np.arange(1000)).all()      # so the labels below decide every accuracy
    shift = shift_for("imagenet-r:test")
    sub = np.array([i[0] for i in shift.imagenet_indices])          # ImageNet-R class k is ImageNet class sub[k]
    outside = np.setdiff1d(np.arange(1000), sub)
    w = dict(weights=weights, classes=IN1K, label_space="imagenet1k")
    _write_features(store, X, np.arange(1000), dataset="synth", split="train", **w)
    _write_features(store, X, (np.arange(1000) + 1) % 1000, dataset="synth", split="rolled", **w)  # trains the odd model out
    y = np.arange(1000)
    y[outside[:WRONG_ID]] = outside[WRONG_ID:2 * WRONG_ID]         # wrong, none of them an ImageNet-R class
    id_path = _write_features(store, X, y, dataset="imagenet", split="val", **w)
    yo = np.arange(1000)
    yo[RIGHT_OOD:] = (yo[RIGHT_OOD:] + 1) % 1000
    ood_path = _write_features(store, X, yo, dataset="imagenet", split="train", **w)
    yr = np.arange(200)
    yr[RIGHT_R:] = (yr[RIGHT_R:] + 1) % 200
    r_path = _write_features(store, X[sub], yr, weights=weights, dataset="imagenet-r", classes=shift.classes,
                             label_space="imagenet-r200")
    baseline = _baseline().save(tmp_path / "line.json")
    common = ["--model", MODEL, "--weights", str(weights), "--id", str(id_path), "--ood", str(ood_path), str(r_path),
              "--baseline", str(baseline), "--cache-dir", str(store)]
    assert main(["zero-shot", "--classes", str(classes), "--out", str(tmp_path / "zero-shot"), *common]) == 0
    for solver, extra in (("sgd", ["--lr", "0.1", "--batch-size", "250", "--epochs", "1", "--save-predictions"]),
                          ("lbfgs", ["--l2-grid", "1.0", "--max-iter", "2", "--save-predictions"])):
        assert main(["train-head", "--init", "zero-shot", "--classes", str(classes), "--train", "synth:train", "--solver", solver,
                     "--out", str(tmp_path / solver), "--device", "cpu", "--no-progress", *common, *extra]) == 0, capsys.readouterr().err

    from probekit.finetune import FinetuneConfig, finetune
    from probekit.finetune.loop import _Evaluator

    data = _fake_imagenet(tmp_path / "data")
    same = {"imagenet:val": 0.95, "imagenet:train": 0.6, "imagenet-r:test": 0.6, "imagenet-r:test__id": 1.0}
    monkeypatch.setattr(_Evaluator, "__call__", lambda self, net: dict(same))
    finetune(FinetuneConfig(model="small_cnn", train="imagenet:train", id_test="imagenet:val", ood=[FULL_OOD, "imagenet-r"],
                            out=str(tmp_path / "finetune"), weights="none", lrs=[0.05], seeds=[0], batch_size=32, image_size=16,
                            max_steps=1, baselines=[str(baseline)], device="cpu", progress=False, data_root=str(data)))

    modes = ("zero-shot", "sgd", "lbfgs", "finetune")
    fields = ("step", "acc_id", "n_id", "clipped", "id_eval", "acc_id_subset", "n_id_subset")  # loss: L-BFGS has its objective at step 0

    def roles(rec):
        """(the full-view OOD set, the class-subset one) of a record."""
        (r_set,) = rec["id_eval"]
        (full,) = set(rec["acc_ood"]) - {r_set}
        return full, r_set

    seen = {}
    for mode in modes:
        run = read_run(tmp_path / mode)
        rec = run.records[0]
        assert rec["mode"] == mode and rec["head"] in run.heads
        full, r_set = roles(rec)
        assert full == FULL_OOD and r_set == "imagenet-r:test"
        seen[mode] = ({k: rec[k][r_set] if k in ("id_eval", "acc_id_subset", "n_id_subset") else rec.get(k) for k in fields},
                      [rec["acc_ood"][s] for s in (full, r_set)], [rec["er"][s] for s in (full, r_set)],
                      [rec["n_ood"][s] for s in (full, r_set)], [run.config["baselines"][s] for s in (full, r_set)],
                      run.config["class_subset_shifts"] == {r_set: shift.id_eval}, sorted(run.summary))
    want = seen["zero-shot"]
    assert want[0] == {"step": 0, "acc_id": 0.95, "n_id": 1000, "clipped": True, "id_eval": "val-on-imagenet-r-classes",
                       "acc_id_subset": 1.0, "n_id_subset": 200}
    assert want[1] == pytest.approx([0.6, 0.6]) and want[3] == [1000, 200] and want[5]
    b = _baseline()
    assert want[2] == pytest.approx([effective_robustness(0.95, 0.6, b),  # ER of ImageNet-R against its own ID view
                                     effective_robustness(1.0, 0.6, b, n_id=200, return_clipped=True)[0]])
    for mode, got in seen.items():
        assert got[0] == want[0] and got[1:4] == pytest.approx(want[1:4]) and got[5], mode
        assert got[4] == [json.loads(baseline.read_text())] * 2, mode   # one spelling: {ood_set: the full fit}
        assert set(summarise_run([], EvalPlan("x", 1), mode=mode)) | {"status"} <= set(got[6]), mode  # one summary schema

    # -- every mode's folder is read by plot, baseline fit --runs and analyze unique-correct
    import probekit.analysis as analysis
    import probekit.robustness.testbeds as testbeds
    from probekit.datasets import create_dataset
    from probekit.robustness.runs import points_from_runs

    truth = {"features": {FULL_OOD: yo, "imagenet-r:test": yr},
             "finetune": {FULL_OOD: np.asarray(create_dataset("imagenet", "train", root=data).targets),
                          "imagenet-r:test": np.asarray(create_dataset("imagenet-r", "test", root=data).targets)}}
    for mode in modes:
        folder = tmp_path / mode
        run = read_run(folder)
        full, r_set = roles(run.records[0])
        finals = {h: run.head_records(h)[-1] for h in run.heads}
        for ood_set, id_acc in ((full, lambda r: r["acc_id"]), (r_set, lambda r: r["acc_id_subset"][r_set])):
            capsys.readouterr()
            fig = tmp_path / "fig" / mode / ood_set
            assert main(["plot", str(folder), "--ood-set", ood_set, "--out", str(fig), "--format", "png"]) == 0, mode
            out = capsys.readouterr().out
            assert (fig / "id_vs_ood.png").exists() and "er_vs_step.png" in out, (mode, out)
            names, ids, oods, chosen = points_from_runs([folder], ood_set)   # what `baseline fit --runs` fits on
            assert chosen == ood_set and names == [f"{mode}/{h}" for h in finals], mode
            assert ids == [id_acc(finals[h]) for h in finals] and oods == [finals[h]["acc_ood"][ood_set] for h in finals], mode
            # unique-correct reads predictions.npz; with the set's true labels its accuracy column is the logged OOD accuracy
            labels = truth["finetune" if mode == "finetune" else "features"][ood_set]
            monkeypatch.setattr(testbeds, "cifar101_labels", lambda version="v6", t=labels: t)
            monkeypatch.setattr(analysis, "hard_examples", lambda version="v6", t=labels: np.arange(len(t)))
            report = tmp_path / f"{mode}-{ood_set}.json"
            assert main(["analyze", "unique-correct", str(folder), "--ood-set", ood_set, "--json", str(report)]) == 0, mode
            rows = json.loads(report.read_text())["rows"]
            assert {r["head"] for r in rows} <= set(run.heads) and rows, mode
            if mode != "finetune":  # (finetune's logged accuracies came from the patched evaluator)
                for r in rows:
                    logged = [x for x in run.head_records(r["head"]) if x["step"] == r["step"] or r["step"] == -1][-1]
                    assert r["accuracy"] == pytest.approx(logged["acc_ood"][ood_set]), (mode, r)
    # a different model for the line: SGD heads trained away from the zero-shot start on labels rolled by one
    assert main(["train-head", "--init", "zero-shot", "--classes", str(classes), "--train", "synth:rolled", "--out", str(tmp_path / "hot"),
                 "--lr", "50", "--batch-size", "250", "--epochs", "5", "--eval-every", "0", "--device", "cpu", "--no-progress",
                 *common]) == 0
    hot = read_run(tmp_path / "hot").records[-1]
    assert hot["acc_id"] < 0.9 and hot["acc_id_subset"]["imagenet-r:test"] < 0.9, hot
    # `probekit baseline fit --runs` on every mode's folder: one point per head, the class-restricted ID view for ImageNet-R
    folders = [tmp_path / m for m in (*modes, "hot")]
    finals = {f"{f.name}/{h}": run.head_records(h)[-1] for f in folders for run in [read_run(f)] for h in run.heads}
    assert len(finals) == 5
    for ood_set, id_acc, n_id in ((FULL_OOD, lambda r: r["acc_id"], 1000),
                                  ("imagenet-r:test", lambda r: r["acc_id_subset"]["imagenet-r:test"], 200)):
        fit = tmp_path / f"from-runs-{ood_set}.json"
        capsys.readouterr()
        assert main(["baseline", "fit", "--runs", *map(str, folders), "--ood-set", ood_set, "--out", str(fit)]) == 0, capsys.readouterr().err
        got = json.loads(fit.read_text())
        assert got["n"] == 5 and got["ood_set"] == ood_set
        assert {p["model"]: (p["id"], p["ood"]) for p in got["points"]} == {
            name: (id_acc(r), r["acc_ood"][ood_set]) for name, r in finals.items()}
        want_fit = fit_baseline([id_acc(r) for r in finals.values()], [r["acc_ood"][ood_set] for r in finals.values()], n_id=n_id)
        assert got["slope"] == pytest.approx(want_fit.slope) and got["intercept"] == pytest.approx(want_fit.intercept)


def test_one_dataset_name_parser():
    from probekit.datasets import parse_dataset_split as registry_parser
    from probekit.names import dataset_name, parse_dataset_split

    assert registry_parser is parse_dataset_split
    assert parse_dataset_split("folder:/data/pets:val") == ("folder:/data/pets", "val")
    assert parse_dataset_split("folder:/data/pets", "test") == ("folder:/data/pets", "all")
    assert parse_dataset_split("cifar10", "train") == ("cifar10", "train")
    with pytest.raises(UserError, match="missing split"):
        parse_dataset_split("cifar10")
    assert dataset_name("folder:/a:test") == "folder:/a" != dataset_name("folder:/b:test")
    assert dataset_name("imagenet-r:test") == "imagenet-r" == dataset_name("imagenet-r")
