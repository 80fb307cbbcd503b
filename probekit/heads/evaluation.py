"""Batched evaluation of many linear heads at once, and the shared input checks.

Every solver keeps its heads as one weight tensor ``W [H, D, C]`` and bias ``b [H, C]``;
evaluating all of them on a test set is then a single GEMM ``X [N, D] @ W' [D, H*C]``,
done in row chunks so memory stays bounded however large the test set is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from probekit.errors import UserError


@dataclass
class EvalSet:
    """A test set the heads are scored on at every evaluation.

    ``restrict`` (optional) maps logits ``[..., C]`` to logits over the set's own label
    space ``[..., C']`` (class-subset shifts such as ImageNet-R / ObjectNet); ``y`` is then
    in that restricted space.
    """

    name: str
    X: torch.Tensor
    y: torch.Tensor
    restrict: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def n(self) -> int:
        return int(self.y.shape[0])


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device` as given, else CUDA when present, else CPU; a bad name is a UserError."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"unknown device {device!r}; use e.g. cpu, cuda or cuda:1") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but CUDA is not available; pass --device cpu")
    return dev


def check_features(X, name: str = "X") -> np.ndarray | torch.Tensor:
    """A 2-D finite float array; NaN / Inf are refused with their count."""
    if isinstance(X, torch.Tensor):
        arr = X
        bad = int((~torch.isfinite(arr)).sum()) if arr.is_floating_point() else 0
    else:
        arr = np.asarray(X)
        if arr.dtype.kind not in "fiu":
            raise UserError(f"{name} must be a numeric array, got dtype {arr.dtype}")
        bad = int((~np.isfinite(arr)).sum()) if arr.dtype.kind == "f" else 0
    if arr.ndim != 2:
        raise UserError(f"{name} must be a 2-D array [N, D], got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise UserError(f"{name} is empty (0 rows)")
    if bad:
        raise UserError(f"{name} holds {bad} NaN/Inf values; re-extract those features")
    return arr


def check_labels(y, n: int, name: str = "y") -> np.ndarray:
    arr = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise UserError(f"{name} must be a 1-D array of {n} labels, got shape {tuple(arr.shape)}")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        else:
            raise UserError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
    if arr.min() < 0:
        raise UserError(f"{name} holds negative labels ({int(arr.min())}); labels are class indices 0..C-1")
    return arr.astype(np.int64)


def check_positive_list(values, name: str) -> list[float]:
    """A non-empty list of finite, positive numbers (learning rates, L2 strengths)."""
    if values is None or (not isinstance(values, (list, tuple, np.ndarray)) and not hasattr(values, "__iter__")):
        values = [values]
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise UserError(f"{name} must be numbers, got {v!r}") from None
        if not math.isfinite(f) or f <= 0:
            raise UserError(f"{name} must be positive and finite, got {v!r}")
        out.append(f)
    if not out:
        raise UserError(f"{name} is empty; give at least one value")
    return out


def to_tensor(X, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    t = X if isinstance(X, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(X))
    return t.to(device=device, dtype=dtype)


def make_eval_sets(eval_sets, device: torch.device, dtype: torch.dtype, n_features: int) -> list[EvalSet]:
    """Accept ``{name: (X, y)}``, ``{name: EvalSet}`` or a list of EvalSet; move to `device`."""
    if eval_sets is None:
        return []
    items = eval_sets.items() if isinstance(eval_sets, dict) else [(e.name, e) for e in eval_sets]
    out = []
    for name, value in items:
        if isinstance(value, EvalSet):
            X, y, restrict = value.X, value.y, value.restrict
        else:
            X, y = value
            restrict = None
        X = check_features(X, f"eval set {name!r}")
        if X.shape[1] != n_features:
            raise UserError(f"eval set {name!r} has {X.shape[1]} features but the training set has {n_features}")
        labels = check_labels(y, X.shape[0], f"labels of eval set {name!r}")
        out.append(EvalSet(name, to_tensor(X, device, dtype), torch.from_numpy(labels).to(device), restrict))
    return out


def head_logits(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Logits ``[N, H, C]`` of all heads ``W [H, D, C]``, ``b [H, C]`` in one GEMM."""
    H, D, C = W.shape
    X = X.float() if X.dtype == torch.float16 else X  # float16 storage, float32 compute
    flat = W.permute(1, 0, 2).reshape(D, H * C).to(X.dtype)  # cast the small head, never the big set
    return (X @ flat).view(-1, H, C) + b.to(X.dtype)


@torch.no_grad()
def count_correct(es: EvalSet, W: torch.Tensor, b: torch.Tensor, chunk_elems: int = 1 << 24) -> torch.Tensor:
    """Correct predictions per head ``[H]`` (int64) on one eval set."""
    H, D, C = W.shape
    rows = max(1, chunk_elems // max(1, H * max(C, D)))
    correct = torch.zeros(H, dtype=torch.int64, device=W.device)
    for s in range(0, es.n, rows):
        logits = head_logits(es.X[s:s + rows], W, b)
        if es.restrict is not None:
            logits = es.restrict(logits)
        correct += (logits.argmax(-1) == es.y[s:s + rows, None]).sum(0)
    return correct


@torch.no_grad()
def predict_heads(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor, restrict=None, chunk_elems: int = 1 << 24) -> torch.Tensor:
    """Predicted class ``[H, N]`` of every head."""
    H, D, C = W.shape
    rows = max(1, chunk_elems // max(1, H * max(C, D)))
    out = []
    for s in range(0, X.shape[0], rows):
        logits = head_logits(X[s:s + rows], W, b)
        if restrict is not None:
            logits = restrict(logits)
        out.append(logits.argmax(-1).T)
    return torch.cat(out, 1)


def evaluate_all(sets: Sequence[EvalSet], W: torch.Tensor, b: torch.Tensor) -> dict[str, np.ndarray]:
    """Accuracy ``[H]`` of every head on every eval set, as float64 numpy arrays."""
    return {es.name: (count_correct(es, W, b).double() / es.n).cpu().numpy() for es in sets}


class FittedHeads:
    """Inference shared by the head estimators: `W_ [H, D, C]`, `b_ [H, C]` once fitted."""

    def _check_fitted(self) -> None:
        if not hasattr(self, "W_"):
            raise UserError(f"this {type(self).__name__} is not fitted yet; call fit(X, y) first")

    def _predict_all(self, X, restrict=None) -> np.ndarray:
        """Predicted classes ``[H, N]`` of every fitted head."""
        self._check_fitted()
        X = check_features(X, "X")
        if X.shape[1] != self.n_features_in_:
            raise UserError(f"X has {X.shape[1]} features but the heads were trained on {self.n_features_in_}")
        return predict_heads(to_tensor(X, self.W_.device, torch.float32), self.W_, self.b_, restrict).cpu().numpy()
