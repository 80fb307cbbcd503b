"""The record layer every mode shares (`probekit.records`): plan, records, summary, config, predictions.

The contract test feeds the same accuracies through train-head (SGD and L-BFGS), finetune and
zero-shot and checks that every mode writes the same record fields, the same per-set baseline
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

def test_same_accuracies_give_the_same_records_in_every_mode(tmp_path, clip, class_file, monkeypatch, capsys):  # noqa: F811
    """Zero-shot, train-head SGD and L-BFGS (step 0, started from the zero-shot head) and finetune (its
    evaluator returning the same numbers) all see acc_id 1.0 (clipped for the logit) and acc_ood 0.6 on
    sets of 30 images: their records, config.json baselines and summary schemas must agree."""
    weights, _ = clip
    store = tmp_path / "cache"
    head = zero_shot_head(MODEL, str(class_file), weights=weights, cache_dir=store)
    X, y = _matching_features(head.W, 10, 0.005, 1)
    _write_features(store, X, y, weights=weights, dataset="synth", split="train")
    Xt, yt = _matching_features(head.W, 10, 0.005, 2)
    id_path = _write_features(store, Xt, yt, weights=weights, dataset="synth", split="test")
    Xo, yo = _matching_features(head.W, 10, 0.005, 3)
    yo[:12] = (yo[:12] + 1) % 3  # 18 of 30 right: 0.6
    ood_path = _write_features(store, Xo, yo, weights=weights, dataset="synth-ood")
    baseline = _baseline().save(tmp_path / "line.json")
    common = ["--model", MODEL, "--weights", str(weights), "--id", str(id_path), "--ood", str(ood_path),
              "--baseline", str(baseline), "--cache-dir", str(store)]
    assert main(["zero-shot", "--classes", str(class_file), "--out", str(tmp_path / "zero-shot"), *common]) == 0
    for solver, extra in (("sgd", ["--lr", "0.1", "--batch-size", "8", "--epochs", "1", "--save-predictions"]),
                          ("lbfgs", ["--l2-grid", "1.0", "--max-iter", "2", "--save-predictions"])):
        assert main(["train-head", "--init", "zero-shot", "--classes", str(class_file), "--train", "synth:train", "--solver", solver,
                     "--out", str(tmp_path / solver), "--device", "cpu", "--no-progress", *common, *extra]) == 0, capsys.readouterr().err

    from probekit.finetune import FinetuneConfig, finetune
    from probekit.finetune.loop import _Evaluator

    monkeypatch.setattr(_Evaluator, "__call__", lambda self, net: {"digits:test": 1.0, "mnist5k:test": 0.6})
    finetune(FinetuneConfig(model="small_cnn", train="digits:train", ood=["mnist5k"], out=str(tmp_path / "finetune"), weights="none",
                            lrs=[0.05], seeds=[0], batch_size=32, image_size=16, max_steps=1, eval_subset=3,
                            baselines=[str(baseline)], device="cpu", progress=False))

    fields = ("step", "acc_id", "n_id", "clipped", "id_eval", "acc_id_subset")  # loss: L-BFGS has its objective at step 0
    seen = {}
    for mode in ("zero-shot", "sgd", "lbfgs", "finetune"):
        run = read_run(tmp_path / mode)
        rec = run.records[0]
        assert rec["mode"] == mode and rec["head"] in run.heads
        (ood_set,) = rec["acc_ood"]
        seen[mode] = ({k: rec.get(k) for k in fields}, rec["acc_ood"][ood_set], rec["er"][ood_set], rec["n_ood"][ood_set],
                      run.config["baselines"][ood_set], sorted(run.summary))
    want = seen["zero-shot"]
    assert want[0]["acc_id"] == 1.0 and want[0]["clipped"] is True and want[1] == pytest.approx(0.6) and want[3] == 30
    assert want[2] == pytest.approx(effective_robustness(1.0, 0.6, _baseline(), n_id=30, return_clipped=True)[0])
    for mode, got in seen.items():
        assert got[0] == want[0] and got[1:4] == pytest.approx(want[1:4]), mode
        assert got[4] == json.loads(baseline.read_text()), mode   # one spelling: {ood_set: the full fit}
        assert set(summarise_run([], EvalPlan("x", 1), mode=mode)) | {"status"} <= set(got[5]), mode  # one summary schema

    # -- every mode's folder is read by plot, baseline fit --runs and analyze unique-correct
    import probekit.analysis as analysis
    import probekit.robustness.testbeds as testbeds
    from probekit.datasets import create_dataset
    from probekit.robustness.runs import points_from_runs

    truth = {"synth-ood:test": yo, "mnist5k:test": np.asarray(create_dataset("mnist5k", "test").targets)}
    for mode in ("zero-shot", "sgd", "lbfgs", "finetune"):
        folder = tmp_path / mode
        run = read_run(folder)
        (ood_set,) = run.records[0]["acc_ood"]
        capsys.readouterr()
        assert main(["plot", str(folder), "--out", str(tmp_path / "fig" / mode), "--format", "png"]) == 0, mode
        out = capsys.readouterr().out
        assert (tmp_path / "fig" / mode / "id_vs_ood.png").exists() and "er_vs_step.png" in out, (mode, out)
        names, ids, oods, chosen = points_from_runs([folder])   # what `baseline fit --runs` fits on
        finals = {h: run.head_records(h)[-1] for h in run.heads}
        assert chosen == ood_set and names == [f"{mode}/{h}" for h in finals], mode
        assert ids == [finals[h]["acc_id"] for h in finals] and oods == [finals[h]["acc_ood"][ood_set] for h in finals], mode
        # unique-correct reads predictions.npz; with the set's true labels its accuracy column is the logged OOD accuracy
        monkeypatch.setattr(testbeds, "cifar101_labels", lambda version="v6", s=ood_set: truth[s])
        monkeypatch.setattr(analysis, "hard_examples", lambda version="v6", s=ood_set: np.arange(len(truth[s])))
        assert main(["analyze", "unique-correct", str(folder), "--ood-set", ood_set, "--json", str(tmp_path / f"{mode}.json")]) == 0, mode
        rows = json.loads((tmp_path / f"{mode}.json").read_text())["rows"]
        assert {r["head"] for r in rows} <= set(run.heads) and rows, mode
        if mode != "finetune":  # (finetune's logged accuracies came from the patched evaluator)
            for r in rows:
                logged = [x for x in run.head_records(r["head"]) if x["step"] == r["step"] or r["step"] == -1][-1]
                assert r["accuracy"] == pytest.approx(logged["acc_ood"][ood_set]), (mode, r)
    # a third, different model for the line: SGD heads at a learning rate that throws the zero-shot start away
    assert main(["train-head", "--init", "zero-shot", "--classes", str(class_file), "--train", "synth:train", "--out", str(tmp_path / "hot"),
                 "--lr", "500", "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--no-progress", *common]) == 0
    assert read_run(tmp_path / "hot").records[-1]["acc_id"] < 1.0
    assert main(["baseline", "fit", "--runs", *(str(tmp_path / m) for m in ("zero-shot", "lbfgs", "hot")), "--out",
                 str(tmp_path / "from-runs.json")]) == 0
    assert json.loads((tmp_path / "from-runs.json").read_text())["n"] == 3


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
