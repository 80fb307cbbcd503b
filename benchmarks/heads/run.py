"""Side-by-side speed of probekit's heads against scikit-learn and plain PyTorch, in one run.

(1) the ten-λ L-BFGS sweep at probekit's defaults — exactly what
    ``probekit train-head --solver lbfgs --val-fraction 0.1`` runs (`train_head`, records every
    iteration on the ID set) — against scikit-learn ``LogisticRegression(lbfgs, max_iter=1000,
    warm_start=True)`` stepped over the same C = 1/λ strongest λ first (its best plain use), and
    optionally (``--cold``) the cold loop of the CLIP README; same stratified 10 % validation
    split, λ chosen by validation accuracy on both sides;
(2) ten SGD heads (2 lrs × 5 seeds, the BiT recipe: batch 32768, 100 epochs, momentum 0.9) with
    a record (ID test accuracy) every step, `SGDHeads` against a plain nn.Linear + optim.SGD loop
    training the heads one at a time (same init, same shuffling, same records).

Features: Fashion-MNIST EfficientNet-Lite0 features from the feature store (``--cache-dir``,
``--image-size 112``; ``apt-get install dataset-fashion-mnist``, then ``probekit extract``),
else the bundled digits pixels (said so in the output). Both sides get the same threads
(``--threads``: torch and, through threadpoolctl, sklearn's BLAS / OpenMP). Results go to
benchmarks/results/heads.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def load(args):
    try:
        from probekit.features import resolve_features

        kw = dict(model=args.model, cache_dir=args.cache_dir, image_size=args.image_size)
        tr, te = (resolve_features(s, **kw) for s in (args.train, args.id))
        return f"{args.model} {args.train} / {args.id}", tr, te
    except Exception as e:  # noqa: BLE001 - fall back to bundled data, and say so
        print(f"no cached {args.train} features ({e}); falling back to the bundled sklearn digits pixels "
              "(for the real workload: apt-get install dataset-fashion-mnist, then probekit extract ...)")
        from sklearn.datasets import load_digits

        from probekit.cache import FeatureSet

        X, y = load_digits(return_X_y=True)
        X = (X / 16).astype(np.float32)

        def fs(name, a, b):
            return FeatureSet(features=a, labels=b, index=np.arange(len(b)), name=name,
                              attrs={"classes": [str(i) for i in range(10)], "num_classes": 10, "label_space": "digits"})
        return "sklearn digits pixels (fallback)", fs("digits:train", X[:1300], y[:1300]), fs("digits:test", X[1300:], y[1300:])


def bench_lbfgs(tr, te, cold: bool, budget: float | None, tight_tol: bool = False) -> dict:
    from sklearn.linear_model import LogisticRegression

    from probekit.heads.lbfgs import DEFAULT_L2_GRID, stratified_split
    from probekit.heads.config import TrainHeadConfig
    from probekit.heads.run import train_head

    def ours(**overrides) -> dict:
        t, c = time.perf_counter(), time.process_time()
        res = train_head(TrainHeadConfig(tr, te, solver="lbfgs", val_fraction=0.1, progress=False, **overrides))
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
        est = res.estimator
        out = {"seconds": seconds, "cpu_seconds": cpu, "per_l2_s": {float(k): v for k, v in est.solve_seconds_.items()},
               "chosen_l2": est.chosen_l2_, "val_acc": est.val_scores_[est.chosen_l2_],
               "test_acc": float(est.score(te.features, te.labels)), "iterations": dict(zip(map(float, est.l2_grid_), map(int, est.n_iter_))),
               "total_iterations": int(est.n_iter_.sum()), "stop_reason": {float(k): v for k, v in est.stop_reason_.items()},
               "converged": {float(k): bool(v) for k, v in est.converged_.items()},
               "tol": {float(k): v for k, v in est.tol_.items()}, "dtype": est.dtype_, "records": len(res.records)}
        print(f"  probekit {overrides or 'defaults'}: {seconds:.1f} s (CPU {cpu:.1f} s), iterations {list(out['iterations'].values())}, "
              f"chosen λ {out['chosen_l2']:.3g}, val {out['val_acc']:.4f}, test {out['test_acc']:.4f}", flush=True)
        return out

    defaults = ours()
    ours_s, ours_cpu = defaults["seconds"], defaults["cpu_seconds"]
    tight = ours(tol=1e-6) if tight_tol else None

    trn, va = stratified_split(tr.labels, 0.1, seed=0)  # the split train_head made
    X, y, Xv, yv = tr.features[trn], tr.labels[trn], tr.features[va], tr.labels[va]

    def sklearn_loop(warm: bool) -> dict:
        clf = LogisticRegression(max_iter=1000, warm_start=warm)
        out = {"per_l2_s": {}, "per_l2_cpu_s": {}, "iterations": {}, "val_acc": {}, "test_acc": {}, "stopped_by_budget": False}
        t0, c0 = time.perf_counter(), time.process_time()
        for l2 in sorted(DEFAULT_L2_GRID, reverse=True):
            if budget is not None and time.process_time() - c0 > budget:
                out["stopped_by_budget"] = True  # the ratio below is then a lower bound
                break
            t, c = time.perf_counter(), time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.set_params(C=1.0 / l2).fit(X, y)
            out["per_l2_s"][l2], out["per_l2_cpu_s"][l2] = time.perf_counter() - t, time.process_time() - c
            out["iterations"][l2] = int(clf.n_iter_[0])
            out["val_acc"][l2] = float(clf.score(Xv, yv))
            out["test_acc"][l2] = float(clf.score(te.features, te.labels))
            print(f"  sklearn {'warm' if warm else 'cold'} λ={l2:.3g}: {out['per_l2_s'][l2]:.1f} s (CPU {out['per_l2_cpu_s'][l2]:.1f} s), "
                  f"{out['iterations'][l2]} iterations, val {out['val_acc'][l2]:.4f}", flush=True)
        out["seconds"], out["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - c0
        best = max(out["val_acc"].values())
        out["chosen_l2"] = max(k for k, v in out["val_acc"].items() if v == best)
        out["chosen_val_acc"], out["chosen_test_acc"] = best, out["test_acc"][out["chosen_l2"]]
        out["total_iterations"] = sum(out["iterations"].values())
        return out

    ours = defaults
    result = {"probekit_defaults": ours, "sklearn_warm": sklearn_loop(True)}
    if tight is not None:  # the chosen λ continued to max |∇| ≤ 1e-6 (not the defaults; for the record)
        result["probekit_tol_1e-6"] = tight
        result["speedup_vs_warm_at_tol_1e-6"] = result["sklearn_warm"]["seconds"] / tight["seconds"]
    sk = result["sklearn_warm"]
    result["speedup_vs_warm"] = sk["seconds"] / ours_s
    result["cpu_speedup_vs_warm"] = sk["cpu_seconds"] / ours_cpu  # steadier than wall clock on a shared machine
    result["same_chosen_l2"] = sk["chosen_l2"] == ours["chosen_l2"]
    result["val_acc_diff_points"] = 100 * (ours["val_acc"] - sk["chosen_val_acc"])
    result["test_acc_diff_points"] = 100 * (ours["test_acc"] - sk["chosen_test_acc"])
    if cold:
        result["sklearn_cold"] = sklearn_loop(False)
        result["speedup_vs_cold"] = result["sklearn_cold"]["seconds"] / ours_s
        result["cpu_speedup_vs_cold"] = result["sklearn_cold"]["cpu_seconds"] / ours_cpu
    return result


def plain_sgd(X, y, Xte, yte, lr, seed, batch_size, epochs, momentum):
    """One head, the textbook way, with an ID test accuracy record after every step."""
    from probekit.heads.sgd import epoch_order, init_head

    N, D = X.shape
    C = int(y.max()) + 1
    W, b, g = init_head(seed, D, C)
    head = torch.nn.Linear(D, C)
    with torch.no_grad():
        head.weight.copy_(W.T), head.bias.copy_(b)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum)
    Xt, yt, Xe, ye = (torch.from_numpy(a) for a in (X, y, Xte, yte))
    spe = -(-N // batch_size)
    acc = None
    for t in range(epochs * spe):
        k = t % spe
        if k == 0:
            order = epoch_order(g, N)
        idx = order[k * batch_size:(k + 1) * batch_size]
        loss = torch.nn.functional.cross_entropy(head(Xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            acc = float((head(Xe).argmax(1) == ye).float().mean())
    return acc


def bench_sgd(tr, te, batch_size, epochs, lrs=(0.001, 0.01), seeds=(0, 1, 2, 3, 4), plain_heads=None) -> dict:
    from probekit.heads.sgd import SGDHeads

    X, y, Xte, yte = tr.features, tr.labels, te.features, te.labels
    last = {}
    t, c = time.perf_counter(), time.process_time()
    m = SGDHeads(lrs, seeds, batch_size=batch_size, epochs=epochs, momentum=0.9, device="cpu").fit(
        X, y, eval_sets={"id": (Xte, yte)}, callback=lambda p: last.update(p.acc))
    ours, ours_cpu = time.perf_counter() - t, time.process_time() - c
    pairs = [(lr, s) for lr in lrs for s in seeds][: plain_heads or None]
    t, c = time.perf_counter(), time.process_time()
    plain = [plain_sgd(X, y, Xte, yte, lr, s, batch_size, epochs, 0.9) for lr, s in pairs]
    scale = (len(lrs) * len(seeds)) / len(pairs)  # every head costs the plain loop the same
    theirs, theirs_cpu = (time.perf_counter() - t) * scale, (time.process_time() - c) * scale
    diff = max(abs(last["id"][h] - a) for h, a in enumerate(plain))
    return {"heads": len(lrs) * len(seeds), "steps": m.n_steps_, "records_per_head": m.n_steps_ + 1, "ours_s": ours,
            "plain_s": theirs, "plain_heads_timed": len(pairs), "speedup": theirs / ours,
            "ours_cpu_s": ours_cpu, "plain_cpu_s": theirs_cpu, "cpu_speedup": theirs_cpu / ours_cpu, "ours_s_per_step": ours / m.n_steps_,
            "max_final_acc_diff": diff, "batch_size": batch_size, "epochs": epochs}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--train", default="fashion-mnist:train")
    p.add_argument("--id", default="fashion-mnist:test")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cold", action="store_true", help="also time scikit-learn's cold loop (no warm_start; slow)")
    p.add_argument("--tight", action="store_true", help="also time probekit with --tol 1e-6 (the chosen λ solved tighter)")
    p.add_argument("--sklearn-budget", type=float, default=None,
                   help="stop a scikit-learn loop after this many CPU seconds (its ratio is then a lower bound)")
    p.add_argument("--skip", choices=("lbfgs", "sgd"), action="append", default=[], help="leave out a comparison")
    p.add_argument("--batch-size", type=int, default=32768)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--plain-heads", type=int, default=None,
                   help="time the plain loop on this many of the ten heads and scale (default: all ten)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "heads.json"))
    args = p.parse_args()
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    source, tr, te = load(args)
    res = {"features": source, "n_train": int(len(tr.labels)), "n_test": int(len(te.labels)), "dim": int(tr.features.shape[1]),
           "threads": args.threads, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    print(f"{source}: train {tr.features.shape}, test {te.features.shape}, {args.threads} thread(s)", flush=True)
    with threadpool_limits(args.threads):
        if "lbfgs" not in args.skip:
            res["lbfgs_sweep"] = bench_lbfgs(tr, te, args.cold, args.sklearn_budget, args.tight)
            print("L-BFGS sweep:", json.dumps(res["lbfgs_sweep"], default=str), flush=True)
        if "sgd" not in args.skip:
            res["sgd_heads"] = bench_sgd(tr, te, args.batch_size, args.epochs, plain_heads=args.plain_heads)
            print("SGD heads:", json.dumps(res["sgd_heads"]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2, default=str) + "\n")
    if "lbfgs_sweep" in res:
        lb = res["lbfgs_sweep"]
        bound = " (lower bound: the sklearn loop was stopped by --sklearn-budget)" if lb["sklearn_warm"]["stopped_by_budget"] else ""
        print(f"L-BFGS sweep at the defaults: {lb['speedup_vs_warm']:.1f}x (CPU time {lb['cpu_speedup_vs_warm']:.1f}x) "
              f"faster than sklearn's warm loop{bound}")
    if "sgd_heads" in res:
        print(f"SGD heads: {res['sgd_heads']['speedup']:.1f}x faster than one at a time")
    print("->", args.out)


if __name__ == "__main__":
    main()
