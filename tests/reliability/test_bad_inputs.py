"""The bad-input catalogue: every case exits 2 with exactly one stderr line `probekit: error: ...`.

Each case runs the real CLI in-process inside a small prepared folder (real small_cnn entries
of the bundled digits, crafted files next to them). docs/bad-inputs.md is generated from
these cases and checked to be current:

    python tests/reliability/test_bad_inputs.py   # rewrites docs/bad-inputs.md
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _rel import REPO  # noqa: E402

DOC = REPO / "docs" / "bad-inputs.md"
TRAIN, TEST = "store/train.h5", "store/test.h5"
TH = ["train-head", "--train", TRAIN, "--id", TEST, "--epochs", "1", "--out", "run", "--no-progress"]
EX = ["extract", "--model", "small_cnn", "--weights", "none", "--image-size", "16", "--cache-dir", "store2", "--no-progress"]
FT = ["finetune", "--model", "small_cnn", "--weights", "none", "--dataset", "digits:test", "--image-size", "16",
      "--max-steps", "1", "--no-progress"]

# (group, bad input, argv, a fragment the message must contain: the culprit or the fix)
CASES = [
    ("unknown names", "unknown model", [*EX[:2], "resnet5O", *EX[3:], "--dataset", "digits", "--split", "test"], "unknown"),
    ("unknown names", "unknown dataset", [*EX, "--dataset", "digitz", "--split", "test"], "digitz"),
    ("unknown names", "unknown baseline", ["baseline", "show", "cifar10-cifar10"], "did you mean"),
    ("unknown names", "unknown baseline for train-head", [*TH, "--baseline", "imagenet-objectnt"], "imagenet-objectnt"),
    ("unknown names", "unknown solver", [*TH, "--solver", "adam"], "adam"),
    ("unknown names", "unknown finetune recipe", [*FT, "--recipe", "paper-pretrianed", "--out", "ft"], "paper-pretrianed"),
    ("unknown names", "unknown feature kind", [*EX, "--dataset", "digits", "--split", "test", "--feature", "pre-projection"], "pre-projection"),
    ("unknown names", "unknown cache entry", ["cache", "info", "nosuchentry", "--cache-dir", "store"], "nosuchentry"),
    ("dataset:split", "split the dataset does not have", [*EX, "--dataset", "digits", "--split", "val"], "val"),
    ("dataset:split", "dataset:split with a bad split in train-head", ["train-head", "--train", "digits:val", "--id", "digits:test", "--model", "small_cnn",
                                                                         "--weights", "none", "--image-size", "16", "--cache-dir", "store", "--out", "run"], "val"),
    ("dataset:split", "split that walks out of a folder dataset", [*EX, "--dataset", "folder:imgs", "--split", "../imgs"], "subfolder"),
    ("missing data", "dataset not on disk", [*EX, "--dataset", "cifar10", "--split", "test", "--data-root", "empty"], "cifar10"),
    ("missing data", "folder dataset that does not exist", [*EX, "--dataset", "folder:nowhere", "--split", "all"], "nowhere"),
    ("missing data", "folder without class subfolders", [*EX, "--dataset", "folder:empty", "--split", "all"], "class subfolders"),
    ("missing data", "feature file that does not exist", [*TH[:2], "store/nofile.h5", *TH[3:]], "nofile.h5"),
    ("missing data", "features not extracted yet", [*TH[:2], "mnist5k:test", *TH[3:], "--model", "small_cnn", "--weights", "none"], "probekit extract"),
    ("missing data", "weights file that does not exist", [*EX[:4], "nope.pth", *EX[5:], "--dataset", "digits", "--split", "test"], "nope.pth"),
    ("missing data", "C-score file that does not exist", [*TH, "--subset", "cscore=easiest:5", "--cscores", "nope.npz"], "nope.npz"),
    ("corrupt data", "corrupt image", [*EX, "--dataset", "folder:imgs", "--split", "all"], "--skip-bad"),
    ("corrupt data", "feature file that is not HDF5", [*TH[:2], "store/junk.h5", *TH[3:]], "junk.h5"),
    ("corrupt data", "feature file altered after it was written", [*TH[:4], "store/altered.h5", *TH[5:]], "checksum"),
    ("corrupt data", "interrupted (partial) feature file", [*TH[:2], "store/train.h5.partial", *TH[3:]], "resume"),
    ("labels", "ID labels outside the train label range", [*TH[:4], "store/label10.h5", *TH[5:]], "label 10"),
    ("labels", "ID set of another label space", [*TH[:4], "store/cifar_space.h5", *TH[5:]], "label space"),
    ("labels", "OOD set equal to the ID set", [*TH, "--ood", TEST], "is the ID set"),
    ("labels", "OOD set given twice", [*TH, "--ood", TRAIN, TRAIN], "more than once"),
    ("features", "NaN features", [*TH[:2], "store/nan.h5", *TH[3:]], "NaN"),
    ("features", "Inf features", [*TH[:4], "store/inf.h5", *TH[5:]], "Inf"),
    ("features", "features of another dimension", [*TH[:4], "store/dim64.h5", *TH[5:]], "dimension"),
    ("subsets", "empty subset", [*TH, "--subset", "per-class=0"], "per-class"),
    ("subsets", "subset larger than the data", [*TH, "--subset", "per-class=100000"], "per-class"),
    ("subsets", "unknown subset kind", [*TH, "--subset", "perclass=5"], "perclass"),
    ("subsets", "--cscores without a cscore subset", [*TH, "--cscores", "scores.npz"], "--subset"),
    ("hyper-parameters", "λ grid with zero", [*TH, "--solver", "lbfgs", "--val-fraction", "0.2", "--l2-grid", "0", "1"], "--l2-grid"),
    ("hyper-parameters", "λ grid with a negative value", [*TH, "--solver", "lbfgs", "--val-fraction", "0.2", "--l2-grid", "-1"], "--l2-grid"),
    ("hyper-parameters", "λ grid with NaN", [*TH, "--solver", "lbfgs", "--val-fraction", "0.2", "--l2-grid", "nan"], "--l2-grid"),
    ("hyper-parameters", "λ sweep without validation data", [*TH, "--solver", "lbfgs"], "--val"),
    ("hyper-parameters", "learning rate 0", [*TH, "--lr", "0"], "--lr"),
    ("hyper-parameters", "negative learning rate", [*TH, "--lr", "-0.1"], "--lr"),
    ("hyper-parameters", "NaN learning rate", [*TH, "--lr", "nan"], "--lr"),
    ("hyper-parameters", "infinite learning rate", [*TH, "--lr", "inf"], "--lr"),
    ("hyper-parameters", "finetune learning rate 0", [*FT, "--lr", "0", "--out", "ft"], "lr"),
    ("hyper-parameters", "finetune NaN learning rate", [*FT, "--lr", "nan", "--out", "ft"], "lr"),
    ("hyper-parameters", "image size too small", ["extract", "--model", "small_cnn", "--weights", "none", "--image-size", "4", "--cache-dir", "store2",
                                                 "--dataset", "digits", "--split", "test"], "image size"),
    ("percentages", "validation share as a percentage", [*TH, "--solver", "lbfgs", "--val-fraction", "20"], "20"),
    ("percentages", "held-out --val TRAIN%F as a percentage", [*TH, "--solver", "lbfgs", "--val", f"{TRAIN}%20"], "20"),
    ("percentages", "baseline CSV in percent", ["baseline", "fit", "--csv", "pct.csv"], "percentage"),
    ("percentages", "baseline point in percent", ["baseline", "show", "fit.json", "--point", "93", "85"], "fraction"),
    ("files of the wrong kind", "weights of another architecture", [*EX[:4], "otherarch.pth", *EX[5:], "--dataset", "digits", "--split", "test"], "another architecture"),
    ("files of the wrong kind", "weights file that is not a state dict", [*EX[:4], "notweights.pth", *EX[5:], "--dataset", "digits", "--split", "test"], "state dict"),
    ("files of the wrong kind", "resume checkpoint of another run", [*FT, "--out", "otherrun", "--resume"], "another configuration"),
    ("files of the wrong kind", "testbed CSV of the wrong schema", ["baseline", "fit", "--csv", "wrong_schema.csv"], "model,id,ood"),
    ("files of the wrong kind", "baseline JSON of the wrong schema", [*TH, "--baseline", "wrong_baseline.json"], "baseline"),
    ("files of the wrong kind", "not a run folder", ["plot", "empty", "--format", "png"], "not a probekit run folder"),
    ("files of the wrong kind", "incomplete (killed) run to fit a baseline on", ["baseline", "fit", "--runs", "killed_run", "killed_run", "killed_run"], "incomplete"),
    ("files of the wrong kind", "a complete run folder as --out", [*TH[:-3], "--out", "done_run", "--no-progress"], "--overwrite"),
    ("files of the wrong kind", "a folder as a feature file", [*TH[:2], "store/", *TH[3:]], "is a folder"),
    ("files of the wrong kind", "an empty cache entry name", ["cache", "info", "", "--cache-dir", "store"], "empty name"),
    ("run folders", "a folder of the user's own files as --out", [*TH[:-3], "--out", "mine", "--no-progress"], "did not write"),
    ("run folders", "a user's files in a run folder with --overwrite", [*TH[:-3], "--out", "done_mixed", "--overwrite", "--no-progress"],
     "notes.txt"),
    ("run folders", "--out inside the feature store", [*TH[:-3], "--out", "store/run", "--cache-dir", "store", "--no-progress"],
     "feature store"),
    ("mixed inputs", "ID features from other weights", [*TH[:4], "store/otherweights.h5", *TH[5:]], "weight_id"),
    ("mixed inputs", "OOD features at another image size", [*TH, "--ood", "store/size24.h5"], "transform_id"),
    ("mixed inputs", "finetune OOD set equal to the ID set", [*FT, "--ood", "digits:test", "--out", "ft"], "ID test set"),
    ("hyper-parameters", "a seed given twice", [*TH, "--seeds", "0", "0"], "repeats"),
    ("hyper-parameters", "a learning rate given twice", [*TH, "--lr", "0.1", "0.1"], "repeats"),
    ("hyper-parameters", "L-BFGS options under --solver sgd", [*TH, "--l2-grid", "1", "--refit"], "--solver lbfgs"),
    ("hyper-parameters", "--val together with --val-fraction", [*TH, "--solver", "lbfgs", "--val", TEST, "--val-fraction", "0.2"],
     "one of them"),
]
_GROUPS = list(dict.fromkeys(g for g, *_ in CASES))
CASES.sort(key=lambda c: _GROUPS.index(c[0]))  # one section per group on the page, cases in the order given
IDS = [f"{g}: {what}" for g, what, _, _ in CASES]


def _rewrite(src: Path, dst: Path, *, features=None, labels=None, attrs: dict | None = None) -> None:
    """A complete, checksummed entry from `src` with some arrays or attributes replaced."""
    from probekit import cache

    fs = cache.load_features(src)
    feats = fs.features if features is None else features
    labs = fs.labels if labels is None else labels
    keep = {k: v for k, v in fs.attrs.items() if k not in ("checksum", "rows", "skipped", "complete", "committed_rows",
                                                          "committed_positions", "committed_skipped", "dim")}
    keep.update(attrs or {})
    keep["key"] = f"crafted-{dst.name}"
    w = cache.FeatureWriter(dst, attrs=keep, total=len(labs), dim=feats.shape[1])
    w.append(feats, labs, fs.index, positions=len(labs))
    w.finish()
    w.close()


def build_world(root: Path, ref_train_path: Path, ref_test_path: Path) -> Path:
    """The folder every case runs in: real entries, crafted files, a finished and a killed run."""
    import torch
    from PIL import Image

    from probekit import runlog
    from probekit.finetune.checkpoint import checkpoint_path, save_checkpoint

    store = root / "store"
    store.mkdir(parents=True)
    shutil.copy(ref_train_path, store / "train.h5")
    shutil.copy(ref_test_path, store / "test.h5")
    import h5py

    for name, src in (("train.h5", ref_train_path), ("test.h5", ref_test_path)):
        with h5py.File(store / name, "r+") as f:  # the rebuild command names this store, not the reference's
            f.attrs["extract_command"] = str(f.attrs["extract_command"]).replace(str(src.parent), "store")
    shutil.copy(store / "train.h5", store / "train.h5.partial")
    with h5py.File(store / "train.h5.partial", "r+") as f:
        f.attrs["complete"] = False
    from probekit import cache

    test = cache.load_features(store / "test.h5")
    bad = test.features.copy()
    bad[3, 5] = np.nan
    _rewrite(store / "test.h5", store / "nan.h5", features=bad)
    bad = test.features.copy()
    bad[7, 1] = np.inf
    _rewrite(store / "test.h5", store / "inf.h5", features=bad)
    _rewrite(store / "test.h5", store / "dim64.h5", features=np.ascontiguousarray(test.features[:, :64]))
    labels = test.labels.copy()
    labels[0] = 10
    _rewrite(store / "test.h5", store / "label10.h5", labels=labels)
    from probekit.datasets.cifar import CIFAR10_CLASSES

    _rewrite(store / "test.h5", store / "cifar_space.h5", attrs={"label_space": "cifar10", "classes": CIFAR10_CLASSES})
    _rewrite(store / "test.h5", store / "otherweights.h5", attrs={"weight_id": "random-init:seed=1", "weights": "none"})
    _rewrite(store / "test.h5", store / "size24.h5", attrs={"dataset": "mnist5k", "image_size": 24,
                                                           "transform_id": "resize=24,crop=24,bilinear,mean=0.5,std=0.5"})
    shutil.copy(store / "test.h5", store / "altered.h5")
    with h5py.File(store / "altered.h5", "r+") as f:
        f["features"][0, 0] += 1
    (store / "junk.h5").write_text("not hdf5\n")
    for d in ("empty", "store2", "empty/sub"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "empty" / "sub").rmdir()
    imgs = root / "imgs"
    for cls in ("cat", "dog"):
        (imgs / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(imgs / cls / f"{i}.png")
    (imgs / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 8)
    torch.save(torch.nn.Linear(3, 4).state_dict(), root / "otherarch.pth")
    torch.save({"lr": 0.1, "note": "not a state dict"}, root / "notweights.pth")
    np.savez(root / "scores.npz", scores=np.zeros(3))
    from probekit.robustness import fit_baseline

    fit_baseline([0.6, 0.7, 0.8, 0.9], [0.4, 0.5, 0.65, 0.8], names=list("abcd")).save(root / "fit.json")
    (root / "pct.csv").write_text("model,id,ood\na,55,40\nb,60,45\nc,70,55\n")
    (root / "wrong_schema.csv").write_text("name,top1,top1_shift\na,0.5,0.4\nb,0.6,0.5\nc,0.7,0.6\n")
    (root / "wrong_baseline.json").write_text(json.dumps({"fits": {}}))
    runlog.RunWriter(root / "otherrun", {"mode": "finetune", "model": "resnet18"}).close()  # a killed run of another config
    save_checkpoint(checkpoint_path(root / "otherrun"), {"config": json.dumps({"model": "resnet18", "lr": 0.1}), "step": 3})
    (root / "mine").mkdir()
    (root / "mine" / "config.json").write_text('{"my": "own config"}\n')
    for name, complete in (("done_run", True), ("killed_run", False), ("done_mixed", True)):
        w = runlog.RunWriter(root / name, {"command": "train-head"})
        w.log({"step": 0, "epoch": 0, "head": "lr=0.1,seed=0", "loss": 1.0, "acc_id": 0.5, "acc_ood": {"x:test": 0.4}})
        if complete:
            w.finish({})
        w.close()
    (root / "done_mixed" / "notes.txt").write_text("my notes on this run\n")
    return root


def run_case(argv: list[str], world: Path) -> tuple[int, str, str]:
    """Run the CLI in `world`; return (exit status, stdout, stderr) with the folder shown as $WORK."""
    import contextlib
    import io

    from probekit.cli import main

    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(world)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse
                rc = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(cwd)
    real = str(Path(world).resolve())
    clean = lambda s: s.replace(real, "$WORK").replace(str(world), "$WORK")  # noqa: E731
    return rc, clean(out.getvalue()), clean(err.getvalue())


@pytest.fixture(scope="module")
def world(tmp_path_factory, ref_train, ref_test):
    return build_world(tmp_path_factory.mktemp("bad-inputs"), ref_train.path, ref_test.path)


MESSAGES: dict[str, str] = {}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_input_exits_2_with_one_line(case, world):
    group, what, argv, fragment = case
    rc, _, err = run_case(argv, world)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("probekit: error: ") and "Traceback" not in err, err
    assert fragment.lower() in lines[0].lower(), lines[0]
    MESSAGES[f"{group}: {what}"] = lines[0]


def render(messages: dict[str, str]) -> str:
    rows = ["# Bad inputs and what probekit says",
            "",
            "Every input below was tried; each ends the command with exit status 2 and exactly one line on",
            "stderr that names the culprit and the fix (no traceback). Generated by",
            "`python docs/gen_bad_inputs.py` from the cases in `tests/reliability/test_bad_inputs.py`, which",
            "also runs them (and checks this part of the page is current); the second part, every option",
            "of every command fuzzed with hostile values, comes from `tests/reliability/test_fuzz_cli.py`.",
            "`$WORK` stands for the folder the command ran in; the crafted files are built there by",
            "`build_world` in the same file (real `small_cnn` entries of the bundled digits).",
            "",
            f"{len(CASES)} bad inputs.",
            ""]
    group = None
    for g, what, argv, _ in CASES:
        if g != group:
            rows += ["", f"## {g}", "", "| bad input | command | message |", "|---|---|---|"]
            group = g
        msg = messages.get(f"{g}: {what}", "?")
        cmd = "probekit " + " ".join(argv)
        esc = lambda s: s.replace("|", "\\|")  # noqa: E731
        rows.append(f"| {esc(what)} | `{esc(cmd)}` | {esc(msg.removeprefix('probekit: error: '))} |")
    return "\n".join(rows) + "\n"


STABLE = 40  # message characters compared: the tail may quote library text (PIL, HDF5, timm names) that varies by version


FUZZ_MARK = "\n## Every option, hostile values"  # where test_fuzz_cli's part of the page begins


def _table(text: str) -> list[tuple[str, str, str]]:
    text = text.split(FUZZ_MARK)[0]
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and not line.startswith("| bad input")]
    return [(r[0], r[1], r[2][:STABLE]) for r in rows]


def test_zz_catalogue_page_is_current(world):
    """docs/bad-inputs.md lists exactly these cases, commands and messages (regenerate with the script)."""
    messages = {f"{g}: {what}": run_case(argv, world)[2].strip() for g, what, argv, _ in CASES}
    assert _table(DOC.read_text()) == _table(render(messages)), "docs/bad-inputs.md is stale: run python tests/reliability/test_bad_inputs.py"
    assert f"{len(CASES)} bad inputs." in DOC.read_text()


def catalogue_messages() -> dict[str, str]:
    """Every case's message, from fresh reference entries (what docs/gen_bad_inputs.py renders)."""
    import tempfile

    from _rel import reference_entry

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train, test = reference_entry(tmp / "ref-train", "train"), reference_entry(tmp / "ref-test", "test")
        world_dir = build_world(tmp / "bad-inputs", train.path, test.path)
        return {f"{g}: {what}": run_case(argv, world_dir)[2].strip() for g, what, argv, _ in CASES}
