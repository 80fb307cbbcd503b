"""Figures from run logs: the paper's ID-vs-OOD plot, ER curves and data-property sweeps.

Every function takes data (runs, a baseline, testbed points), writes PNG and SVG
atomically and returns the paths, so the CLI, the demo and notebooks share them.
matplotlib runs on the Agg backend: no display needed.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probekit.atomic import atomic_write_bytes
from probekit.errors import UserError
from probekit.robustness.baseline import Baseline
from probekit.robustness.runs import choose_ood_set, final_records, ood_sets, record_er, record_id_acc, warn_if_full_id
from probekit.robustness.transforms import inverse_transform, transform as apply_transform

FORMATS = ("png", "svg")
PLOT_CLIP = 1e-3  # accuracies of exactly 0 / 1 are drawn at 0.1 % / 99.9 % (they have no logit)
NICE_ACCS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)
MARKERS = "os^Dv<>pP*hX"


@dataclass
class RunData:
    """What the plots need from a run: a label, its records, its config (and summary)."""

    label: str
    records: list[dict]
    config: dict = field(default_factory=dict)
    summary: dict | None = None

    @property
    def heads(self) -> list[str]:
        return list(dict.fromkeys(r["head"] for r in self.records if "head" in r))


def as_run_data(run: Any) -> RunData:
    """A `RunData` from a `probekit.runlog.Run`, a run folder path, a `RunData` or a (label, records) pair."""
    if isinstance(run, RunData):
        return run
    if isinstance(run, (str, os.PathLike)):
        from probekit.runlog import read_run

        run = read_run(run)
    if hasattr(run, "records") and hasattr(run, "path"):
        return RunData(Path(run.path).name, list(run.records), dict(run.config or {}), run.summary)
    if isinstance(run, tuple) and len(run) == 2:
        return RunData(str(run[0]), list(run[1]))
    raise TypeError(f"cannot plot {type(run).__name__}; pass run folders, Run objects or RunData")


def _runs(runs: Iterable[Any]) -> list[RunData]:
    out = [as_run_data(r) for r in runs]
    if not out:
        raise UserError("no runs to plot; pass at least one run folder")
    labels = [r.label for r in out]
    for i, r in enumerate(out):  # same folder name in two places: keep them apart in legends
        if labels.count(r.label) > 1:
            r.label = f"{r.label} [{i}]"
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out_path: str | os.PathLike, formats: Sequence[str]) -> list[Path]:
    base = Path(out_path)
    if base.suffix.lstrip(".") in FORMATS:
        base = base.with_suffix("")
    paths = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise UserError(f"unknown plot format {fmt!r}; use {' or '.join(FORMATS)}")
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight")
        path = base.with_suffix(f".{fmt}")
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    _pyplot().close(fig)
    return paths


def _t(acc: Any, kind: str) -> np.ndarray:
    return np.asarray(apply_transform(np.clip(np.asarray(acc, dtype=float), PLOT_CLIP, 1 - PLOT_CLIP), kind))


def _accuracy_axis(ax: Any, kind: str, lo: float, hi: float, axis: str) -> None:
    """Ticks at round accuracies, labelled in %, on a transformed axis spanning [lo, hi] (fractions)."""
    candidates = [a for a in NICE_ACCS if lo <= a <= hi] or [lo, hi]
    span = float(_t(hi, kind) - _t(lo, kind))
    ticks: list[float] = []
    for a in candidates:  # drop ticks closer than 6 % of the axis to the previous one, so labels never overlap
        if not ticks or float(_t(a, kind) - _t(ticks[-1], kind)) >= 0.06 * span:
            ticks.append(a)
    pos = _t(ticks, kind)
    labels = [f"{100 * a:g}%" for a in ticks]
    (ax.set_xticks if axis == "x" else ax.set_yticks)(pos, labels)
    (ax.set_xlim if axis == "x" else ax.set_ylim)(float(_t(lo, kind)), float(_t(hi, kind)))


def _span(values: list[float]) -> tuple[float, float]:
    v = np.clip(np.asarray(values, dtype=float), PLOT_CLIP, 1 - PLOT_CLIP)
    lo, hi = float(v.min()), float(v.max())
    # pad by ~8 % of the range in transformed space
    tl, th = _t(lo, "logit"), _t(hi, "logit")
    pad = max(0.08 * (th - tl), 0.1)
    return float(inverse_transform(tl - pad)), float(inverse_transform(th + pad))


def _reference_lines(ax: Any, xs: list[float], ys: list[float], kind: str, baseline, *, lw: float, label: str | None) -> None:
    """y = x and the baseline's fit over the span of the points, and both accuracy axes to match."""
    xlo, xhi = _span(xs)
    ylo, yhi = _span(ys)
    line = np.linspace(float(_t(min(xlo, ylo), kind)), float(_t(max(xhi, yhi), kind)), 200)
    ax.plot(line, line, ls="--", color="black", lw=min(lw, 1.0), label="y = x", zorder=1)
    if baseline is not None:
        ax.plot(line, baseline.slope * line + baseline.intercept, color="tab:red", lw=lw, zorder=1, label=label)
    _accuracy_axis(ax, kind, xlo, xhi, "x")
    _accuracy_axis(ax, kind, ylo, yhi, "y")


def _progress_norm(steps: list[int]) -> Any:
    """Colour scale of training progress: log steps when evaluations span two decades or more."""
    from matplotlib.colors import LogNorm, Normalize

    top = max(max(steps or [1]), 1)
    low = max(min([s for s in steps if s > 0] or [1]), 1)
    return LogNorm(vmin=low, vmax=top, clip=True) if top / low >= 100 else Normalize(vmin=0, vmax=top)


def plot_id_vs_ood(runs: Iterable[Any], baseline: Baseline | None, testbed_points: Sequence[tuple[str, float, float]] | None,
                   out_path: str | os.PathLike, *, ood_set: str | None = None, formats: Sequence[str] = FORMATS,
                   title: str | None = None) -> list[Path]:
    """The paper's figure: OOD vs ID accuracy on transformed (logit) axes.

    Testbed models as grey points, the baseline line, y = x, and each head's trajectory
    coloured by training progress (optimiser step; log colour scale when the evaluations
    span two decades or more), its final point starred.
    """
    plt = _pyplot()
    runs = _runs(runs)
    kind = baseline.transform if baseline else "logit"
    chosen = choose_ood_set(ood_sets(r for run in runs for r in run.records), ood_set, baseline)
    warn_if_full_id([r for run in runs for r in run.records], chosen, baseline)
    testbed_points = list(testbed_points or [])
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    xs_all: list[float] = [p[1] for p in testbed_points]
    ys_all: list[float] = [p[2] for p in testbed_points]
    if testbed_points:
        ax.scatter(_t([p[1] for p in testbed_points], kind), _t([p[2] for p in testbed_points], kind), s=14, c="0.6",
                   alpha=0.8, label=f"testbed models ({len(testbed_points)})", zorder=2)
    cmap = plt.get_cmap("viridis")
    norm = _progress_norm([r.get("step") or 0 for run in runs for r in run.records])
    scatter = None
    for i, run in enumerate(runs):
        marker = MARKERS[i % len(MARKERS)]
        for j, head in enumerate(run.heads):
            recs = sorted((r for r in run.records if r.get("head") == head), key=lambda r: r.get("step") or 0)
            pts = [(record_id_acc(r, chosen), (r.get("acc_ood") or {}).get(chosen), max(r.get("step") or 0, 1)) for r in recs]
            pts = [p for p in pts if p[0] is not None and p[1] is not None]
            if not pts:
                continue
            x, y, prog = (np.array(v, dtype=float) for v in zip(*pts))
            xs_all += list(x)
            ys_all += list(y)
            tx, ty = _t(x, kind), _t(y, kind)
            ax.plot(tx, ty, color="0.35", lw=0.6, alpha=0.6, zorder=3)
            scatter = ax.scatter(tx, ty, c=prog, cmap=cmap, norm=norm, s=16, marker=marker, zorder=4,
                                 label=run.label if j == 0 else None)
            ax.scatter(tx[-1:], ty[-1:], marker="*", s=180, c=[cmap(norm(prog[-1]))], edgecolors="black", linewidths=0.8, zorder=5,
                       label="final point" if (i == 0 and j == 0) else None)
    if not xs_all:
        raise UserError(f"nothing to plot: no record has both acc_id and acc_ood[{chosen!r}]")
    _reference_lines(ax, xs_all, ys_all, kind, baseline, lw=1.5,
                     label=baseline and f"baseline {baseline.name} (slope {baseline.slope:.2f}, r {baseline.r:.3f}, n {baseline.n})")
    id_name = (baseline.id_eval if baseline and baseline.id_eval else None) or (runs[0].config.get("id") if runs[0].config else None) or "ID"
    ax.set_xlabel(f"ID accuracy ({id_name}), {kind} scale")
    ax.set_ylabel(f"OOD accuracy ({chosen}), {kind} scale")
    ax.set_title(title or f"OOD vs ID accuracy throughout training: {chosen}")
    ax.grid(True, lw=0.3, alpha=0.5)
    ax.legend(loc="upper left", fontsize=7, framealpha=0.9)
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, label="training progress: optimiser step" + (" (log scale)" if norm.__class__.__name__ == "LogNorm" else ""))
    return _save(fig, out_path, formats)


def _er_series(run: RunData, head: str, ood: str, baseline: Baseline | None, x: str) -> tuple[np.ndarray, np.ndarray]:
    recs = sorted((r for r in run.records if r.get("head") == head), key=lambda r: r.get("step") or 0)
    pts = [(r.get(x), record_er(r, ood, baseline)) for r in recs]
    pts = [p for p in pts if p[0] is not None and p[1] is not None]
    if not pts:
        return np.empty(0), np.empty(0)
    a, b = zip(*pts)
    return np.asarray(a, dtype=float), np.asarray(b, dtype=float)


def plot_er_curves(runs: Iterable[Any], out_path: str | os.PathLike, *, x: str = "step", ood_set: str | None = None,
                   baseline: Baseline | None = None, formats: Sequence[str] = FORMATS, title: str | None = None) -> list[Path]:
    """ER (accuracy points) against step or epoch, one line per head, one colour per run.

    ER comes from the records (``er``), or is recomputed with `baseline` when given.
    """
    if x not in ("step", "epoch"):
        raise UserError(f"x axis must be step or epoch, got {x!r}")
    plt = _pyplot()
    runs = _runs(runs)
    chosen = choose_ood_set(ood_sets(r for run in runs for r in run.records), ood_set, baseline)
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.get_cmap("tab10")
    drawn = 0
    for i, run in enumerate(runs):
        for j, head in enumerate(run.heads):
            xs, er = _er_series(run, head, chosen, baseline, x)
            if not len(xs):
                continue
            ax.plot(xs, 100 * er, color=colors(i % 10), lw=1, alpha=0.8, label=run.label if j == 0 else None)
            ax.plot(xs[-1:], 100 * er[-1:], marker="o", ms=4, color=colors(i % 10))
            drawn += 1
    if not drawn:
        raise UserError(f"the runs have no ER for {chosen!r}; train with --baseline or pass --baseline to plot")
    ax.axhline(0, color="black", lw=0.8, ls="--")
    steps = [r.get(x) for run in runs for r in run.records if r.get(x) is not None]
    if steps and min(steps) > 0 and max(steps) / min(steps) >= 100:
        ax.set_xscale("log")  # the paper plots ER against log iterations
    ax.set_xlabel("optimiser step" if x == "step" else "epoch")
    ax.set_ylabel("effective robustness (accuracy points, %)")
    name = f" vs baseline {baseline.name}" if baseline else ""
    ax.set_title(title or f"Effective robustness throughout training: {chosen}{name}")
    ax.grid(True, lw=0.3, alpha=0.5)
    ax.legend(fontsize=7)
    return _save(fig, out_path, formats)


SUBSET_RE = re.compile(r"^(per-class|classes)=(\d+)$|^cscore=(easiest|hardest|random):(\d+)$")
SWEEPS = {"size": "examples per class", "classes": "number of classes", "cscore": "C-score subset"}


def subset_of(config: dict) -> tuple[str, Any] | None:
    """("size", N) | ("classes", K) | ("cscore", "easiest:N") from a run config's ``subset``, or None."""
    spec = (config or {}).get("subset")
    if not isinstance(spec, str):
        return None
    m = SUBSET_RE.match(spec.strip())
    if not m:
        return None
    if m.group(1) == "per-class":
        return "size", int(m.group(2))
    if m.group(1) == "classes":
        return "classes", int(m.group(2))
    return "cscore", f"{m.group(3)}:{m.group(4)}"


def sweep_table(runs: Iterable[Any], *, ood_set: str | None = None, baseline: Baseline | None = None) -> list[dict]:
    """One row per run with a subset: sweep kind, value, final and peak ER (mean / std over heads)."""
    runs = _runs(runs)
    chosen = choose_ood_set(ood_sets(r for run in runs for r in run.records), ood_set, baseline)
    rows = []
    for run in runs:
        sub = subset_of(run.config)
        if sub is None:
            continue
        finals, peaks = [], []
        for head, rec in final_records(run.records).items():
            er = record_er(rec, chosen, baseline)
            if er is not None:
                finals.append(er)
            _, series = _er_series(run, head, chosen, baseline, "step")
            if len(series):
                peaks.append(series.max())
        if finals:
            rows.append({"run": run.label, "sweep": sub[0], "value": sub[1], "ood_set": chosen, "heads": len(finals),
                         "final_er": float(np.mean(finals)), "final_er_std": float(np.std(finals)),
                         "peak_er": float(np.mean(peaks)) if peaks else None})
    return rows


def plot_sweep(runs: Iterable[Any], out_path: str | os.PathLike, *, by: str = "subset", ood_set: str | None = None,
               baseline: Baseline | None = None, formats: Sequence[str] = FORMATS, title: str | None = None) -> list[Path]:
    """Final (and peak) ER against subset size, number of classes or C-score subset.

    `by`: "size", "classes", "cscore", or "subset" for one panel per kind present. Runs
    are grouped by their config's ``subset`` spec (per-class=N, classes=K, cscore=KIND:N).
    """
    if by not in ("subset", *SWEEPS):
        raise UserError(f"sweep must be one of subset, {', '.join(SWEEPS)}; got {by!r}")
    rows = sweep_table(runs, ood_set=ood_set, baseline=baseline)
    kinds = [k for k in SWEEPS if any(r["sweep"] == k for r in rows) and by in ("subset", k)]
    if not kinds:
        raise UserError(f"no run has a {'' if by == 'subset' else by + ' '}`subset` in its config with ER values; "
                        "train with --subset per-class=N | classes=K | cscore=KIND:N and a baseline")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        sel = [r for r in rows if r["sweep"] == kind]
        if kind != "cscore":
            sel.sort(key=lambda r: r["value"])
        if kind == "cscore":
            order = {"easiest": 0, "random": 1, "hardest": 2}
            values = sorted({r["value"] for r in sel}, key=lambda v: (order.get(v.split(":")[0], 9), v))
            pos = {v: i for i, v in enumerate(values)}
            xs = [pos[r["value"]] for r in sel]
            ax.set_xticks(range(len(values)), values)
        else:
            xs = [r["value"] for r in sel]
            if max(xs) / max(min(xs), 1) >= 10:
                ax.set_xscale("log")
        ax.errorbar(xs, [100 * r["final_er"] for r in sel], yerr=[100 * r["final_er_std"] for r in sel],
                    fmt="o" if kind == "cscore" else "o-", capsize=3,
                    label="final ER (mean ± std over heads)")
        peaks = [(x, r["peak_er"]) for x, r in zip(xs, sel) if r["peak_er"] is not None]
        if peaks:
            ax.plot([p[0] for p in peaks], [100 * p[1] for p in peaks], "v" if kind == "cscore" else "v--", color="tab:orange",
                    label="peak ER during training")
        ax.axhline(0, color="black", lw=0.8, ls="--")
        ax.set_xlabel(SWEEPS[kind])
        ax.set_ylabel("effective robustness (accuracy points, %)")
        ax.set_title(f"ER vs {SWEEPS[kind]}")
        ax.grid(True, lw=0.3, alpha=0.5)
        ax.legend(fontsize=7)
    fig.suptitle(title or f"Data-property sweep: {rows[0]['ood_set']}")
    return _save(fig, out_path, formats)


ABLATION_AXES = {"size": "examples per class", "classes": "number of classes", "difficulty": "C-score subset"}
DIFFICULTY_ORDER = ("easiest", "random", "hardest")


def ablation_points(runs: Iterable[Any], *, ood_set: str | None = None, baseline: Baseline | None = None) -> list[dict]:
    """One point per ablation cell run (config ``cell``): its spec, final and peak ER on the chosen OOD set."""
    runs = [r for r in _runs(runs) if (r.config or {}).get("cell")]
    if not runs:
        raise UserError("no ablation cells to plot; pass the --out folder of `probekit ablate`")
    chosen = choose_ood_set(ood_sets(r for run in runs for r in run.records), ood_set, baseline)
    out = []
    for run in runs:
        head = (run.summary or {}).get("chosen_head") if (run.summary or {}).get("chosen_head") in run.heads else run.heads[-1]
        _, series = _er_series(run, head, chosen, baseline, "step")
        if not len(series):
            continue
        out.append({**run.config["cell"], "run": run, "head": head, "ood_set": chosen, "final_er": float(series[-1]),
                    "peak_er": float(series.max())})
    if not out:
        raise UserError(f"the ablation cells have no ER for {chosen!r}; run ablate with --baseline or pass --baseline to plot")
    return out


def _axis_value(p: dict, n_all: int) -> float | str:
    if p["kind"] == "size":
        return n_all if p["size"] is None else p["size"]
    return p["classes"] if p["kind"] == "classes" else p["difficulty"]


def plot_ablation(runs: Iterable[Any], out_path: str | os.PathLike, *, baseline: Baseline | None = None,
                  testbed_points: Sequence[tuple[str, float, float]] | None = None, ood_set: str | None = None,
                  formats: Sequence[str] = FORMATS, title: str | None = None) -> list[Path]:
    """The ablation figure: ER (final and peak; mean ± std over seeds, seeds as faint dots) against
    size / number of classes / difficulty, one panel per axis in the grid, one line per lr; and
    the ID-vs-OOD panel with one trajectory per cell, coloured by its axis value."""
    plt = _pyplot()
    points = ablation_points(runs, ood_set=ood_set, baseline=baseline)
    chosen = points[0]["ood_set"]
    kinds = [k for k in ABLATION_AXES if any(p["kind"] == k for p in points)]
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(4.6 * (len(kinds) + 1), 4.4), squeeze=False)
    lrs = list(dict.fromkeys(p["lr"] for p in points))
    colors = plt.get_cmap("tab10")
    # a size=all cell sits at its mean examples per class, labelled "all"
    n_all = max((int(p["run"].config.get("n_train") or 0) // max(1, int(p["run"].config.get("num_classes") or 1))
                 for p in points if p["kind"] == "size" and p["size"] is None), default=0)
    for ax, kind in zip(axes[0], kinds):
        sel = [p for p in points if p["kind"] == kind]
        values = sorted({_axis_value(p, n_all) for p in sel}, key=lambda v: DIFFICULTY_ORDER.index(v) if kind == "difficulty" else v)
        pos = {v: (i if kind == "difficulty" else v) for i, v in enumerate(values)}
        for li, lr in enumerate(lrs):
            color = colors(li % 10)
            by_value = {v: [p for p in sel if p["lr"] == lr and _axis_value(p, n_all) == v] for v in values}
            xs = [pos[v] for v in values if by_value[v]]
            for key, fmt, what in (("final_er", "o-", "final"), ("peak_er", "v--", "peak")):
                ys = [[100 * p[key] for p in by_value[v]] for v in values if by_value[v]]
                if kind == "difficulty":
                    fmt = fmt[0]
                ax.errorbar(xs, [np.mean(y) for y in ys], yerr=[np.std(y) for y in ys], fmt=fmt, color=color, capsize=3,
                            alpha=1.0 if what == "final" else 0.6,
                            label=f"{what} ER" + (f", lr {lr:g}" if lr is not None and len(lrs) > 1 else ""))
                for x, y in zip(xs, ys):
                    ax.scatter([x] * len(y), y, s=8, color=color, alpha=0.25, zorder=1)
        if kind == "difficulty":
            ax.set_xticks(range(len(values)), values)
        else:
            if max(values) / max(min(values), 1) >= 10:
                ax.set_xscale("log")
                ax.minorticks_off()
            has_all = kind == "size" and any(p["size"] is None for p in sel)
            ax.set_xticks(values, ["all" if has_all and v == n_all else str(v) for v in values])
        seeds = len({p["seed"] for p in sel})
        ax.axhline(0, color="black", lw=0.8, ls="--")
        ax.set_xlabel(ABLATION_AXES[kind])
        ax.set_ylabel("effective robustness (accuracy points, %)")
        ax.set_title(f"ER vs {ABLATION_AXES[kind]} ({seeds} seed{'s' if seeds > 1 else ''}: mean ± std)", fontsize=9)
        ax.grid(True, lw=0.3, alpha=0.5)
        ax.legend(fontsize=7)
    _ablation_id_vs_ood(axes[0][-1], points, chosen, baseline, testbed_points or [], plt)
    fig.suptitle(title or f"Data ablations: {chosen}" + (f" vs baseline {baseline.name}" if baseline else ""))
    fig.tight_layout()
    return _save(fig, out_path, formats)


def _ablation_id_vs_ood(ax: Any, points: list[dict], chosen: str, baseline: Baseline | None, testbed, plt) -> None:
    """One trajectory per cell on transformed axes, coloured within its axis (size: blues, classes: greens, difficulty: reds)."""
    kind_t = baseline.transform if baseline else "logit"
    maps = {"size": "Blues", "classes": "Greens", "difficulty": "Reds"}
    xs_all = [p[1] for p in testbed]
    ys_all = [p[2] for p in testbed]
    if testbed:
        ax.scatter(_t(xs_all, kind_t), _t(ys_all, kind_t), s=10, c="0.6", alpha=0.8, label=f"testbed ({len(testbed)})", zorder=2)
    for kind in maps:
        sel = [p for p in points if p["kind"] == kind]
        if not sel:
            continue
        values = list(dict.fromkeys(p["id"] for p in sel))
        cmap = plt.get_cmap(maps[kind])
        for i, p in enumerate(sel):
            recs = sorted((r for r in p["run"].records if r.get("head") == p["head"]), key=lambda r: r.get("step") or 0)
            pts = [(record_id_acc(r, chosen), (r.get("acc_ood") or {}).get(chosen)) for r in recs]
            pts = [q for q in pts if q[0] is not None and q[1] is not None]
            if not pts:
                continue
            x, y = (np.array(v, dtype=float) for v in zip(*pts))
            xs_all += list(x)
            ys_all += list(y)
            c = cmap(0.35 + 0.6 * i / max(1, len(sel) - 1))
            ax.plot(_t(x, kind_t), _t(y, kind_t), color=c, lw=0.8, alpha=0.8, zorder=3,
                    label=f"{kind} cells ({len(values)})" if i == 0 else None)
            ax.scatter(_t(x[-1:], kind_t), _t(y[-1:], kind_t), color=[c], s=14, edgecolors="black", linewidths=0.4, zorder=4)
    _reference_lines(ax, xs_all, ys_all, kind_t, baseline, lw=1.2, label=baseline and f"baseline {baseline.name}")
    ax.set_xlabel(f"ID accuracy, {kind_t} scale")
    ax.set_ylabel(f"OOD accuracy ({chosen}), {kind_t} scale")
    ax.set_title("OOD vs ID, one trajectory per cell", fontsize=9)
    ax.grid(True, lw=0.3, alpha=0.5)
    ax.legend(fontsize=6, loc="upper left")
