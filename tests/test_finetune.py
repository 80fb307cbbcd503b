"""Full fine-tuning: seeded data order, recipes, records with ER, bad input, checkpoint safety."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probekit.cli import main
from probekit.errors import UserError
from probekit.finetune import FinetuneConfig, finetune, get_recipe, lr_at
from probekit.finetune.data import StepBatches, TrainTransform, check_dataset_labels, epoch_order

torch.set_num_threads(1)

TINY = dict(model="test_resnet", weights="none", train="digits:test", id_test="digits:test", image_size=32,
            lrs=[0.05], seeds=[0], batch_size=32, eval_subset=5, progress=False)


@pytest.fixture(scope="module")
def baseline_json(tmp_path_factory) -> str:
    from probekit.robustness import fit_baseline

    path = tmp_path_factory.mktemp("baseline") / "digits_mnist.json"
    fit_baseline([0.6, 0.7, 0.8, 0.9, 0.95], [0.3, 0.38, 0.5, 0.65, 0.75], names=list("abcde")).save(path)
    return str(path)


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    a, sa = epoch_order(100, 3, 7)
    b, sb = epoch_order(100, 3, 7)
    assert np.array_equal(a, b) and np.array_equal(sa, sb)
    assert sorted(a.tolist()) == list(range(100))
    assert not np.array_equal(a, epoch_order(100, 3, 8)[0])
    assert not np.array_equal(a, epoch_order(100, 4, 7)[0])


def test_step_batches_resume_midway_and_split_over_ranks():
    full = list(StepBatches(50, 8, seed=1, start=0, stop=20))
    assert len(full) == 20 and all(len(b) == 8 for b in full)  # 6 steps/epoch, last partial batch dropped
    assert list(StepBatches(50, 8, seed=1, start=13, stop=20)) == full[13:]
    ranks = [list(StepBatches(50, 8, seed=1, start=0, stop=20, rank=r, world=2)) for r in range(2)]
    for step, batch in enumerate(full):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)
    epoch0 = {i for b in full[:6] for i, _ in b}
    assert len(epoch0) == 48  # no repeats within an epoch


def test_augmentation_is_reproducible_from_the_sample_seed_and_digits_never_flip():
    from PIL import Image

    img = Image.fromarray((np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)).convert("RGB")
    crop = TrainTransform(32, "crop", 0.125)
    torch.manual_seed(5)
    a = crop(img)
    torch.manual_seed(5)
    assert torch.equal(a, crop(img)) and a.dtype == torch.uint8 and a.shape == (3, 32, 32)
    outs = set()
    for s in range(30):
        torch.manual_seed(s)
        outs.add(crop(img).numpy().tobytes())
    assert len(outs) > 5  # really random crops
    assert get_recipe("digits-scratch").augmentation == "crop"
    assert get_recipe("digits-pretrained").augmentation == "crop"


def test_paper_recipes_and_schedules():
    pre, scratch = get_recipe("paper-pretrained"), get_recipe("paper-scratch")
    assert (pre.epochs, pre.lrs, pre.batch_size, pre.momentum, pre.weight_decay) == (100, (0.01, 0.001, 0.0001), 64, 0.9, 1e-4)
    assert (scratch.epochs, scratch.lrs, scratch.image_size, scratch.augmentation) == (250, (0.1, 0.01), 224, "crop-flip")
    assert round(224 * pre.crop_padding) == 28
    im = get_recipe("imagenet-pretrained")
    assert im.augmentation == "resized-crop-flip" and round(224 * im.test_resize) == 256
    assert lr_at(50, 0.1, 100, "constant") == 0.1
    assert lr_at(0, 0.1, 100, "cosine") == pytest.approx(0.1) and lr_at(50, 0.1, 100, "cosine") == pytest.approx(0.05)
    assert lr_at(80, 0.1, 100, "step-50-75") == pytest.approx(0.001)
    with pytest.raises(UserError, match="did you mean"):
        get_recipe("paper-pretrianed")


def test_label_outside_the_head_is_refused():
    class Fake:
        name, split, targets = "fake", "test", np.array([0, 1, 10])

        def source(self, i):
            return f"row {i}"

    with pytest.raises(UserError, match="label 10 at row 2 outside the head's 10 classes"):
        check_dataset_labels(Fake(), 10, "ID test set")


def test_resnet18_records_with_er_checkpoint_and_summary(tmp_path, baseline_json):
    out = tmp_path / "run"
    summary = finetune(FinetuneConfig(**{**TINY, "model": "resnet18"}, out=str(out), ood=["mnist5k"],
                                      baselines=[baseline_json], max_steps=4, eval_every=2))
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 2, 4]
    for r in records:
        assert r["head"] == "lr=0.05,seed=0" and r["mode"] == "finetune" and r["eval_subset"] == 5
        assert r["n_id"] == 50 and r["n_ood"] == {"mnist5k:test": 50}
        assert 0 <= r["acc_id"] <= 1 and set(r["acc_ood"]) == set(r["er"]) == {"mnist5k:test"}
    from probekit.robustness import effective_robustness, load_baseline

    last = records[-1]
    expected = effective_robustness(last["acc_id"], last["acc_ood"]["mnist5k:test"], load_baseline(baseline_json),
                                    n_id=50, return_clipped=True)[0]
    assert last["er"]["mnist5k:test"] == pytest.approx(expected)
    assert records[0]["loss"] is None and records[1]["loss"] > 0
    spe = json.loads((out / "config.json").read_text())["steps_per_epoch"]
    assert spe == 450 // 32 and records[-1]["epoch"] == pytest.approx(4 / spe)
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "resnet18" and config["recipe"]["momentum"] == 0.9 and config["weight_id"] == "random-init"
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 4 and "fc.weight" in state["model"]
    assert summary["heads"]["lr=0.05,seed=0"]["final"]["step"] == 4 and summary["best"] is None
    # predictions.npz of the final model: the OOD accuracy of the last record, row by row
    from probekit.datasets import create_dataset

    with np.load(out / "predictions.npz") as z:
        assert list(z["heads"]) == ["lr=0.05,seed=0"] and list(z["steps"]) == [4] and z["mnist5k:test"].shape == (1, 1, 50)
        labels = np.asarray(create_dataset("mnist5k", "test").targets)[z["mnist5k:test__index"]]
        assert (z["mnist5k:test"][0, 0] == labels).mean() == pytest.approx(last["acc_ood"]["mnist5k:test"])


def test_several_lrs_and_seeds_one_head_each(tmp_path):
    out = tmp_path / "grid"
    finetune(FinetuneConfig(**{**TINY, "lrs": [0.1, 0.01], "seeds": [0, 1]}, out=str(out), max_steps=2, eval_every=2))
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    heads = list(dict.fromkeys(r["head"] for r in records))
    assert heads == ["lr=0.1,seed=0", "lr=0.1,seed=1", "lr=0.01,seed=0", "lr=0.01,seed=1"]
    assert all([r["step"] for r in records if r["head"] == h] == [0, 2] for h in heads)
    assert {r["lr"] for r in records} == {0.1, 0.01}


def test_weights_from_a_local_file(tmp_path):
    import timm

    path = tmp_path / "w.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet").state_dict(), path)
    out = tmp_path / "run"
    finetune(FinetuneConfig(**{**TINY, "weights": str(path)}, out=str(out), max_steps=1, eval_every=1))
    assert json.loads((out / "config.json").read_text())["weight_id"].startswith("sha256:")


def test_bad_input_exits_2_and_keeps_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["finetune", "--model", "test_resnet", "--weights", "none", "--dataset", "digits:test", "--id", "digits:test",
            "--image-size", "32", "--lr", "0.05", "--seeds", "0", "--batch-size", "32", "--eval-subset", "5",
            "--max-steps", "2", "--eval-every", "2", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    ckpt = out / "checkpoints" / "last.pt"
    before = ckpt.read_bytes()
    log_before = (out / "log.jsonl").read_text()

    # another configuration on resume
    assert main(args[:-2] + ["--out", str(out), "--resume", "--lr", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "recipe" in err and len(err.strip().splitlines()) == 1
    # another model on resume
    assert main([a if a != "test_resnet" else "resnet18" for a in args] + ["--resume"]) == 2
    assert "another configuration" in capsys.readouterr().err
    # an unfinished run's checkpoint is not silently replaced
    (out / "summary.json").unlink()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    # an OOD set over other classes
    tree = tmp_path / "letters"
    for c in ("a", "b"):
        (tree / c).mkdir(parents=True)
        from PIL import Image

        Image.new("RGB", (8, 8), (255, 0, 0)).save(tree / c / "x.png")
    assert main(args + ["--resume", "--ood", f"folder:{tree}"]) == 2
    assert "train on a dataset with the same classes as the OOD set" in capsys.readouterr().err
    assert ckpt.read_bytes() == before and (out / "log.jsonl").read_text() == log_before


def test_resume_of_a_complete_run_is_a_no_op(tmp_path):
    out = tmp_path / "run"
    cfg = FinetuneConfig(**TINY, out=str(out), max_steps=2, eval_every=1)
    finetune(cfg)
    log = (out / "log.jsonl").read_text()
    cfg.resume = True
    finetune(cfg)
    strip = lambda text: [{k: v for k, v in json.loads(l).items() if k != "time_s"} for l in text.splitlines()]
    assert strip((out / "log.jsonl").read_text()) == strip(log)
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"


def test_training_subset_by_size_is_recorded_and_used(tmp_path, baseline_json):
    out = tmp_path / "subset"
    finetune(FinetuneConfig(**{**TINY, "model": "small_cnn"}, out=str(out), ood=["mnist5k"], baselines=[baseline_json],
                            subset="per-class=5", max_steps=3, eval_every=3))
    config = json.loads((out / "config.json").read_text())
    assert config["subset"] == "per-class=5" and config["n_train"] == 50
    assert config["baselines"]["mnist5k:test"]["slope"] == pytest.approx(json.loads(open(baseline_json).read())["slope"])
    with pytest.raises(UserError, match="train-head --subset classes"):
        finetune(FinetuneConfig(**TINY, out=str(tmp_path / "k"), subset="classes=3", max_steps=1))


def _predictions_npz(folder) -> dict:
    with np.load(folder / "predictions.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_predictions_at_every_evaluation_match_the_log_and_analyze_reads_them(tmp_path, capsys, monkeypatch):
    import probekit.analysis as analysis
    import probekit.robustness.testbeds as testbeds
    from probekit.datasets import create_dataset
    from probekit.runlog import read_run

    args = ["finetune", "--model", "test_resnet", "--weights", "none", "--dataset", "digits:test", "--id", "digits:test",
            "--ood", "mnist5k", "--image-size", "32", "--lr", "0.1", "0.01", "--seeds", "0", "--batch-size", "32",
            "--eval-subset", "5", "--max-steps", "4", "--eval-every", "2", "--no-progress"]
    every, end = tmp_path / "every", tmp_path / "end"
    assert main(args + ["--out", str(every), "--save-predictions"]) == 0, capsys.readouterr().err  # bare flag: every evaluation
    assert main(args + ["--out", str(end)]) == 0, capsys.readouterr().err                         # default: the final step
    run = read_run(every)
    assert run.config["save_predictions"] == "every-eval" and read_run(end).config["save_predictions"] == "end"
    z = _predictions_npz(every)
    assert list(z["steps"]) == [0, 2, 4] and list(z["heads"]) == ["lr=0.1,seed=0", "lr=0.01,seed=0"]
    assert z["mnist5k:test"].shape == (3, 2, 50) and z["mnist5k:test"].dtype == np.int16
    labels = np.asarray(create_dataset("mnist5k", "test").targets)[z["mnist5k:test__index"]]
    for t, step in enumerate(z["steps"]):
        for h, head in enumerate(z["heads"]):
            (rec,) = [r for r in run.head_records(str(head)) if r["step"] == step]
            assert (z["mnist5k:test"][t, h] == labels).mean() == pytest.approx(rec["acc_ood"]["mnist5k:test"]), (step, head)
    # kept from the accuracy pass at every evaluation == predicted again after training (the "end" file)
    z_end = _predictions_npz(end)
    assert list(z_end["steps"]) == [4] and np.array_equal(z_end["mnist5k:test"][0], z["mnist5k:test"][-1])
    assert np.array_equal(z_end["mnist5k:test__index"], z["mnist5k:test__index"])

    # analyze unique-correct reads every saved evaluation of a finetune run (labels: the set's own)
    truth = np.asarray(create_dataset("mnist5k", "test").targets)
    monkeypatch.setattr(testbeds, "cifar101_labels", lambda version="v6": truth)
    monkeypatch.setattr(analysis, "hard_examples", lambda version="v6": np.arange(len(truth)))
    capsys.readouterr()
    assert main(["analyze", "unique-correct", str(every), "--ood-set", "mnist5k:test", "--json", str(tmp_path / "u.json")]) == 0
    rows = json.loads((tmp_path / "u.json").read_text())["rows"]
    assert [(r["step"], r["head"]) for r in rows] == [(s, h) for s in (0, 2, 4) for h in ("lr=0.1,seed=0", "lr=0.01,seed=0")]
    for r in rows:
        (rec,) = [x for x in run.head_records(r["head"]) if x["step"] == r["step"]]
        assert r["accuracy"] == pytest.approx(rec["acc_ood"]["mnist5k:test"])

    # a value that is neither is one error line
    assert main(args + ["--out", str(tmp_path / "bad"), "--save-predictions", "every-checkpoint"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--save-predictions" in err and "every-eval" in err
    with pytest.raises(UserError, match="--save-predictions must be one of end, every-eval"):
        finetune(FinetuneConfig(**TINY, out=str(tmp_path / "bad2"), max_steps=1, save_predictions="always"))


def test_a_resume_keeps_the_parts_its_checkpoint_covers_and_redoes_the_rest(tmp_path):
    from probekit.finetune.loop import _Evaluator

    out = tmp_path / "run"
    cfg = FinetuneConfig(**{**TINY, "model": "small_cnn"}, out=str(out), ood=["mnist5k"], max_steps=16, eval_every=4,
                         save_predictions="every-eval")  # 14 steps per epoch: checkpoints at 14 and 16
    finetune(cfg)
    reference = _predictions_npz(out)
    assert list(reference["steps"]) == [0, 4, 8, 12, 16]
    # the state a kill after step 14's checkpoint leaves: log and parts up to step 16, the checkpoint at 14
    import torch as _torch

    ckpt = out / "checkpoints" / "last.pt"
    state = _torch.load(ckpt, weights_only=True)
    (out / "summary.json").unlink()
    (out / "predictions.npz").unlink()
    parts = out / "checkpoints"
    marked = parts / "predictions-0-step-00000012.npz"   # covered by the checkpoint at 14: kept, not recomputed
    stale = parts / "predictions-0-step-00000016.npz"    # past it: removed and written again
    z12 = dict(np.load(marked))
    z12["mnist5k:test"] = (z12["mnist5k:test"] + 1) % 10
    np.savez(marked, **z12)
    np.savez(stale, steps=np.array([16]), heads=np.array(["lr=0.05,seed=0"]))  # a part that would not read as complete
    (parts / ".predictions-0-step-00000020.npz.x.tmp").write_bytes(b"half")    # a write a kill interrupted
    state["step"] = 14
    from probekit.finetune.checkpoint import save_checkpoint

    save_checkpoint(ckpt, state)  # (model state of step 16, labelled 14: enough to see which parts a resume keeps)
    calls = []
    original = _Evaluator.predictions
    _Evaluator.predictions = lambda self, net, names: calls.append(1) or original(self, net, names)
    try:
        finetune(FinetuneConfig(**{**cfg.__dict__, "resume": True}))
    finally:
        _Evaluator.predictions = original
    assert len(calls) == 1  # only step 16 was evaluated again
    z = _predictions_npz(out)
    assert list(z["steps"]) == [0, 4, 8, 12, 16]
    assert np.array_equal(z["mnist5k:test"][:3], reference["mnist5k:test"][:3])
    assert np.array_equal(z["mnist5k:test"][3], z12["mnist5k:test"][0])  # the kept part, as it was on disk
    assert not list(parts.glob(".predictions-*.tmp"))
    # a part missing at the end: no predictions.npz rather than one that lacks evaluations
    (parts / "predictions-0-step-00000004.npz").unlink()
    (out / "predictions.npz").unlink()
    finetune(FinetuneConfig(**{**cfg.__dict__, "resume": True}))
    assert not (out / "predictions.npz").exists() and json.loads((out / "summary.json").read_text())["status"] == "complete"


def test_checkpoints_of_earlier_layouts(tmp_path, capsys):
    """Version 2 (unversioned, before --save-predictions) resumes; version 1 (before the record layer) and a newer
    version are refused with one line saying what to do, the checkpoint and log left as they were."""
    out = tmp_path / "run"
    args = ["finetune", "--model", "test_resnet", "--weights", "none", "--dataset", "digits:test", "--id", "digits:test",
            "--ood", "mnist5k", "--image-size", "32", "--lr", "0.05", "--seeds", "0", "--batch-size", "32", "--eval-subset", "5",
            "--max-steps", "2", "--eval-every", "1", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    ckpt = out / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["format"] == "probekit-finetune-checkpoint" and state["version"] == 3
    log = (out / "log.jsonl").read_text()
    from probekit.finetune.checkpoint import save_checkpoint

    def write(s):
        save_checkpoint(ckpt, s)
        (out / "summary.json").unlink(missing_ok=True)
        return ckpt.read_bytes()

    config = json.loads(state["config"])
    current = {k: v for k, v in state.items() if k not in ("format", "version")}
    # version 2: the record layer's config, no save_predictions, no version
    write({**current, "config": json.dumps({k: v for k, v in config.items() if k != "save_predictions"})})
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0, capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"
    assert (out / "predictions.npz").exists()

    # version 1: the config of probekit before the record layer (ood_sets, baseline names + baseline_fit)
    old = {k: v for k, v in config.items() if k not in ("ood", "val_set", "class_subset_shifts", "save_predictions")}
    old.update(ood_sets=config["ood"], baselines={}, baseline_fit=None)
    before = write({**current, "config": json.dumps(old)})
    log = (out / "log.jsonl").read_text()
    assert main(args + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("probekit: error: ") and "earlier probekit" in err and "--overwrite" in err
    assert "another configuration" not in err
    assert ckpt.read_bytes() == before and (out / "log.jsonl").read_text() == log

    # a newer checkpoint version
    before = write({**state, "version": 99})
    assert main(args + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "newer probekit" in err and "--overwrite" in err
    assert ckpt.read_bytes() == before

    # a version that is no number
    write({**state, "version": "three"})
    assert main(args + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a probekit checkpoint" in err and "Traceback" not in err

    # what the message says works: --overwrite starts afresh and writes today's layout
    assert main(args + ["--overwrite"]) == 0
    assert torch.load(ckpt, weights_only=True)["version"] == 3
