"""`probekit demo`: the whole method, offline, on bundled data, in minutes on a CPU.

ID data are scikit-learn's digits, the natural shift is MNIST-5k (other writers, other
scanning), the backbone is the bundled EfficientNet-Lite0. The demo

1. extracts Lite0 features of digits train / test and MNIST-5k (cached);
2. builds a testbed of models trained from scratch on digits — small CNNs at several training
   lengths and data sizes, and logistic regression on raw pixels — and fits the logit baseline;
3. trains SGD heads (several learning rates and seeds) and the L-BFGS L2 sweep on the features,
   logging ER at every iteration;
4. runs the data ablations on the features: subset sizes × seeds, and difficulty (easiest /
   hardest / random examples by C-scores that `probekit cscore` estimates from the features),
   all cells in one batched SGD pass (`probekit ablate`);
5. fine-tunes the pretrained backbone end to end for a short run, logging ER;
6. writes figures and a summary of peak ER, final ER and when ER peaked.

Every stage writes an ordinary run folder, so a second run reuses what is complete. Nothing is
skipped or faked: the summary reports whatever the numbers turn out to be.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from probekit import runlog
from probekit.atomic import atomic_write_json, atomic_write_text
from probekit.names import parse_dataset_split
from probekit.paths import output_dir

BACKBONE = "efficientnet_lite0"
ID_TRAIN, ID_TEST, OOD = "digits:train", "digits:test", "mnist5k:test"


@dataclass(frozen=True)
class DemoSettings:
    """How much work each stage does; `quick()` is the two-minute version used by the tests."""

    image_size: int = 128                     # Lite0 input for extraction and the heads
    cnn_runs: tuple = ((10, 60), (30, 150), (None, 300), (None, 600))  # (images per class or all, steps)
    cnn_lr: float = 0.05
    cnn_image_size: int = 16                  # 16 px with random crops transfers to MNIST far better than 28 px
    pixel_sizes: tuple = (5, 20, None)        # raw-pixel logistic regression: images per class or all
    pixel_l2: float = 100.0
    sgd_lrs: tuple = (0.01, 0.1)
    sgd_seeds: tuple = (0, 1, 2)
    sgd_epochs: int = 60
    sgd_batch_size: int = 256
    lbfgs_max_iter: int = 300
    finetune_image_size: int = 64
    finetune_steps: int = 150
    finetune_eval_every: int = 10
    finetune_eval_per_class: int = 30
    finetune_lr: float = 0.01
    finetune_batch_size: int = 32
    ablation_sizes: tuple = (5, 20, 50, "all")  # examples per class
    ablation_seeds: tuple = (0, 1, 2)
    ablation_difficulty_size: int = 20        # examples per class of the easiest / hardest / random subsets
    ablation_lr: float = 0.1
    ablation_epochs: int = 40
    cscore_heads_per_ratio: int = 8
    quick: bool = False

    @classmethod
    def quick_settings(cls) -> DemoSettings:
        return cls(image_size=64, cnn_runs=((10, 40), (30, 100), (None, 200)), pixel_sizes=(5, None),
                   sgd_lrs=(0.01, 0.1), sgd_seeds=(0, 1), sgd_epochs=20, lbfgs_max_iter=100,
                   finetune_image_size=48, finetune_steps=30, finetune_eval_every=10, finetune_eval_per_class=10,
                   ablation_sizes=(5, 20, "all"), ablation_seeds=(0, 1), ablation_epochs=15, cscore_heads_per_ratio=4,
                   quick=True)


@dataclass
class DemoResult:
    out: Path
    baseline: Any
    rows: list[dict] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    ablation: list[dict] = field(default_factory=list)  # one row per ablation cell (probekit.ablate.report)


def _stage(out: Path, name: str, settings_key: dict, build) -> Path:
    """Run `build(folder)` unless `folder` already holds a complete run made with the same settings."""
    folder = out / name
    stamp = folder / "demo-settings.json"
    settings_key = json.loads(json.dumps(settings_key))  # tuples -> lists, as they read back from disk
    if runlog.is_complete(folder) and stamp.exists() and json.loads(stamp.read_text()) == settings_key:
        print(f"  reusing {folder} (complete)")
        return folder
    build(folder)
    atomic_write_json(stamp, settings_key)
    return folder


def _say(step: int, text: str) -> None:
    print(f"[{step}/6] {text}", flush=True)


def run_demo(out: str | Path = "demo", *, quick: bool = False, cache_dir=None, device: str | None = None,
             settings: DemoSettings | None = None) -> DemoResult:
    """Run the five stages into `out` and return the summary rows (also written to disk)."""
    from probekit.progress import progress_bar

    t0 = time.time()
    s = settings or (DemoSettings.quick_settings() if quick else DemoSettings())
    out = output_dir(out)
    key = asdict(s)

    _say(1, f"extracting {BACKBONE} features at {s.image_size} px (cached after the first run)")
    from probekit.extract import extract

    for spec in progress_bar(iterable=(ID_TRAIN, ID_TEST, OOD), total=3, desc="extract", unit="set"):
        dataset, split = parse_dataset_split(spec)
        extract(BACKBONE, dataset, split, cache_dir=cache_dir, image_size=s.image_size, device=device, quiet=True)

    _say(2, "building a from-scratch testbed on digits and fitting the logit baseline")
    baseline, testbed = _testbed(out, s, key, device)
    baseline_path = out / "baseline.json"
    baseline.save(baseline_path)

    _say(3, "training SGD heads and the L-BFGS sweep on cached features, ER at every iteration")
    from probekit.heads.config import TrainHeadConfig
    from probekit.heads.run import train_head

    heads = TrainHeadConfig(train=ID_TRAIN, id_set=ID_TEST, ood=[OOD], model=BACKBONE, cache_dir=cache_dir, image_size=s.image_size,
                            baselines=[str(baseline_path)], device=device, overwrite=True)
    run_key = {**key, "baseline": baseline.to_json()}  # a new baseline reruns every stage that logs ER
    sgd = _stage(out, "heads-sgd", run_key, lambda d: train_head(replace(
        heads, solver="sgd", lrs=list(s.sgd_lrs), seeds=list(s.sgd_seeds), epochs=s.sgd_epochs, batch_size=s.sgd_batch_size, out=str(d))))
    lbfgs = _stage(out, "heads-lbfgs", run_key, lambda d: train_head(replace(
        heads, solver="lbfgs", val=0.2, max_iter=s.lbfgs_max_iter, out=str(d))))

    _say(4, "data ablations: subset sizes x seeds and difficulty by estimated C-scores, in one batched pass")
    ablation = _ablation(out, s, run_key, {"model": BACKBONE, "cache_dir": cache_dir, "image_size": s.image_size,
                                           "baseline": str(baseline_path), "device": device})

    _say(5, f"fine-tuning {BACKBONE} end to end for {s.finetune_steps} steps at {s.finetune_image_size} px")
    from probekit.finetune import FinetuneConfig, finetune

    ft = _stage(out, "finetune", run_key, lambda d: finetune(FinetuneConfig(
        model=BACKBONE, train=ID_TRAIN, id_test=ID_TEST, ood=[OOD], out=str(d), weights="default",
        lrs=[s.finetune_lr], seeds=[0], batch_size=s.finetune_batch_size, max_steps=s.finetune_steps,
        image_size=s.finetune_image_size, eval_every=s.finetune_eval_every, eval_subset=s.finetune_eval_per_class,
        baselines=[str(baseline_path)], device=device, overwrite=True)))

    _say(6, f"writing figures and the summary to {out}/")
    result = DemoResult(out=out, baseline=baseline)
    result.figures = _figures(out, [sgd, lbfgs, ft], baseline, testbed)
    from probekit.ablate.report import ablation_table, cell_folders
    from probekit.plots import plot_ablation

    result.figures += plot_ablation(cell_folders(ablation), out / "ablation", baseline=baseline, testbed_points=testbed, ood_set=OOD)
    result.ablation = ablation_table(ablation)
    result.rows = summary_rows([sgd, lbfgs, ft])
    result.seconds = time.time() - t0
    _write_summary(result, s)
    print(format_table(result.rows))
    print(f"done in {result.seconds:.0f} s; figures and summary in {out}/")
    return result


# -- stage 4: data ablations -------------------------------------------------------------------

def _ablation(out: Path, s: DemoSettings, key: dict, common: dict) -> Path:
    """C-scores estimated from the features, then sizes × seeds and easiest / hardest / random cells as one ablate run."""
    from probekit.ablate.cscore import estimate_cscores, write_cscores
    from probekit.ablate.grid import make_grid
    from probekit.ablate.run import ablate

    folder = out / "ablation"
    stamp = folder / "demo-settings.json"
    key = json.loads(json.dumps(key))
    fresh = not (stamp.exists() and json.loads(stamp.read_text()) == key)
    cscores = out / "cscores.npz"
    feature_source = {k: common[k] for k in ("model", "cache_dir", "image_size")}
    if fresh or not cscores.exists():
        est = estimate_cscores(ID_TRAIN, heads_per_ratio=s.cscore_heads_per_ratio, device=common["device"], progress=False,
                               **feature_source)
        write_cscores(cscores, est, overwrite=True)
        print(f"  {len(est.scores)} C-scores from {est.n_heads} heads, split-half Spearman {est.split_half_spearman:.2f}")
    grid = make_grid(sizes=s.ablation_sizes, difficulty=("easiest", "hardest", "random"),
                     difficulty_size=s.ablation_difficulty_size, seeds=s.ablation_seeds, lrs=[s.ablation_lr])
    res = ablate(ID_TRAIN, ID_TEST, [OOD], out=folder, grid=grid, cscores=cscores, overwrite=fresh, baseline=common["baseline"],
                 device=common["device"], epochs=s.ablation_epochs, batch_size=s.sgd_batch_size, progress=False, **feature_source)
    if res.skipped and not res.ran:
        print(f"  reusing {folder} (complete)")
    atomic_write_json(stamp, key)
    return folder


# -- stage 2: the from-scratch testbed ---------------------------------------------------------

def _testbed(out: Path, s: DemoSettings, key: dict, device: str | None):
    """Small CNNs via `finetune` (random init) plus raw-pixel logistic regression -> fitted baseline."""
    from probekit.finetune import FinetuneConfig, finetune
    from probekit.robustness import fit_baseline
    from probekit.robustness.runs import points_from_runs

    cnn_dirs = []
    for per_class, steps in s.cnn_runs:
        name = f"testbed/cnn-{'all' if per_class is None else per_class}pc-{steps}steps"
        cnn_dirs.append(_stage(out, name, key, lambda d, pc=per_class, st=steps: finetune(FinetuneConfig(
            model="small_cnn", train=ID_TRAIN, id_test=ID_TEST, ood=[OOD], out=str(d), weights="none",
            lrs=[s.cnn_lr], seeds=[0], batch_size=64, max_steps=st, epochs=10_000, image_size=s.cnn_image_size,
            eval_every=st, subset=None if pc is None else f"per-class={pc}", augmentation="crop",
            device=device, overwrite=True, progress=False))))
    names, ids, oods, _ = points_from_runs(cnn_dirs, ood_set=OOD)
    names = [f"small-cnn {n.split('/')[0]}" for n in names]
    for per_class in s.pixel_sizes:
        acc_id, acc_ood = _pixel_logreg(per_class, s.pixel_l2)
        names.append(f"pixels-logreg {'all' if per_class is None else per_class}/class")
        ids.append(acc_id)
        oods.append(acc_ood)
    points = list(zip(names, ids, oods))
    atomic_write_text(out / "testbed.csv", "model,id,ood\n" + "".join(f"{n},{i:.6f},{o:.6f}\n" for n, i, o in points))
    baseline = fit_baseline(ids, oods, "logit", names=names, name="digits-mnist5k-from-scratch",
                            source=f"probekit demo testbed ({len(points)} models trained from scratch on digits)",
                            id_set=ID_TEST, ood_set=OOD)
    print(f"  {baseline.describe()}")
    return baseline, points


def _pixels(spec: str) -> tuple[np.ndarray, np.ndarray]:
    """Framed 28x28 grey pixels in [0, 1] and labels of a bundled dataset split."""
    from probekit.datasets import create_dataset

    ds = create_dataset(*parse_dataset_split(spec))
    images = np.stack([np.asarray(ds[i][0].convert("L"), dtype=np.float64).ravel() / 255.0 for i in range(len(ds))])
    return images, np.asarray(ds.targets)


def _pixel_logreg(per_class: int | None, l2: float) -> tuple[float, float]:
    """ID and OOD accuracy of L2 logistic regression on raw pixels (probekit's own L-BFGS solver)."""
    from probekit.datasets import select_subset
    from probekit.heads.lbfgs import LBFGSLogistic

    X, y = _pixels(ID_TRAIN)
    if per_class is not None:
        rows = select_subset(y, f"per-class={per_class}", seed=0)
        X, y = X[rows], y[rows]
    clf = LBFGSLogistic(l2_grid=[l2], max_iter=500, eval_every=0).fit(X, y, X, y)
    return float(clf.score(*_pixels(ID_TEST))), float(clf.score(*_pixels(OOD)))


# -- stage 5: figures and summary --------------------------------------------------------------

def _figures(out: Path, runs: list[Path], baseline, testbed: list) -> list[Path]:
    from probekit.plots import plot_er_curves, plot_id_vs_ood

    figures = plot_id_vs_ood(runs, baseline, testbed, out / "id_vs_ood", ood_set=OOD)
    figures += plot_er_curves(runs, out / "er_curves", ood_set=OOD, baseline=baseline)
    return figures


def summary_rows(run_dirs: list[Path]) -> list[dict]:
    """Per head of each run: final accuracies, final ER, peak ER and the step where it peaked."""
    from probekit.records import summarise_heads

    rows = []
    for run_dir in run_dirs:
        for head, s in summarise_heads(runlog.read_run(run_dir).records).items():
            final, peak = s["final"], (s["oracle"].get("er_peak") or {}).get(OOD) or {}
            rows.append({"run": run_dir.name, "head": head, "steps": final["step"], "acc_id": final["acc_id"],
                         "acc_ood": final["acc_ood"].get(OOD), "er_final": (final.get("er") or {}).get(OOD),
                         "er_peak": peak.get("er"), "er_peak_step": peak.get("step")})
    return rows


def _points(value) -> str:
    return "—" if value is None else f"{100 * value:+.1f}"


def format_table(rows: list[dict]) -> str:
    """A Markdown table of `summary_rows` (accuracies in %, ER in points)."""
    lines = ["| run | head | steps | ID acc % | OOD acc % | ER final | ER peak | peak at step |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        acc = lambda v: "—" if v is None else f"{100 * v:.1f}"  # noqa: E731
        lines.append(f"| {r['run']} | {r['head']} | {r['steps']} | {acc(r['acc_id'])} | {acc(r['acc_ood'])} | "
                     f"{_points(r['er_final'])} | {_points(r['er_peak'])} | {'—' if r['er_peak_step'] is None else r['er_peak_step']} |")
    return "\n".join(lines)


def _write_summary(result: DemoResult, s: DemoSettings) -> None:
    from probekit.ablate.report import table_markdown

    b = result.baseline
    summary = {"settings": asdict(s), "seconds": round(result.seconds, 1), "baseline": b.to_json(),
               "rows": result.rows, "ablation": result.ablation, "figures": [p.name for p in result.figures]}
    atomic_write_json(result.out / "summary.json", summary)
    text = [
        "# probekit demo: digits → MNIST-5k with EfficientNet-Lite0", "",
        f"Baseline: {b.describe()}", "",
        "ER is OOD accuracy above the logit-linear fit through models trained from scratch, in accuracy points.", "",
        format_table(result.rows), "",
        "![ID vs OOD](id_vs_ood.png)", "", "![ER curves](er_curves.png)", "",
        "## Data ablations (SGD heads, one batched pass; difficulty by C-scores estimated from the features)", "",
        table_markdown(result.ablation) if result.ablation else "(no cells)", "", "![ablations](ablation.png)", "",
        f"Settings: {'quick' if s.quick else 'full'}; took {result.seconds:.0f} s.", "",
    ]
    atomic_write_text(result.out / "summary.md", "\n".join(text))
