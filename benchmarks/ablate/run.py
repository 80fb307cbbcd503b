"""`probekit ablate` against the same cells as separate `probekit train-head` runs, side by side.

A 5 sizes × 5 seeds SGD-head grid, every step recorded (``--eval-every 1``): one
``probekit ablate`` command against 25 ``probekit train-head --subset per-class=N
--subset-seed S --seeds S`` commands, each a fresh process as a user would run them (start-up,
feature load, training, evaluation, run folder). Both sides get the same thread count
(``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``). The records of every cell are compared: step,
epoch, accuracies and ER must be identical, losses equal to float rounding.

Feature sets: EfficientNet-Lite0 features of the bundled digits (train → test, OOD MNIST-5k;
extracted into ``--cache-dir`` at ``--image-size`` when absent), and/or the
Fashion-MNIST features in ``--fashion-cache`` (``--sets fashion``: train 60k → test 10k, no OOD set). Results are
printed and written to ``benchmarks/results/ablate.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def probekit(args: list[str], env: dict) -> float:
    """Run one `probekit` command in a fresh process; its wall time in seconds."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "probekit", *args], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def ensure_features(model: str, cache_dir: str, image_size: int, specs: list[str], env: dict) -> None:
    from probekit.features import find_features
    from probekit.errors import UserError

    for spec in specs:
        try:
            find_features(model, spec, cache_dir=cache_dir, image_size=image_size)
        except UserError:
            ds, split = spec.split(":")
            print(f"extracting {model} {spec} at {image_size} px into {cache_dir}", flush=True)
            probekit(["extract", "--model", model, "--dataset", ds, "--split", split, "--image-size", str(image_size),
                      "--cache-dir", cache_dir, "--device", "cpu", "--no-progress"], env)


def compare(ablation: Path, alone: dict[str, Path]) -> dict:
    """Cell by cell: records of the grid run (minus `cell`) against the train-head run of that cell."""
    from probekit.runlog import read_run

    n = identical = 0
    max_loss = 0.0
    differ: list[str] = []
    for cell, folder in alone.items():
        a = [{k: v for k, v in r.items() if k != "cell"} for r in read_run(ablation / "cells" / cell).records]
        b = read_run(folder).records
        if len(a) != len(b):
            differ.append(f"{cell}: {len(a)} vs {len(b)} records")
            continue
        for x, y in zip(a, b):
            lx, ly = x.pop("loss"), y.pop("loss")
            if lx is not None and ly is not None:
                max_loss = max(max_loss, abs(lx - ly))
            n += 1
            identical += x == y
            if x != y and len(differ) < 5:
                differ.append(f"{cell} step {x['step']}: {sorted(k for k in x if x[k] != y.get(k))}")
    return {"records": n, "identical_records": identical, "max_abs_loss_diff": max_loss, "differences": differ}


def bench(name: str, common: list[str], sizes: list[str], seeds: list[int], env: dict, work: Path) -> dict:
    grid = ["--sizes", *sizes, "--seeds", *map(str, seeds)]
    out = work / f"{name}-ablate"
    t_ablate = probekit(["ablate", *common, *grid, "--out", str(out), "--no-progress"], env)
    alone, t_alone = {}, 0.0
    for size in sizes:
        for seed in seeds:
            cell = f"size={size},seed={seed},lr={float(common[common.index('--lr') + 1]):g}"
            folder = work / f"{name}-alone" / cell
            subset = [] if size == "all" else ["--subset", f"per-class={size}", "--subset-seed", str(seed)]
            t_alone += probekit(["train-head", *common, *subset, "--seeds", str(seed), "--out", str(folder), "--no-progress"], env)
            alone[cell] = folder
    res = {"cells": len(alone), "ablate_s": round(t_ablate, 2), "train_head_s": round(t_alone, 2),
           "speedup": round(t_alone / t_ablate, 2), **compare(out, alone)}
    print(f"{name}: ablate {t_ablate:.1f} s vs {len(alone)} x train-head {t_alone:.1f} s = {t_alone / t_ablate:.1f}x; "
          f"{res['identical_records']}/{res['records']} records identical, max |Δloss| {res['max_abs_loss_diff']:.2e}", flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache-dir", default=str(ROOT / "cache"), help="feature store for the digits features (extracted when absent)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--sizes", nargs=5, default=["5", "10", "25", "50", "all"])
    p.add_argument("--seeds", type=int, nargs=5, default=[0, 1, 2, 3, 4])
    p.add_argument("--sgd", nargs="*", default=["--lr", "0.01", "--batch-size", "256", "--epochs", "10"],
                   help="SGD options both sides get (default: lr 0.01, batch 256, 10 epochs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sets", nargs="+", choices=("digits", "fashion"), default=["digits"],
                   help="feature sets to run on: digits (bundled) and/or fashion (the Fashion-MNIST Lite0 features in --fashion-cache)")
    p.add_argument("--fashion-cache", default="/work/fcache")
    p.add_argument("--fashion-image-size", type=int, default=112)
    p.add_argument("--fashion-sizes", nargs=5, default=["10", "50", "100", "500", "all"])
    p.add_argument("--fashion-sgd", nargs="*", default=["--lr", "0.01", "--batch-size", "4096", "--epochs", "5"])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ablate.json"))
    args = p.parse_args()

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    model = "efficientnet_lite0"
    if "digits" in args.sets:
        ensure_features(model, args.cache_dir, args.image_size, ["digits:train", "digits:test", "mnist5k:test"], env)
    work = Path(tempfile.mkdtemp(prefix="probekit-bench-ablate-"))
    results = {"threads": args.threads, "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    try:
        if "digits" in args.sets:
            common = ["--model", model, "--cache-dir", args.cache_dir, "--image-size", str(args.image_size), "--train", "digits:train",
                      "--id", "digits:test", "--ood", "mnist5k:test", "--eval-every", "1", *args.sgd]
            results["digits"] = {"grid": {"sizes": args.sizes, "seeds": args.seeds, "sgd": args.sgd},
                                 **bench("digits", common, args.sizes, args.seeds, env, work)}
        if "fashion" in args.sets:
            common = ["--model", model, "--cache-dir", args.fashion_cache, "--image-size", str(args.fashion_image_size),
                      "--train", "fashion-mnist:train", "--id", "fashion-mnist:test", "--eval-every", "1", *args.fashion_sgd]
            results["fashion-mnist"] = {"grid": {"sizes": args.fashion_sizes, "seeds": args.seeds, "sgd": args.fashion_sgd},
                                        **bench("fashion", common, args.fashion_sizes, args.seeds, env, work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
