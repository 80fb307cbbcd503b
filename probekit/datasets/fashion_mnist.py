"""Fashion-MNIST from IDX files (gzipped or not), parsed with numpy.

Looked up in `<data root>/fashion-mnist/`, then in Debian's
`/usr/share/datasets/fashion-mnist/` (package `dataset-fashion-mnist`).
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np

from probekit.datasets.base import ArrayDataset
from probekit.datasets.download import fetch, missing
from probekit.datasets.registry import register_dataset
from probekit.errors import UserError

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{file}"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (LeCun's MNIST format; `.gz` is decompressed)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read IDX file {path} ({e}); re-download it") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number); re-download it")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: truncated IDX header; re-download it")
    shape = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != need:
        raise UserError(f"{path}: IDX header says {shape} ({need} bytes) but the file holds {len(raw) - header}; "
                        f"re-download it")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


@lru_cache(maxsize=4)
def _arrays(images_path: str, labels_path: str, _stamp: tuple) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path).astype(np.int64)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise UserError(f"{images_path}: expected uint8 images [N,H,W], got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise UserError(f"{labels_path} has {labels.shape} labels for {len(images)} images in {images_path}")
    images.setflags(write=False)
    return images, labels


@register_dataset("fashion-mnist", ("train", "test"), label_space="fashion-mnist")
def build_fashion_mnist(split: str, *, root: Path, transform=None, download=False) -> ArrayDataset:
    own = Path(root) / "fashion-mnist"
    stems = FILES[split]
    folder = None
    for candidate in (own, DEBIAN_DIR):
        if all(_find(candidate, s) for s in stems):
            folder = candidate
            break
    if folder is None and download:
        for s in stems:
            if not _find(own, s):
                fetch(FASHION_URL.format(file=s + ".gz"), own / (s + ".gz"))
        folder = own
    if folder is None:
        raise missing(f"Fashion-MNIST {split} IDX files ({', '.join(stems)}[.gz])", own,
                      f"put them there, or apt-get install dataset-fashion-mnist (uses {DEBIAN_DIR})",
                      FASHION_URL.format(file=""))
    paths = [_find(folder, s) for s in stems]
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    images, labels = _arrays(str(paths[0]), str(paths[1]), stamp)
    return ArrayDataset(name="fashion-mnist", split=split, images=images, targets=labels, classes=FASHION_CLASSES,
                        label_space="fashion-mnist", root=str(folder.resolve()), origin=str(paths[0]),
                        transform=transform)
