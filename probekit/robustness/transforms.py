"""Accuracy transforms for effective robustness: logit (default) and probit.

The linear trend between ID and OOD accuracy is fitted on transformed accuracies
(Taori et al. 2020). Accuracy 0 or 1 has no finite logit; with the number of test
examples ``n`` it is clipped to [1/(2n), 1 - 1/(2n)] and the clipping is reported,
so a record can say so. Accuracies are fractions: a value above 1 is refused with
a hint that it looks like a percentage.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import special, stats

from probekit.errors import UserError

TRANSFORMS = ("logit", "probit")


class AccuracyClippedWarning(UserWarning):
    """An accuracy of exactly 0 or 1 was clipped to [1/(2n), 1 - 1/(2n)] before transforming."""


def check_transform(kind: str) -> str:
    if kind not in TRANSFORMS:
        raise UserError(f"unknown accuracy transform {kind!r}; use one of: {', '.join(TRANSFORMS)}")
    return kind


def check_accuracies(acc: Any, what: str = "accuracy") -> np.ndarray:
    """`acc` as a float array of fractions in [0, 1]; percentages, negatives and NaN are refused."""
    if hasattr(acc, "detach"):  # a torch tensor, possibly on a GPU (heads evaluate many heads at once)
        acc = acc.detach().cpu().numpy()
    try:
        arr = np.asarray(acc, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be numbers (fractions in [0, 1]), got {acc!r}") from None
    if arr.size == 0:
        return arr
    if np.isnan(arr).any():
        raise UserError(f"{what} contains NaN; every accuracy must be a fraction in [0, 1]")
    if (arr > 1).any():
        bad = float(arr[arr > 1].flat[0])
        raise UserError(f"{what} {bad:g} is above 1 and looks like a percentage; give accuracies as fractions (divide by 100)")
    if (arr < 0).any():
        bad = float(arr[arr < 0].flat[0])
        raise UserError(f"{what} {bad:g} is negative; accuracies are fractions in [0, 1]")
    return arr


def clip_accuracy(acc: Any, n: int | np.ndarray | None, what: str = "accuracy") -> tuple[np.ndarray, np.ndarray]:
    """(clipped accuracies, mask of the entries that were exactly 0 or 1 and got clipped).

    Without `n` an accuracy of 0 or 1 cannot be transformed and is refused.
    """
    arr = check_accuracies(acc, what)
    edge = (arr == 0) | (arr == 1)
    if not edge.any():
        return arr, edge
    if n is None:
        raise UserError(f"{what} of exactly 0 or 1 has no logit/probit, so it cannot be placed against a baseline; give "
                        f"accuracies strictly between 0 and 1 (in Python, n= the number of test examples clips them to "
                        f"[1/(2n), 1-1/(2n)])")
    n_arr = np.asarray(n, dtype=np.float64)
    if (n_arr < 1).any():
        raise UserError(f"n (number of test examples) must be at least 1, got {n!r}")
    eps = 1.0 / (2.0 * n_arr)
    return np.clip(arr, eps, 1.0 - eps), edge


def transform(acc: Any, kind: str = "logit", *, n: int | np.ndarray | None = None, what: str = "accuracy") -> Any:
    """T(acc): logit ln(a / (1 - a)) or probit Φ⁻¹(a); a float for a scalar, else an array.

    0 and 1 are clipped to [1/(2n), 1 - 1/(2n)] when `n` is given, with an
    `AccuracyClippedWarning`; use `clip_accuracy` to get the mask for a record.
    """
    check_transform(kind)
    arr, clipped = clip_accuracy(acc, n, what)
    if clipped.any():
        warnings.warn(f"{int(clipped.sum())} {what} value(s) of exactly 0 or 1 clipped to [1/(2n), 1-1/(2n)]", AccuracyClippedWarning, stacklevel=2)
    out = special.logit(arr) if kind == "logit" else stats.norm.ppf(arr)
    return float(out) if np.ndim(out) == 0 else out


def inverse_transform(z: Any, kind: str = "logit") -> Any:
    """T⁻¹(z): the accuracy (fraction) whose transform is `z`."""
    check_transform(kind)
    z = np.asarray(z, dtype=np.float64)
    out = special.expit(z) if kind == "logit" else stats.norm.cdf(z)
    return float(out) if np.ndim(out) == 0 else out
