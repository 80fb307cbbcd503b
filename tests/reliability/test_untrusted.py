"""Files from elsewhere are data, never code: crafted pickles are refused, attributes are not evaluated,
dataset paths resolve to what the user named, and run / cache files appear only by rename.

Every crafted pickle would create a marker file when unpickled; each test checks the refusal
AND that the marker never appears.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from probekit import cache
from probekit.cli import main
from probekit.errors import UserError

REPO = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this calls open(marker, "w"): proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "code from an untrusted file ran"


def _torch_file(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_weights_file_with_code_is_refused(tmp_path, marker, capsys):
    from probekit.backbones import create_backbone
    from probekit.backbones.small_cnn import build_network

    state = dict(build_network().state_dict())
    state["extra"] = Payload(marker)
    evil = _torch_file(tmp_path / "evil.pth", state)
    with pytest.raises(UserError, match="weights_only=True"):
        create_backbone("small_cnn", str(evil))
    args = ["extract", "--model", "small_cnn", "--dataset", "digits", "--split", "test", "--weights", str(evil),
            "--cache-dir", str(tmp_path / "c"), "--no-progress"]
    assert main(args) == 2
    assert "probekit: error: cannot load weights" in capsys.readouterr().err


def test_finetune_checkpoint_with_code_is_refused(tmp_path, marker):
    from probekit.finetune.checkpoint import load_checkpoint

    evil = _torch_file(tmp_path / "last.pt", {"config": "{}", "model": Payload(marker)})
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(evil, {})


def test_heads_file_loads_weights_only_and_code_is_refused(tmp_path, marker, feature_store, ref_train, ref_test):
    """Nothing in probekit reads heads.pt back; the documented way (weights_only=True) works and is safe."""
    out = tmp_path / "run"
    assert main(["train-head", "--train", str(feature_store / ref_train.path.name), "--id", str(feature_store / ref_test.path.name),
                 "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    heads = torch.load(out / "heads.pt", weights_only=True)
    assert heads["weight"].shape[-1] == 128 and heads["classes"] == ref_train.classes
    evil = _torch_file(tmp_path / "heads.pt", {**heads, "x": Payload(marker)})
    with pytest.raises(pickle.UnpicklingError):
        torch.load(evil, weights_only=True)


def test_text_cache_with_an_object_array_is_not_unpickled(tmp_path, marker):
    from probekit.zeroshot.text_cache import load_text_embeddings

    path = tmp_path / "emb.npz"
    meta = np.empty(1, dtype=object)
    meta[0] = Payload(marker)
    np.savez(path, weights=np.zeros((4, 2), np.float32), meta=meta)
    assert load_text_embeddings(path, "anykey") is None  # treated as damaged: recomputed and overwritten


def test_cifar_batch_with_code_is_refused(tmp_path, marker):
    from probekit.datasets import create_dataset

    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ("test_batch",):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": Payload(marker)}, f)
    with pytest.raises(UserError, match="not a readable CIFAR-10 python batch.*refusing to load io.open"):
        create_dataset("cifar10", "test", root=tmp_path)


def test_cscore_file_object_arrays_are_data_only(tmp_path, marker):
    from probekit.datasets.subsets import load_cscores

    labels = np.array([0, 1, 0, 1])
    good = tmp_path / "good.npz"
    np.savez(good, filenames=np.array(["a/1.JPEG", "a/2.JPEG", "b/3.JPEG", "b/4.JPEG"], dtype=object),
             scores=np.array([0.1, 0.2, 0.3, 0.4]))
    got = load_cscores(good, labels, filenames=["1.JPEG", "2.JPEG", "3.JPEG", "4.JPEG"])
    assert np.allclose(got, [0.1, 0.2, 0.3, 0.4])  # a legitimate object array still loads
    names = np.empty(4, dtype=object)
    names[:] = ["1.JPEG", "2.JPEG", "3.JPEG", Payload(marker)]
    evil = tmp_path / "evil.npz"
    np.savez(evil, filenames=names, scores=np.array([0.1, 0.2, 0.3, 0.4]))
    with pytest.raises(UserError, match="holds code, not data"):
        load_cscores(evil, labels, filenames=["1.JPEG", "2.JPEG", "3.JPEG", "4.JPEG"])


def test_no_source_file_unpickles_or_evaluates(tmp_path):
    """Every torch.load passes weights_only=True; no pickle.load(s), allow_pickle=True, eval or exec."""
    offences = []
    for path in sorted((REPO / "probekit").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if name == "torch.load" and kw.get("weights_only") != "True":
                offences.append(f"{where} torch.load without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "eval", "exec", "marshal.loads", "yaml.load"):
                offences.append(f"{where} {name}")
            if name.endswith("np.load") and kw.get("allow_pickle") not in (None, "False"):
                offences.append(f"{where} np.load(allow_pickle={kw.get('allow_pickle')})")
    assert not offences, offences


def test_hdf5_attributes_are_data_never_code(tmp_path, ref_test, capsys):
    path = tmp_path / ref_test.path.name
    shutil.copy(ref_test.path, path)
    marker = tmp_path / "PWNED"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    with h5py.File(path, "r+") as f:
        f.attrs["classes"] = code  # a JSON attribute that is not JSON
        f.attrs["backbone"] = code
        f.attrs["extract_command"] = code
        f.attrs["versions"] = json.dumps({"torch": code})
    fs = cache.load_features(path)  # the arrays and their checksum are intact
    assert fs.attrs["classes"] == code and fs.attrs["backbone"] == code and fs.attrs["versions"] == {"torch": code}
    assert main(["cache", "info", str(path)]) == 0
    assert code in capsys.readouterr().out
    with h5py.File(path, "r+") as f:
        f["labels"][0] = 9 - f["labels"][0]
    with pytest.raises(UserError) as info:  # the rebuild command is quoted, not run
        cache.load_features(path)
    assert code in str(info.value)
    assert not marker.exists()


def test_dataset_paths_resolve_only_to_what_was_named(tmp_path, monkeypatch):
    from probekit.datasets import create_dataset

    tree = tmp_path / "x"
    for cls in ("a", "b"):
        (tree / cls).mkdir(parents=True)
        from PIL import Image

        Image.new("RGB", (8, 8)).save(tree / cls / "0.png")
    work = tmp_path / "deep" / "er"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    ds = create_dataset("folder:../../x", "all")
    assert Path(ds.root) == tree.resolve() and ds.name == f"folder:{tree.resolve()}"
    assert ds.classes == ["a", "b"] and len(ds) == 2
    for bad_split in ("../x", "..", "a/../../x", "/etc"):
        with pytest.raises(UserError, match="must be 'all' or the name of one subfolder"):
            create_dataset("folder:../../x", bad_split)
    for bad_split in ("../train", "train/..", "/etc/passwd"):
        with pytest.raises(UserError):
            create_dataset("digits", bad_split)


def test_run_files_appear_only_by_rename(tmp_path, feature_store, ref_train, ref_test, monkeypatch):
    """A crash at the moment summary.json would appear leaves no summary and no temporary file."""
    import probekit.atomic as atomic

    real = os.replace

    def crash_at_summary(src, dst, *a, **k):
        if str(dst).endswith("summary.json"):
            raise KeyboardInterrupt
        return real(src, dst, *a, **k)

    monkeypatch.setattr(atomic.os, "replace", crash_at_summary)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        from probekit.heads.config import TrainHeadConfig
        from probekit.heads.run import train_head

        train_head(TrainHeadConfig(str(feature_store / ref_train.path.name), str(feature_store / ref_test.path.name), epochs=1,
                                   out=str(out), progress=False))
    names = {p.name for p in out.iterdir()} - {"checkpoints"}  # an SGD checkpoint may exist (every 30 s)
    assert names == {".probekit-run", "config.json", "heads.pt", "log.jsonl"}
    from probekit import runlog

    assert not runlog.is_complete(out)
