"""Class-subset distribution shifts: ImageNet-R (200 classes) and ObjectNet (113 classes).

The testbed evaluated an ImageNet model on ImageNet-R by keeping only the logits of
its 200 classes, and on ObjectNet by taking, for each of the 113 ObjectNet classes,
the max of the logits of the ImageNet classes mapped to it; the ID accuracy on the x
axis was measured on the ImageNet val images of those classes, predicted the same way
(``val-on-imagenet-r-classes``, ``val-on-objectnet-classes``). ImageNetV2 uses all
1000 classes and needs no shift. `evaluate_shift` is the one function heads and
fine-tuning call to score logits against an OOD set.

Class order: ImageNet-R class i is ImageNet index ``sublist[i]`` (sorted WordNet-ID
folders); ObjectNet class i is the i-th of the 113 ObjectNet labels in Python
``sorted()`` order, the labels the ``objectnet`` dataset uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from probekit.errors import UserError
from probekit.names import dataset_name
from probekit.robustness.shipped import shipped_path

IMAGENET_CLASSES = 1000
IMAGENET_LABEL_SPACE = "imagenet1k"


@dataclass(frozen=True)
class ClassSubsetShift:
    """An OOD set whose classes are a subset (or a pooling) of the ImageNet-1k classes."""

    name: str                                   # dataset name, e.g. "imagenet-r"
    classes: tuple[str, ...]                    # OOD class names, in label order
    imagenet_indices: tuple[tuple[int, ...], ...]  # per OOD class, its ImageNet indices
    reduce: str                                 # "select" (one index each) or "max" (max over the mapped logits)
    id_eval: str                                # how the ID accuracy is measured, e.g. "val-on-imagenet-r-classes"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def all_imagenet_indices(self) -> np.ndarray:
        """The sorted ImageNet indices that belong to the subset (200 for ImageNet-R, 125 for ObjectNet)."""
        return np.array(sorted({i for idx in self.imagenet_indices for i in idx}), dtype=np.int64)

    def _gather_index(self) -> np.ndarray:
        """[K, M] ImageNet indices, rows padded by repeating their first index (harmless under max)."""
        width = max(len(i) for i in self.imagenet_indices)
        return np.array([list(i) + [i[0]] * (width - len(i)) for i in self.imagenet_indices], dtype=np.int64)

    def restrict_logits(self, logits: Any) -> Any:
        """[..., 1000] ImageNet logits → [..., K] logits of the OOD classes (numpy or torch)."""
        if logits.shape[-1] != IMAGENET_CLASSES:
            raise UserError(f"{self.name} is evaluated through ImageNet-1k logits, but the head gives {logits.shape[-1]} classes; "
                            f"use a 1000-class ImageNet head or one trained on the {self.num_classes} {self.name} classes")
        gather = self._gather_index()
        if _is_torch(logits):
            import torch

            gather_t = torch.as_tensor(gather, device=logits.device)
            if self.reduce == "select":
                return logits[..., gather_t[:, 0]]
            return logits[..., gather_t].amax(dim=-1)
        logits = np.asarray(logits)
        if self.reduce == "select":
            return logits[..., gather[:, 0]]
        return logits[..., gather].max(axis=-1)

    def id_mask(self, imagenet_labels: Any) -> np.ndarray:
        """Which ImageNet val rows belong to the subset's classes (bool [N])."""
        return np.isin(_numpy(imagenet_labels), self.all_imagenet_indices)

    def map_id_labels(self, imagenet_labels: Any) -> np.ndarray:
        """ImageNet labels → OOD class index (−1 for ImageNet classes outside the subset)."""
        table = np.full(IMAGENET_CLASSES, -1, dtype=np.int64)
        for k, idx in enumerate(self.imagenet_indices):
            table[list(idx)] = k
        return table[_numpy(imagenet_labels).astype(np.int64)]


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x)


def _class_map(name: str) -> Any:
    return json.loads(shipped_path(f"class_maps/{name}").read_text())


@lru_cache(maxsize=None)
def _imagenet_r() -> ClassSubsetShift:
    sublist = _class_map("imagenet_r_class_sublist.json")
    names = _class_map("imagenet_to_labels.json")
    return ClassSubsetShift("imagenet-r", tuple(names[str(i)] for i in sublist), tuple((int(i),) for i in sublist),
                            "select", "val-on-imagenet-r-classes")


@lru_cache(maxsize=None)
def _objectnet() -> ClassSubsetShift:
    mapping = _class_map("objectnet_label_to_imagenet_indices.json")
    labels = sorted(mapping)
    return ClassSubsetShift("objectnet", tuple(labels), tuple(tuple(int(i) for i in mapping[k]) for k in labels),
                            "max", "val-on-objectnet-classes")


SHIFTS = {"imagenet-r": _imagenet_r, "objectnet": _objectnet}


def shift_for(ood_set: str) -> ClassSubsetShift | None:
    """The class-subset shift of an OOD dataset ("imagenet-r", "objectnet:test", ...), or None."""
    make = SHIFTS.get(dataset_name(ood_set))
    return make() if make else None


def check_label_space(head_label_space: str | None, head_num_classes: int, ood_set: str,
                      ood_label_space: str | None, ood_num_classes: int) -> ClassSubsetShift | None:
    """Decide how a head with these classes is scored on `ood_set`; refuse a mismatch.

    Returns the shift to apply (a 1000-class ImageNet head on ImageNet-R / ObjectNet) or
    None (same label space: score the logits directly).
    """
    shift = shift_for(ood_set)
    if shift is not None and head_num_classes == IMAGENET_CLASSES and head_label_space in (IMAGENET_LABEL_SPACE, None):
        if ood_num_classes != shift.num_classes:
            raise UserError(f"OOD set {ood_set} has {ood_num_classes} classes but {shift.name} has {shift.num_classes}; "
                            f"its labels must be the {shift.num_classes} {shift.name} classes in sorted order")
        return None if ood_label_space == IMAGENET_LABEL_SPACE else shift
    same_space = head_label_space is None or ood_label_space is None or head_label_space == ood_label_space
    if same_space and head_num_classes == ood_num_classes:
        return None
    raise UserError(f"the head predicts {head_num_classes} classes of {head_label_space or 'its training set'} but OOD set {ood_set} "
                    f"has {ood_num_classes} classes of {ood_label_space or 'another label space'}; "
                    "train on a dataset with the same classes as the OOD set (or an ImageNet-1k head for imagenet-r / objectnet)")


def predict_shift(logits: Any, shift: ClassSubsetShift | None) -> Any:
    """Predicted class per row, in the OOD set's label space; [..., N, C] → [..., N]."""
    if shift is not None:
        logits = shift.restrict_logits(logits)
    return logits.argmax(dim=-1) if _is_torch(logits) else np.asarray(logits).argmax(axis=-1)


def evaluate_shift(logits: Any, labels: Any, shift: ClassSubsetShift | None = None, *, on: str = "ood") -> Any:
    """Top-1 accuracy of logits [N, C] (→ float) or [H, N, C] for H heads (→ [H] array).

    ``on="ood"``: `labels` are the OOD set's labels (0..K-1); logits are restricted by
    `shift` when given. ``on="id"``: `labels` are ImageNet val labels and the accuracy is
    the shift's `id_eval` (only the rows of the subset's classes, predicted through the
    same restriction). Torch inputs stay on their device until the final numbers.
    """
    if on not in ("ood", "id"):
        raise ValueError(f"on must be 'ood' or 'id', got {on!r}")
    if on == "id":
        if shift is None:
            raise ValueError("on='id' needs a class-subset shift")
        mask = shift.id_mask(labels)
        if not mask.any():
            raise UserError(f"no ImageNet val row belongs to the {shift.name} classes; is the ID set ImageNet val?")
        rows = np.flatnonzero(mask)
        target = shift.map_id_labels(_numpy(labels)[rows])
        if _is_torch(logits):
            import torch

            rows_t = torch.as_tensor(rows, device=logits.device)
            logits = logits.index_select(-2, rows_t)
        else:
            logits = np.asarray(logits)[..., rows, :]
        labels = target
    pred = predict_shift(logits, shift)
    if _is_torch(pred):
        import torch

        target = torch.as_tensor(_numpy(labels), device=pred.device)
        acc = (pred == target).float().mean(dim=-1).cpu().numpy().astype(np.float64)
    else:
        acc = (pred == _numpy(labels)).mean(axis=-1)
    return float(acc) if np.ndim(acc) == 0 else acc
