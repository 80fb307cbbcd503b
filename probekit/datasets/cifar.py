"""CIFAR-10 (python pickle batches) and CIFAR-10.1 (v6 default, v4) from .npy files.

Layouts (under the data root):
  cifar10/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}   (torchvision's layout)
  cifar10.1/cifar10.1_v6_data.npy, cifar10.1_v6_labels.npy                 (and _v4_)
"""

from __future__ import annotations

import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np

from probekit import safe_pickle
from probekit.datasets.base import ArrayDataset
from probekit.datasets.download import fetch, fetch_and_extract, missing
from probekit.datasets.registry import register_dataset
from probekit.errors import UserError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR101_URL = "https://github.com/modestyachts/CIFAR-10.1/raw/master/datasets/{file}"


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = safe_pickle.load(f, encoding="latin1")  # plain data only: a crafted batch cannot run code
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{path} is not a readable CIFAR-10 python batch ({type(e).__name__}: {e}); "
                        f"re-download {CIFAR10_URL}") from e
    if len(data) != len(labels):
        raise UserError(f"{path}: {len(data)} images but {len(labels)} labels; re-download {CIFAR10_URL}")
    return np.ascontiguousarray(data), labels


@lru_cache(maxsize=4)
def _cifar10_arrays(folder: str, split: str, _stamp: tuple) -> tuple[np.ndarray, np.ndarray]:
    parts = [_read_batch(Path(folder) / f) for f in CIFAR10_FILES[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    images.setflags(write=False)
    return images, labels


def _stamp(paths: list[Path]) -> tuple:
    return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)


@register_dataset("cifar10", ("train", "test"), label_space="cifar10")
def build_cifar10(split: str, *, root: Path, transform=None, download=False) -> ArrayDataset:
    base = Path(root) / "cifar10"
    folder = base / CIFAR10_FOLDER
    files = [folder / f for f in CIFAR10_FILES[split]]
    if not all(f.is_file() for f in files):
        if download:
            fetch_and_extract(CIFAR10_URL, base, "cifar-10-python.tar.gz")
        if not all(f.is_file() for f in files):
            absent = [f.name for f in files if not f.is_file()]
            raise missing(f"CIFAR-10 {split} batches ({', '.join(absent)})", folder,
                          f"unpack cifar-10-python.tar.gz into {base}", CIFAR10_URL)
    images, labels = _cifar10_arrays(str(folder), split, _stamp(files))
    return ArrayDataset(name="cifar10", split=split, images=images, targets=labels, classes=CIFAR10_CLASSES,
                        label_space="cifar10", root=str(folder.resolve()),
                        origin=str(folder / ("test_batch" if split == "test" else "data_batch_[1-5]")),
                        transform=transform)


@lru_cache(maxsize=4)
def _cifar101_arrays(data_path: str, labels_path: str, _stamp: tuple) -> tuple[np.ndarray, np.ndarray]:
    try:
        images = np.load(data_path, allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False).astype(np.int64)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read CIFAR-10.1 arrays {data_path} / {labels_path} ({e}); re-download them") from e
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise UserError(f"{data_path}: expected uint8 [N,32,32,3], got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise UserError(f"{data_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise UserError(f"{labels_path}: labels must be 0..9")
    images.setflags(write=False)
    return images, labels


def _build_cifar101(version: str, name: str, split: str, root: Path, transform, download: bool) -> ArrayDataset:
    folder = Path(root) / "cifar10.1"
    files = {kind: folder / f"cifar10.1_{version}_{kind}.npy" for kind in ("data", "labels")}
    for kind, path in files.items():
        if not path.is_file():
            url = CIFAR101_URL.format(file=path.name)
            if download:
                fetch(url, path)
            else:
                raise missing(f"CIFAR-10.1 {version} {kind} file", path,
                              f"put {path.name} from the CIFAR-10.1 repository in {folder}", url)
    images, labels = _cifar101_arrays(str(files["data"]), str(files["labels"]), _stamp(list(files.values())))
    return ArrayDataset(name=name, split=split, images=images, targets=labels, classes=CIFAR10_CLASSES,
                        label_space="cifar10", root=str(folder.resolve()), origin=str(files["data"]),
                        transform=transform)


@register_dataset("cifar10.1", ("test",), label_space="cifar10")
def build_cifar101(split: str, *, root: Path, transform=None, download=False) -> ArrayDataset:
    """CIFAR-10.1 v6 (2,000 images), the version the paper's CIFAR-10.1 numbers use."""
    return _build_cifar101("v6", "cifar10.1", split, root, transform, download)


@register_dataset("cifar10.1-v4", ("test",), label_space="cifar10")
def build_cifar101_v4(split: str, *, root: Path, transform=None, download=False) -> ArrayDataset:
    """CIFAR-10.1 v4 (2,021 images)."""
    return _build_cifar101("v4", "cifar10.1-v4", split, root, transform, download)



def cifar10_test_labels(data_root=None, *, download: bool = False) -> np.ndarray:
    """CIFAR-10 test labels in test-batch order, from the dataset on disk (or downloaded on request)."""
    from probekit.datasets.registry import create_dataset

    try:
        return np.asarray(create_dataset("cifar10", "test", root=data_root, download=download).targets, dtype=np.int64)
    except UserError as e:
        raise UserError(f"{e}; the CIFAR-10 baseline needs the CIFAR-10 test labels (or pass --labels FILE.npy)") from None
