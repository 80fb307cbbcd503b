"""Issue 13 cases 2 and 6: the inputs of one train-head run must match, and what it records comes from them.

Synthetic entries (digits pixels, 64-d) written with the cache's own writer: one reference
extraction, and copies that differ in exactly one extraction field.
"""

import logging
import os
import stat

import pytest

from _features import write_feature_entry
from probekit.cli import main
from probekit.runlog import read_run

DIGITS = [str(i) for i in range(10)]


def entry(folder, name, X, y, **kw):
    kw = {"backbone": "pixels", "weight_id": "sha256:aaaa", "weights": "pixels.pth", "input_size": 8, **kw}
    path = write_feature_entry(folder / name, "digits", name, X, y, classes=DIGITS, label_space="digits", **kw)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("inputs")
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    return {
        "train": entry(folder, "train", X[:1200], y[:1200]),
        "test": entry(folder, "test", X[1200:], y[1200:]),
        "other_weights": entry(folder, "noweights", X[1200:], y[1200:], weight_id="random-init:seed=0", weights="none"),
        "other_size": entry(folder, "size16", X[1200:], y[1200:], transform_id="resize=18,crop=16", image_size=16, input_size=16),
        "fp16": entry(folder, "fp16", X[1200:], y[1200:], precision="fp16"),
        "one_class": entry(folder, "one", X[:1200][y[:1200] == 3], y[:1200][y[:1200] == 3]),
    }


def train_head(files, out, *extra, train="train", id_set="test"):
    return main(["train-head", "--train", files[train], "--id", files[id_set], "--epochs", "1", "--batch-size", "400",
                 "--out", str(out), "--no-progress", *extra])


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("probekit: error:"), err
    return err[0]


@pytest.mark.parametrize("other,field", [("other_weights", "weight_id"), ("other_size", "transform_id"), ("fp16", "precision")])
def test_features_of_another_extraction_are_refused(files, tmp_path, capsys, other, field):
    """Case 2: --id features of the same backbone with other weights (or image size, precision) are not mixed silently."""
    for args in ({"id_set": other}, {"id_set": "test", "extra": ("--ood", files[other])}):
        rc = train_head(files, tmp_path / "r", *args.get("extra", ()), id_set=args["id_set"])
        err = one_line(capsys)
        assert rc == 2 and f"differ in {field}" in err and files[other] in err and files["train"] in err
        assert "--allow-mixed-features" in err
    assert not (tmp_path / "r").exists()


def test_allow_mixed_features_is_recorded(files, tmp_path):
    out = tmp_path / "mixed"
    assert train_head(files, out, "--ood", files["other_weights"], "--allow-mixed-features") == 0
    config = read_run(out).config
    assert config["allow_mixed_features"] is True
    assert [(m["role"], m["field"], m["value"], m["reference"]) for m in config["mixed_features"]] == [
        ("OOD", "weight_id", "random-init:seed=0", "sha256:aaaa")]
    assert config["inputs"]["ood:digits:noweights"]["weight_id"] == "random-init:seed=0"
    assert config["inputs"]["ood:digits:noweights"]["path"] == files["other_weights"]


def test_provenance_comes_from_the_files_not_cli_defaults(files, tmp_path):
    """Case 6: .h5 inputs record the weights and image size they were made with (not `default` / null)."""
    out = tmp_path / "prov"
    assert train_head(files, out) == 0
    config = read_run(out).config
    assert config["weights"] == "pixels.pth" and config["image_size"] == 8 and config["weight_id"] == "sha256:aaaa"
    assert config["inputs"]["train"]["weights"] == "pixels.pth" and config["inputs"]["id"]["path"] == files["test"]
    assert {"backbone", "weight_id", "transform_id", "feature_kind", "precision", "dtype"} <= set(config["inputs"]["id"])


@pytest.mark.parametrize("extra,needle", [
    (["--seeds", "0", "0"], "seeds (--seeds) repeats 0"),
    (["--lr", "0.1", "0.1"], "lrs (--lr) repeats 0.1"),
    (["--l2-grid", "1"], "--l2-grid is an option of the L-BFGS sweep"),
    (["--refit"], "--refit is an option of the L-BFGS sweep"),
    (["--val-fraction", "0.2"], "--val-fraction is an option of the L-BFGS sweep"),
    (["--solver", "lbfgs", "--val", "TEST", "--val-fraction", "0.2"], "pass one of them"),
])
def test_contradictory_options_are_refused(files, tmp_path, capsys, extra, needle):
    """Case 6: duplicate heads, L-BFGS options under sgd, --val with --val-fraction: one line, nothing written."""
    extra = [files["test"] if e == "TEST" else e for e in extra]
    assert train_head(files, tmp_path / "r", *extra) == 2
    assert needle in one_line(capsys)
    assert not (tmp_path / "r").exists()


def test_n_train_excludes_held_out_validation_rows(files, tmp_path):
    out = tmp_path / "lb"
    assert train_head(files, out, "--solver", "lbfgs", "--val-fraction", "0.25", "--l2-grid", "1", "10", "--max-iter", "5") == 0
    run = read_run(out)
    assert run.config["n_val"] > 0 and run.config["n_train"] + run.config["n_val"] == run.config["n_train_total"] == 1200
    assert run.summary["n_train"] == run.config["n_train"]


def test_one_class_training_warns(files, tmp_path, capsys):
    assert train_head(files, tmp_path / "one", train="one_class") == 0
    err = capsys.readouterr().err
    assert "probekit: warning:" in err and "holds only class 3" in err


def test_output_files_follow_the_umask(files, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "mode"
        assert train_head(files, out, "--save-predictions", "--ood", files["train"]) == 0
    finally:
        os.umask(old)
    for name in ("config.json", "summary.json", "heads.pt", "predictions.npz", "log.jsonl"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


def test_empty_class_folder_warns(tmp_path, caplog):
    from PIL import Image

    from probekit.datasets.folder import FolderDataset

    for cls, n in (("cat", 2), ("dog", 0), ("emu", 1)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.new("RGB", (4, 4)).save(tmp_path / cls / f"{i}.png")
    with caplog.at_level(logging.WARNING, logger="probekit"):
        ds = FolderDataset(tmp_path)
    assert ds.classes == ["cat", "dog", "emu"] and len(ds) == 3
    assert "1 of 3 class folders hold no images (dog)" in caplog.text
