"""Feature lookup by name: ``dataset:split`` for a backbone -> the feature-store entry.

It sits above both the store (`probekit.cache`, which only reads files and attributes) and
extraction (`probekit.extract`, which knows how an entry's exact key is computed): when
several entries match by attributes (e.g. the data on disk changed), only building the
backbone and dataset can say which one is current. Heads, fine-tuning and zero-shot read
features through here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from probekit import paths
from probekit.cache import FeatureSet, is_complete, load_features, looks_like_feature_file, matching_entries
from probekit.errors import UserError
from probekit.names import parse_dataset_split


def find_features(model: str, dataset_split: str, *, weights: str = "default", cache_dir: str | os.PathLike | None = None,
                  image_size: int | None = None, feature: str | None = None, precision: str = "fp32",
                  dtype: str = "float32") -> Path:
    """The complete cache entry for `model` on `dataset:split`, found from the attributes.

    Builds the backbone (to compute the exact key) only when several entries match."""
    dataset, split = parse_dataset_split(dataset_split)
    kw = dict(weights=weights, image_size=image_size, feature=feature, precision=precision, dtype=dtype)
    matches = matching_entries(model, dataset_split, cache_dir=cache_dir, **kw)
    if len(matches) == 1:
        return matches[0]
    folder = paths.cache_dir(cache_dir)
    cmd = f"probekit extract --model {model} --dataset {dataset} --split {split}"
    cmd += "".join(f" --{k.replace('_', '-')} {v}" for k, v in (("weights", weights), ("image_size", image_size), ("feature", feature))
                   if v not in (None, "default"))
    if not matches:
        raise UserError(f"no cached features for {model} on {dataset}:{split} in {folder}; run `{cmd}` first (or pass --cache-dir)")
    from probekit.extract import entry_for

    exact = entry_for(model, dataset, split, cache_dir=folder, **kw)
    if is_complete(exact):
        return exact
    raise UserError(f"no cached features for {model} on {dataset}:{split} match the current weights and data in {folder}; run `{cmd}`")


def resolve_features(spec: Any, *, model: str | None = None, cache_dir: str | os.PathLike | None = None,
                     dtype: Any = np.float32, **kw: Any) -> FeatureSet:
    """Features for `spec`: a `FeatureSet` (returned as is), a feature-file path, or `dataset:split` looked up for `model`."""
    if isinstance(spec, FeatureSet):
        return spec
    if looks_like_feature_file(spec):
        return load_features(os.fspath(spec), dtype=dtype)
    text = os.fspath(spec)
    if not model:
        raise UserError(f"{text!r} names a dataset split, so a model is needed to find its features; pass --model")
    fs = load_features(find_features(model, text, cache_dir=cache_dir, **kw), dtype=dtype)
    fs.name = text
    return fs
