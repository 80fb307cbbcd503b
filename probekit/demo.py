"""`probekit demo`: the whole method, offline, on bundled data, in minutes on a CPU.

ID data are scikit-learn's digits, the natural shift is MNIST-5k (other writers, other
scanning), the backbone is the bundled EfficientNet-Lite0. The demo

1. extracts Lite0 features of digits train / test and MNIST-5k (cached);
2. builds a testbed of small CNNs trained from scratch on digits — one family, varied by training
   length, learning rate and seed — and fits the logit baseline through them;
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
    # testbed: one run per epoch count, one CNN per (lr, seed); cosine to zero, so BatchNorm's running
    # statistics settle on the final weights; 8 px is the digits' native size, so MNIST differs in style only
    cnn_epochs: tuple = (1, 2, 3)
    cnn_lrs: tuple = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
    cnn_seeds: tuple = (0, 1)
    cnn_batch_size: int = 32
    cnn_image_size: int = 8
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
        return cls(image_size=64, cnn_epochs=(1, 2), cnn_seeds=(0,),
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
        est = estimate_cscores(ID_TRAIN, heads_per_ratio=s.cscore_heads_per_ratio, stability_seed=1, device=common["device"],
                               progress=False, **feature_source)
        write_cscores(cscores, est, overwrite=True)
        print(f"  {len(est.scores)} C-scores from {est.n_heads} heads; stability: Spearman {est.two_seed_spearman:.2f} "
              f"with a second estimate (seed {est.stability_seed}), split-half {est.split_half_spearman:.2f}")
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
    """Small CNNs trained from scratch via `finetune` -> fitted baseline.

    One architecture varied by epochs, learning rate and seed: such models lie on one line (mixing
    in raw-pixel logistic regression did not), and the under-trained ones spread it over the ID range.
    One thread: faster than two on a shared 2-core machine, and results do not depend on the count.
    """
    import torch

    from probekit.finetune import FinetuneConfig, finetune
    from probekit.robustness import fit_baseline
    from probekit.robustness.runs import points_from_runs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cnn_dirs = [_stage(out, f"testbed/cnn-{epochs}ep", key, lambda d, ep=epochs: finetune(FinetuneConfig(
            model="small_cnn", train=ID_TRAIN, id_test=ID_TEST, ood=[OOD], out=str(d), weights="none",
            lrs=list(s.cnn_lrs), seeds=list(s.cnn_seeds), batch_size=s.cnn_batch_size, epochs=ep, schedule="cosine",
            image_size=s.cnn_image_size, eval_every=10**9, augmentation="crop", device=device, overwrite=True, progress=False)))
            for epochs in s.cnn_epochs]
    finally:
        torch.set_num_threads(threads)
    names, ids, oods, _ = points_from_runs(cnn_dirs, ood_set=OOD)
    names = [f"small-cnn {n}" for n in names]
    points = list(zip(names, ids, oods))
    atomic_write_text(out / "testbed.csv", "model,id,ood\n" + "".join(f"{n},{i:.6f},{o:.6f}\n" for n, i, o in points))
    baseline = fit_baseline(ids, oods, "logit", names=names, name="digits-mnist5k-from-scratch",
                            source=f"probekit demo testbed ({len(points)} small CNNs trained from scratch on digits)",
                            id_set=ID_TEST, ood_set=OOD)
    print(f"  {baseline.describe()}")
    return baseline, points


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
        f"Baseline: the logit-linear fit through {b.n} small CNNs trained from scratch on digits "
        f"(`testbed.csv`), Pearson r = {b.r:.3f} (n = {b.n}).", "", "```", b.describe(), "```", "",
        "ER is OOD accuracy above the logit-linear fit through models trained from scratch, in accuracy points.", "",
        format_table(result.rows), "",
        "![ID vs OOD](id_vs_ood.png)", "", "![ER curves](er_curves.png)", "",
        "## Data ablations (SGD heads, one batched pass; difficulty by C-scores estimated from the features)", "",
        table_markdown(result.ablation) if result.ablation else "(no cells)", "", "![ablations](ablation.png)", "",
        f"Settings: {'quick' if s.quick else 'full'}; took {result.seconds:.0f} s.", "",
    ]
    atomic_write_text(result.out / "summary.md", "\n".join(text))
