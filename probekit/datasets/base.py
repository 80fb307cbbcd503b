"""The dataset interface every registered dataset follows, and the two storage kinds.

`ArrayDataset` serves images held in memory (bundled digits, CIFAR, IDX files);
`FileDataset` serves one image file per item (ImageNet-style folders). Both know
their labels without decoding any image, so the feature store can record labels
and the subset selectors can run before anything is read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from probekit.datasets.images import load_rgb


class ImageDataset(torch.utils.data.Dataset):
    """A labelled image dataset: RGB PIL images through an optional transform.

    Subclasses set `name`, `split`, `classes`, `label_space`, `targets`, `root`
    and implement `_image(i)`, `source(i)` and `_fingerprint()`.
    """

    name: str
    split: str
    classes: list[str]
    label_space: str
    targets: np.ndarray
    transform: Callable | None
    root: str

    def __len__(self) -> int:
        return int(len(self.targets))

    def __getitem__(self, i: int) -> tuple[Any, int]:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {self.name}:{self.split} ({len(self)} items)")
        img = self._image(i)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[i])

    def _image(self, i: int) -> Image.Image:  # pragma: no cover - abstract
        raise NotImplementedError

    def source(self, i: int) -> str:  # pragma: no cover - abstract
        """The file (or array row) item `i` comes from, for error messages."""
        raise NotImplementedError

    def _fingerprint(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        """What identifies the data on disk, JSON-able, for the feature store's attributes."""
        if getattr(self, "_described", None) is None:
            self._described = {
                "name": self.name,
                "split": self.split,
                "root": str(self.root),
                "n": len(self),
                "num_classes": len(self.classes),
                "label_space": self.label_space,
                "fingerprint": self._fingerprint(),
            }
        return dict(self._described)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}:{self.split}, n={len(self)}, classes={len(self.classes)}, root={self.root})"


class ArrayDataset(ImageDataset):
    """Images held in a uint8 array: [N, H, W] (grayscale, replicated to RGB) or [N, H, W, 3]."""

    def __init__(
        self,
        *,
        name: str,
        split: str,
        images: np.ndarray,
        targets: np.ndarray,
        classes: Sequence[str],
        label_space: str,
        root: str,
        origin: str,
        transform: Callable | None = None,
        source_rows: np.ndarray | None = None,
    ):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
            raise ValueError(f"images must be uint8 [N,H,W] or [N,H,W,3], got {images.dtype} {images.shape}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.name, self.split = name, split
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        self.classes = list(classes)
        self.label_space = label_space
        self.root = root
        self.origin = origin  # e.g. the file the rows were read from
        self.transform = transform
        # Row of item i in `origin` (when the dataset is a selection of that file's rows).
        self.source_rows = np.arange(len(images)) if source_rows is None else np.asarray(source_rows)

    def _image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i]).convert("RGB")

    def source(self, i: int) -> str:
        return f"{self.origin} row {int(self.source_rows[i])}"

    def _fingerprint(self) -> dict:
        h = hashlib.sha1()
        h.update(np.ascontiguousarray(self.images).data)
        h.update(np.ascontiguousarray(self.targets).data)
        return {"kind": "array-sha1", "sha1": h.hexdigest(), "shape": list(self.images.shape)}


class FileDataset(ImageDataset):
    """One image file per item; labels known from the folder layout."""

    def __init__(
        self,
        *,
        name: str,
        split: str,
        paths: Sequence[str],
        targets: Sequence[int] | np.ndarray,
        classes: Sequence[str],
        label_space: str,
        root: str,
        transform: Callable | None = None,
        crop_border: int = 0,
    ):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} files but {len(targets)} labels")
        self.name, self.split = name, split
        self.paths = [str(p) for p in paths]
        self.targets = np.asarray(targets, dtype=np.int64)
        self.classes = list(classes)
        self.label_space = label_space
        self.root = str(root)
        self.transform = transform
        self.crop_border = int(crop_border)

    def _image(self, i: int) -> Image.Image:
        img = load_rgb(self.paths[i])
        b = self.crop_border
        if b:
            w, h = img.size
            if w > 2 * b and h > 2 * b:
                img = img.crop((b, b, w - b, h - b))
        return img

    def source(self, i: int) -> str:
        return self.paths[i]

    def _fingerprint(self) -> dict:
        """File count, total bytes and a hash of (relative path, size, label): cheap, no decoding."""
        h = hashlib.sha1()
        total = 0
        for p, t in zip(self.paths, self.targets.tolist()):
            size = os.stat(p).st_size
            total += size
            rel = os.path.relpath(p, self.root)
            h.update(json.dumps([rel, size, t]).encode())
        return {"kind": "files", "files": len(self.paths), "bytes": total, "sha1": h.hexdigest(),
                "crop_border": self.crop_border}


def class_names_space(prefix: str, classes: Sequence[str]) -> str:
    """A label-space id for ad-hoc class lists: equal class names give equal ids."""
    return f"{prefix}:{hashlib.sha1(json.dumps(list(classes)).encode()).hexdigest()[:12]}"


def as_path(p: str | os.PathLike) -> Path:
    return Path(p).expanduser()
