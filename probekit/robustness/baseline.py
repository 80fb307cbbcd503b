"""The baseline line of effective robustness and ER itself.

A baseline is `scipy.stats.linregress(T(id_acc), T(ood_acc))` over a testbed of
models; ER(f) = acc_ood(f) − T⁻¹(β1·T(acc_id(f)) + β0), a fraction. This is the only
place ER is computed: heads, fine-tuning and plots all call `effective_robustness`.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from probekit.atomic import atomic_write_json
from probekit.errors import UserError
from probekit.names import dataset_name
from probekit.paths import input_file, output_file
from probekit.robustness.transforms import (
    AccuracyClippedWarning,
    check_accuracies,
    check_transform,
    clip_accuracy,
    inverse_transform,
    transform as apply_transform,
)

SCHEMA = "probekit-baseline"
SCHEMA_VERSION = 1
MIN_POINTS = 3


@dataclass
class Baseline:
    """A fitted line T(ood) = slope·T(id) + intercept and where it came from."""

    slope: float
    intercept: float
    transform: str
    r: float
    n: int
    name: str = "custom"
    source: str = ""
    id_set: str | None = None
    ood_set: str | None = None
    id_eval: str | None = None  # e.g. "val-on-objectnet-classes" for a class-subset shift
    slope_ci: tuple[float, float] | None = None  # bootstrap 95 % interval
    intercept_ci: tuple[float, float] | None = None
    bootstrap: int = 0
    points: list[tuple[str, float, float]] = field(default_factory=list)  # (model, id, ood) fractions it was fit on

    def applies_to(self, ood_set: str) -> bool:
        """A baseline fitted for one OOD dataset gives ER only on that dataset; one without a set, on all."""
        return not self.ood_set or dataset_name(self.ood_set) == dataset_name(ood_set)

    def expected_ood(self, acc_id: Any, *, n: int | None = None) -> Any:
        """The OOD accuracy the baseline predicts for ID accuracy `acc_id` (fractions)."""
        arr, _ = clip_accuracy(acc_id, n, "ID accuracy")
        z = self.slope * apply_transform(arr, self.transform) + self.intercept
        return inverse_transform(z, self.transform)

    def describe(self) -> str:
        ci = ""
        if self.slope_ci and self.intercept_ci:
            ci = (f"\nbootstrap 95% CI ({self.bootstrap} resamples): slope [{self.slope_ci[0]:.5f}, {self.slope_ci[1]:.5f}], "
                  f"intercept [{self.intercept_ci[0]:.5f}, {self.intercept_ci[1]:.5f}]")
        sets = f"{self.id_set or '?'} -> {self.ood_set or '?'}" + (f" (ID measured as {self.id_eval})" if self.id_eval else "")
        return (f"baseline {self.name}: {sets}\n"
                f"transform {self.transform}: T(ood) = {self.slope:.5f} * T(id) {'-' if self.intercept < 0 else '+'} {abs(self.intercept):.5f}\n"
                f"r = {self.r:.5f}, n = {self.n} models{ci}\nsource: {self.source}")

    def to_json(self) -> dict:
        d = asdict(self)
        d["points"] = [{"model": m, "id": float(a), "ood": float(b)} for m, a, b in self.points]
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, **d}

    @classmethod
    def from_json(cls, data: Any, origin: str = "baseline JSON") -> Baseline:
        """Read `to_json` output; anything else is refused with a `UserError` naming `origin`."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise UserError(f"{origin} is not a probekit baseline file (no \"schema\": \"{SCHEMA}\"); "
                            "write one with `probekit baseline fit --out FILE.json`")
        if data.get("version") != SCHEMA_VERSION:
            raise UserError(f"{origin} has baseline schema version {data.get('version')!r}; this probekit reads version {SCHEMA_VERSION}")
        try:
            points = [(str(p["model"]), float(p["id"]), float(p["ood"])) for p in data.get("points") or []]
            ci = lambda v: None if v is None else (float(v[0]), float(v[1]))  # noqa: E731
            b = cls(slope=float(data["slope"]), intercept=float(data["intercept"]), transform=check_transform(str(data["transform"])),
                    r=float(data["r"]), n=int(data["n"]), name=str(data.get("name") or "custom"), source=str(data.get("source") or ""),
                    id_set=data.get("id_set"), ood_set=data.get("ood_set"), id_eval=data.get("id_eval"),
                    slope_ci=ci(data.get("slope_ci")), intercept_ci=ci(data.get("intercept_ci")),
                    bootstrap=int(data.get("bootstrap") or 0), points=points)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise UserError(f"{origin} is a damaged baseline file ({type(e).__name__}: {e}); refit it with `probekit baseline fit`") from None
        if not (np.isfinite(b.slope) and np.isfinite(b.intercept)):
            raise UserError(f"{origin} has a non-finite slope or intercept; refit it with `probekit baseline fit`")
        return b

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fit as JSON; an existing file is replaced only when it is itself a baseline fit."""
        path = output_file(path, "baseline file")
        if path.exists() and not _is_fit_file(path):
            raise UserError(f"{path} exists and is not a baseline fit; choose another --out (it is left as it is)")
        atomic_write_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Baseline:
        path = input_file(path, "baseline file", hint="give a baseline name (`probekit baseline list`) or a JSON fit file")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"baseline file {path} is not JSON; write one with `probekit baseline fit --out FILE.json`") from None
        return cls.from_json(data, origin=f"baseline file {path}")


def _regress(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    res = stats.linregress(x, y)
    return float(res.slope), float(res.intercept), float(res.rvalue)


def _bootstrap(x: np.ndarray, y: np.ndarray, reps: int, seed: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Percentile 95 % intervals of slope and intercept over `reps` resamples of the models."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(reps, len(x)))
    xs, ys = x[idx], y[idx]
    xm, ym = xs.mean(1, keepdims=True), ys.mean(1, keepdims=True)
    sxx = ((xs - xm) ** 2).sum(1)
    ok = sxx > 1e-12 * max(1.0, float(np.abs(x).max()) ** 2)  # a resample of one repeated model has no slope
    slope = ((xs - xm) * (ys - ym)).sum(1)[ok] / sxx[ok]
    intercept = ym[ok, 0] - slope * xm[ok, 0]
    q = lambda v: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))  # noqa: E731
    return q(slope), q(intercept)


def fit_baseline(id_acc: Any, ood_acc: Any, transform: str = "logit", *, bootstrap: int = 0, seed: int = 0,
                 names: list[str] | None = None, name: str = "custom", source: str = "", id_set: str | None = None,
                 ood_set: str | None = None, id_eval: str | None = None, n_id: int | None = None,
                 n_ood: int | None = None) -> Baseline:
    """Fit the baseline line on a testbed's ID and OOD accuracies (fractions).

    Refuses fewer than three models, duplicate model names and accuracies outside
    [0, 1]. `bootstrap` > 0 adds percentile 95 % intervals of slope and intercept.
    """
    check_transform(transform)
    x_acc = check_accuracies(id_acc, "ID accuracy").ravel()
    y_acc = check_accuracies(ood_acc, "OOD accuracy").ravel()
    if x_acc.shape != y_acc.shape:
        raise UserError(f"testbed has {x_acc.size} ID accuracies but {y_acc.size} OOD accuracies; give one of each per model")
    if x_acc.size < MIN_POINTS:
        raise UserError(f"a baseline needs at least {MIN_POINTS} models, got {x_acc.size}; add more models to the testbed")
    if names is None:
        names = [f"model{i}" for i in range(x_acc.size)]
    names = [str(n) for n in names]
    if len(names) != x_acc.size:
        raise UserError(f"testbed has {x_acc.size} accuracies but {len(names)} model names")
    seen: set[str] = set()
    dupes = sorted({n for n in names if n in seen or seen.add(n)})
    if dupes:
        raise UserError(f"testbed lists model {dupes[0]!r} more than once; give each model one row")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AccuracyClippedWarning)
        x = apply_transform(x_acc, transform, n=n_id, what="ID accuracy")
        y = apply_transform(y_acc, transform, n=n_ood, what="OOD accuracy")
    if np.ptp(x) == 0:
        raise UserError("every model in the testbed has the same ID accuracy, so no line can be fitted; add models of other accuracies")
    slope, intercept, r = _regress(x, y)
    slope_ci = intercept_ci = None
    if bootstrap:
        if bootstrap < 0:
            raise UserError(f"--bootstrap must be a positive number of resamples, got {bootstrap}")
        slope_ci, intercept_ci = _bootstrap(x, y, int(bootstrap), seed)
    points = [(m, float(a), float(b)) for m, a, b in zip(names, x_acc, y_acc)]
    return Baseline(slope, intercept, transform, r, int(x_acc.size), name, source, id_set, ood_set, id_eval,
                    slope_ci, intercept_ci, int(bootstrap), points)


def effective_robustness(acc_id: Any, acc_ood: Any, baseline: Baseline, *, n_id: int | None = None,
                         n_ood: int | None = None, return_clipped: bool = False) -> Any:
    """ER = acc_ood − T⁻¹(β1·T(acc_id) + β0), a fraction; scalars or arrays (broadcast).

    `n_id` (ID test-set size) lets an ID accuracy of exactly 0 or 1 be clipped to
    [1/(2n), 1-1/(2n)]; with ``return_clipped=True`` the result is ``(er, clipped)``
    where `clipped` marks those entries, for the record; otherwise clipping warns.
    `n_ood` is accepted for symmetry: the OOD accuracy enters untransformed.
    """
    del n_ood
    ood = check_accuracies(acc_ood, "OOD accuracy")
    x, clipped = clip_accuracy(acc_id, n_id, "ID accuracy")
    if clipped.any() and not return_clipped:
        warnings.warn(f"{int(clipped.sum())} ID accuracy value(s) of exactly 0 or 1 clipped to [1/(2n), 1-1/(2n)] for ER",
                      AccuracyClippedWarning, stacklevel=2)
    z = baseline.slope * apply_transform(x, baseline.transform) + baseline.intercept
    er = ood - np.asarray(inverse_transform(z, baseline.transform))
    if np.ndim(er) == 0:
        er, clipped = float(er), bool(clipped)
    return (er, clipped) if return_clipped else er


def _is_fit_file(path: Path) -> bool:
    """Whether `path` holds a probekit baseline fit (which `save` may replace)."""
    try:
        return json.loads(path.read_text()).get("schema") == SCHEMA
    except (OSError, ValueError, AttributeError):
        return False
