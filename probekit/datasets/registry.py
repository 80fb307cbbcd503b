"""Named datasets and their splits behind one factory, timm-style.

Each dataset module registers a builder with `@register_dataset(name, splits)`;
`create_dataset` looks the name up, checks the split, resolves the data root and
calls the builder. `folder:PATH` is the one name pattern that is not a fixed name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from probekit.errors import UserError, unknown_name
from probekit.names import FOLDER_PREFIX, parse_dataset_split  # noqa: F401  (re-exported: the one parser)
from probekit.paths import data_root


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    splits: tuple[str, ...]
    builder: Callable  # builder(split, *, root: Path, transform, download) -> ImageDataset
    label_space: str
    offline: bool  # bundled with an installed package: needs no data root


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(name: str, splits: tuple[str, ...], *, label_space: str, offline: bool = False):
    """Decorator that registers `builder(split, *, root, transform, download)` under `name`."""

    def wrap(builder: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} registered twice")
        _REGISTRY[name] = DatasetEntry(name, tuple(splits), builder, label_space, offline)
        return builder

    return wrap


def _ensure_loaded() -> None:
    # Importing the modules runs their @register_dataset decorators.
    from probekit.datasets import bundled, cifar, fashion_mnist, imagenet  # noqa: F401


def list_datasets() -> dict[str, tuple[str, ...]]:
    """Registered names -> their splits. `folder:PATH` takes `all` or a subfolder name as split."""
    _ensure_loaded()
    out = {name: e.splits for name, e in sorted(_REGISTRY.items())}
    out[FOLDER_PREFIX + "PATH"] = ("all", "<subfolder>")
    return out


def dataset_entry(name: str) -> DatasetEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise unknown_name("dataset", name, list(_REGISTRY) + [FOLDER_PREFIX + "PATH"])
    return _REGISTRY[name]


def create_dataset(name: str, split: str, *, root=None, transform: Callable | None = None,
                   download: bool = False):
    """Build dataset `name`, split `split`; images are RGB PIL images passed through `transform`.

    `root` is the data root (default $PROBEKIT_DATA or ./data); each dataset lives in
    its own subfolder of it. `download=True` fetches a missing dataset where a public
    download exists; otherwise a missing dataset is a UserError saying where to put it.
    """
    if name.startswith(FOLDER_PREFIX):
        from probekit.datasets.folder import FolderDataset

        path = name[len(FOLDER_PREFIX):]
        if not path:
            raise UserError("empty path in 'folder:'; use folder:/path/to/class-per-folder/tree")
        return FolderDataset(path, split, transform=transform)
    entry = dataset_entry(name)
    if split not in entry.splits:
        raise unknown_name(f"split of dataset {name!r}", split, entry.splits)
    return entry.builder(split, root=Path(data_root(root)), transform=transform, download=download)


def dataset_status(root=None) -> list[dict]:
    """Per registered dataset and split: label space, whether it is on disk (bundled ones always are), images, classes.

    Building a dataset reads only its index (file lists, IDX headers), never the images, and
    never downloads; a missing one reports where it should be."""
    _ensure_loaded()
    rows = []
    for name, entry in sorted(_REGISTRY.items()):
        for split in entry.splits:
            row = {"dataset": name, "split": split, "label_space": entry.label_space, "images": None, "classes": None}
            try:
                ds = create_dataset(name, split, root=root)
            except UserError:
                row["on_disk"] = "no"
            else:
                row.update(on_disk="bundled" if entry.offline else "yes", images=len(ds),
                           classes=len(getattr(ds, "classes", None) or []) or None)
            rows.append(row)
    return rows
