"""Write synthetic feature-store entries through the cache's own writer, named as `extract` names them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from probekit import cache


def write_feature_entry(folder: Path, dataset: str, split: str, X: np.ndarray, y: np.ndarray, *, backbone: str,
                        weight_id: str, classes, label_space: str, feature_kind: str = "penultimate",
                        weights: str = "default", transform_id: str = "test", **attrs) -> Path:
    """A complete entry for (backbone, dataset, split) in `folder`; returns its path. `attrs` add or replace attributes."""
    fields = cache.key_fields(backbone=backbone, weight_id=weight_id, transform_id=transform_id, feature_kind=feature_kind,
                              dataset=dataset, split=split, dataset_describe={"synthetic": True})
    key = cache.entry_key(fields)
    path = folder / cache.entry_filename(backbone, dataset, split, key)
    attrs = {"key": key, "backbone": backbone, "weights": str(weights), "weight_id": weight_id, "transform_id": transform_id,
             "feature_kind": feature_kind, "image_size": "", "feature": "", "precision": "fp32", "dtype": "float32",
             "dataset": dataset, "split": split, "classes": list(classes), "num_classes": len(classes),
             "label_space": label_space, "dataset_describe": {"synthetic": True}, **attrs}
    folder.mkdir(parents=True, exist_ok=True)
    writer = cache.FeatureWriter(path, attrs=attrs, total=len(y), dim=X.shape[1])
    writer.append(X.astype(np.float32), y.astype(np.int64), np.arange(len(y)), positions=len(y))
    return writer.finish()
