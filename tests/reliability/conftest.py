"""Fixtures of the reliability suite (helpers live in _rel.py)."""

from __future__ import annotations


import pytest
import torch
from _rel import FT_ARGS, ft_records, reference_entry, run_cli


@pytest.fixture(scope="session")
def ref_train(tmp_path_factory):
    torch.set_num_threads(1)
    return reference_entry(tmp_path_factory.mktemp("ref-train"), "train")


@pytest.fixture(scope="session")
def ref_test(tmp_path_factory):
    torch.set_num_threads(1)
    return reference_entry(tmp_path_factory.mktemp("ref-test"), "test")


@pytest.fixture(scope="session")
def feature_store(tmp_path_factory, ref_train, ref_test):
    """A store holding complete small_cnn digits train/test entries (copies of the references)."""
    import shutil

    folder = tmp_path_factory.mktemp("store")
    for fs in (ref_train, ref_test):
        shutil.copy(fs.path, folder / fs.path.name)
    return folder


@pytest.fixture(scope="session")
def ft_reference(tmp_path_factory):
    """The log of an uninterrupted small_cnn finetune run (FT_ARGS)."""
    out = tmp_path_factory.mktemp("ft-ref")
    done = run_cli([*FT_ARGS, "--out", str(out)])
    assert done.returncode == 0, done.stderr
    return ft_records(out)
