"""Class-per-folder image trees: the scanner shared by ImageNet-style datasets, and `folder:PATH`.

`folder:PATH` with split `all` reads PATH itself (one subfolder per class);
any other split names a subfolder of PATH (`folder:/data/pets:train` reads
/data/pets/train). Class folders are sorted by name; images are found
recursively inside each class folder, by extension, in sorted order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from probekit.datasets.base import FileDataset, class_names_space
from probekit.datasets.images import is_image_file
from probekit.errors import UserError

log = logging.getLogger(__name__)


def list_class_folders(root: Path) -> list[str]:
    """Sorted names of the non-hidden subfolders of `root`."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def list_images(folder: Path) -> list[str]:
    """Image files under `folder`, recursively, sorted (hidden files and folders skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and is_image_file(name):
                found.append(os.path.join(dirpath, name))
    return found


def scan(root: Path, folders: list[str], labels: list[int]) -> tuple[list[str], list[int]]:
    """Files of each folder in `folders`, labelled by the matching entry of `labels`."""
    paths, targets = [], []
    for folder, label in zip(folders, labels):
        files = list_images(root / folder)
        paths.extend(files)
        targets.extend([label] * len(files))
    return paths, targets


class FolderDataset(FileDataset):
    """Any class-per-folder tree: classes are the sorted subfolder names, labels 0..K-1."""

    def __init__(self, path: str | os.PathLike, split: str = "all", *, transform: Callable | None = None):
        named = Path(path).expanduser()
        if split != "all":
            if split in (".", "..") or "/" in split or "\\" in split or not split:
                raise UserError(f"split {split!r} of folder:{path} must be 'all' or the name of one subfolder")
            named = named / split
        tree = named.resolve()
        if not tree.is_dir():
            hint = "" if split == "all" else f" (split {split!r} reads the subfolder {split}; use split 'all' for {path} itself)"
            raise UserError(f"folder dataset {tree} does not exist or is not a folder{hint}; "
                            f"point folder:PATH at a tree with one subfolder of images per class")
        classes = list_class_folders(tree)
        if not classes:
            raise UserError(f"folder dataset {tree} has no class subfolders; put each class's images in "
                            f"its own subfolder, e.g. {tree}/cat/1.jpg")
        paths, targets = scan(tree, classes, list(range(len(classes))))
        if not paths:
            raise UserError(f"folder dataset {tree} has {len(classes)} class folders but no image files "
                            f"(looked for .jpg .png .bmp .tif .webp ...)")
        empty = sorted(set(classes) - {classes[t] for t in set(targets)})
        if empty:  # kept as classes (labels stay those of the sorted folder names) but nothing to learn or score
            shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            log.warning(f"folder dataset {tree}: {len(empty)} of {len(classes)} class folders hold no images ({shown}); "
                        "they stay classes without examples")
        super().__init__(name=f"folder:{tree}", split=split, paths=paths, targets=targets, classes=classes,
                         label_space=class_names_space("folder", classes), root=str(tree), transform=transform)
