"""A feature file altered or truncated after it was written is refused, naming the command that rebuilds it.

Complements tests/test_cache.py (API-level checksum / truncation on a synthetic entry): here
a real extracted entry is damaged at the byte level in many ways, and the refusal is checked
through the API, through `train-head` (exit 2, one line) and by rebuilding it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from _rel import extract_args

from probekit import cache
from probekit.cli import main
from probekit.errors import UserError

REBUILD = "probekit extract --model small_cnn --dataset digits --split test"


def _flip_data_byte(path: Path) -> None:
    """Flip one byte inside the stored features, found from HDF5's chunk table (not through h5py writes)."""
    with h5py.File(path, "r") as f:
        info = f["features"].id.get_chunk_info(0)
        offset = info.byte_offset + info.size // 2
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x10]))


def _truncate(fraction: float):
    def cut(path: Path) -> None:
        raw = path.read_bytes()
        path.write_bytes(raw[: int(len(raw) * fraction)])
    return cut


def _h5(edit):
    def apply(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            edit(f)
    return apply


def _shrink(f) -> None:
    f["features"].resize((f["features"].shape[0] - 1, f["features"].shape[1]))


def _relabel(f) -> None:
    f["labels"][0] = (f["labels"][0] + 1) % 10


def _reorder(f) -> None:
    idx = f["index"][...]
    f["index"][...] = idx[::-1]


def _scale(f) -> None:
    f["features"][...] = f["features"][...] * np.float32(1.0001)


def _drop_checksum(f) -> None:
    del f.attrs["checksum"]


def _rows_attr(f) -> None:
    f.attrs["rows"] = int(f.attrs["rows"]) + 5


def _uncomplete(f) -> None:
    f.attrs["complete"] = False


def _drop_labels(f) -> None:
    del f["labels"]


CORRUPTIONS = {
    "one byte flipped in the features (raw file)": (_flip_data_byte, r"checksum mismatch"),
    "features scaled by 1.0001": (_h5(_scale), r"checksum mismatch"),
    "one label changed": (_h5(_relabel), r"checksum mismatch"),
    "index reordered": (_h5(_reorder), r"checksum mismatch"),
    "checksum attribute deleted": (_h5(_drop_checksum), r"checksum mismatch"),
    "last row cut off (dataset resized)": (_h5(_shrink), r"array lengths disagree"),
    "rows attribute altered": (_h5(_rows_attr), r"array lengths disagree"),
    "labels dataset deleted": (_h5(_drop_labels), r"missing labels"),
    "complete flag cleared": (_h5(_uncomplete), r"incomplete"),
    "truncated to 90%": (_truncate(0.9), r"corrupt"),
    "truncated to 50%": (_truncate(0.5), r"corrupt"),
    "truncated to 1 KiB": (lambda p: p.write_bytes(p.read_bytes()[:1024]), r"corrupt"),
    "emptied (0 bytes)": (lambda p: p.write_bytes(b""), r"corrupt"),
    "overwritten with text": (lambda p: p.write_text("not an HDF5 file\n"), r"corrupt"),
}


@pytest.mark.parametrize("what", list(CORRUPTIONS))
def test_damaged_entry_is_refused_with_the_rebuild_command(tmp_path, ref_test, what):
    mutate, message = CORRUPTIONS[what]
    path = tmp_path / ref_test.path.name
    shutil.copy(ref_test.path, path)
    cache.load_features(path)  # intact before
    mutate(path)
    with pytest.raises(UserError, match=message) as info:
        cache.load_features(path)
    assert REBUILD in str(info.value)
    assert "\n" not in str(info.value)


def test_train_head_refuses_a_damaged_entry_and_a_rebuild_restores_it(tmp_path, ref_train, ref_test, capsys):
    store = tmp_path / "store"
    store.mkdir()
    train, test = store / ref_train.path.name, store / ref_test.path.name
    shutil.copy(ref_train.path, train)
    shutil.copy(ref_test.path, test)
    _flip_data_byte(test)
    args = ["train-head", "--train", str(train), "--id", str(test), "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("probekit: error: feature file") and "checksum mismatch" in err
    assert f"delete it and rerun `{REBUILD}" in err
    assert not (tmp_path / "run").exists()  # checked before the run folder is touched
    test.unlink()  # what the message says: delete it and rerun the command
    assert main(extract_args(store, split="test")) == 0
    assert np.array_equal(cache.load_features(test).features, ref_test.features)
    assert main(args) == 0
