"""A registry of named image datasets and splits, plus class-balanced subset selectors.

    ds = create_dataset("digits", "train", transform=backbone.transform)
    name, split = parse_dataset_split("cifar10.1:test")
    rows = select_subset(labels, "per-class=100", seed=0)

See docs/architecture.md for the contract and docs/datasets.md for layouts on disk.
"""

from probekit.datasets.base import ArrayDataset, FileDataset, ImageDataset
from probekit.datasets.images import BadImageError, load_rgb
from probekit.datasets.registry import create_dataset, list_datasets, parse_dataset_split, register_dataset
from probekit.datasets.subsets import load_cscores, select_subset

__all__ = [
    "ArrayDataset",
    "BadImageError",
    "FileDataset",
    "ImageDataset",
    "create_dataset",
    "list_datasets",
    "load_cscores",
    "load_rgb",
    "parse_dataset_split",
    "register_dataset",
    "select_subset",
]
