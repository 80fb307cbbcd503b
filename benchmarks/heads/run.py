"""Side-by-side speed of probekit's heads against the obvious alternatives, in one run.

(1) the ten-value L-BFGS L2 sweep (`LBFGSLogistic`) against scikit-learn's
    `LogisticRegression(solver="lbfgs", max_iter=1000)` looped over the same C = 1/λ
    (the CLIP README recipe); λ chosen on the same stratified validation split;
(2) ten SGD heads (2 lrs × 5 seeds) trained jointly by `SGDHeads`, evaluated on the ID and
    OOD sets every iteration, against training them one at a time with a plain
    nn.Linear + optim.SGD loop that also evaluates every iteration.

Features: cached EfficientNet-Lite0 features (`--model/--image-size/--cache-dir`, train =
`--train`, ID = `--id`, OOD = `--ood`) when present, else the sklearn digits pixels.
Both sides get the same thread count (`--threads`, torch and BLAS). Ratios are printed and
written to benchmarks/results/heads.json.
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
        from probekit.cache import resolve_features

        kw = dict(model=args.model, cache_dir=args.cache_dir, image_size=args.image_size)
        tr, te, oo = (resolve_features(s, **kw) for s in (args.train, args.id, args.ood))
        return "cached " + args.model, tr.features, tr.labels, te.features, te.labels, oo.features, oo.labels
    except Exception as e:  # noqa: BLE001 - fall back to bundled pixels, and say so
        print(f"no cached features ({e}); using sklearn digits pixels")
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        X = (X / 16).astype(np.float32)
        return "sklearn digits pixels", X[:1300], y[:1300], X[1300:], y[1300:], X[1300:], y[1300:]


def bench_lbfgs(Xtr, ytr, Xva, yva, tol, dtype="float64"):
    from sklearn.linear_model import LogisticRegression

    from probekit.heads.lbfgs import DEFAULT_L2_GRID, LBFGSLogistic

    t = time.perf_counter()
    m = LBFGSLogistic(DEFAULT_L2_GRID, max_iter=1000, tol=tol, dtype=dtype).fit(Xtr, ytr, Xva, yva)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    sk_val = {}
    X64 = Xtr.astype(np.float64)
    for l2 in DEFAULT_L2_GRID:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = LogisticRegression(C=1.0 / l2, max_iter=1000).fit(X64, ytr)
        sk_val[l2] = float((clf.predict(Xva) == yva).mean())
    theirs = time.perf_counter() - t
    sk_best = max(sk_val.values())
    sk_l2 = max(k for k, v in sk_val.items() if v == sk_best)
    return {"ours_s": ours, "sklearn_s": theirs, "speedup": theirs / ours, "ours_chosen_l2": m.chosen_l2_,
            "ours_val_acc": m.val_scores_[m.chosen_l2_], "sklearn_chosen_l2": sk_l2, "sklearn_val_acc": sk_best,
            "val_acc_diff_points": 100 * (m.val_scores_[m.chosen_l2_] - sk_best), "ours_iters": sum(m.n_iter_.values()), "tol": tol, "dtype": dtype}


def plain_sgd(X, y, Xs, ys, lr, seed, batch_size, epochs, momentum):
    from probekit.heads.sgd import epoch_order, init_head

    N, D = X.shape
    C = int(y.max()) + 1
    W, b, g = init_head(seed, D, C)
    head = torch.nn.Linear(D, C)
    with torch.no_grad():
        head.weight.copy_(W.T), head.bias.copy_(b)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    tests = [(torch.from_numpy(a), torch.from_numpy(b_)) for a, b_ in zip(Xs, ys)]
    spe = -(-N // batch_size)
    accs = None
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
            accs = [float((head(a).argmax(1) == b_).float().mean()) for a, b_ in tests]
    return accs


def bench_sgd(Xtr, ytr, Xte, yte, Xood, yood, batch_size, epochs, lrs=(0.01, 0.1), seeds=(0, 1, 2, 3, 4)):
    from probekit.heads.sgd import SGDHeads

    last = {}
    t = time.perf_counter()
    m = SGDHeads(lrs, seeds, batch_size=batch_size, epochs=epochs, momentum=0.9, device="cpu").fit(
        Xtr, ytr, eval_sets={"id": (Xte, yte), "ood": (Xood, yood)}, callback=lambda p: last.update(p.acc))
    ours = time.perf_counter() - t
    t = time.perf_counter()
    plain = [plain_sgd(Xtr, ytr, (Xte, Xood), (yte, yood), lr, s, batch_size, epochs, 0.9) for lr in lrs for s in seeds]
    theirs = time.perf_counter() - t
    diff = max(max(abs(last["id"][h] - p[0]), abs(last["ood"][h] - p[1])) for h, p in enumerate(plain))
    return {"heads": len(plain), "steps": m.n_steps_, "ours_s": ours, "plain_s": theirs, "speedup": theirs / ours,
            "max_final_acc_diff": diff, "batch_size": batch_size, "epochs": epochs}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--train", default="digits:train")
    p.add_argument("--id", default="digits:test")
    p.add_argument("--ood", default="mnist5k:test")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tol", type=float, default=1e-4, help="our L-BFGS tolerance (sklearn's default tol is 1e-4)")
    p.add_argument("--lbfgs-dtype", default="float64")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "heads.json"))
    args = p.parse_args()
    from threadpoolctl import threadpool_limits

    from probekit.heads.lbfgs import stratified_split

    torch.set_num_threads(args.threads)
    source, Xtr, ytr, Xte, yte, Xood, yood = load(args)
    tr, va = stratified_split(ytr, 0.2, seed=0)
    res = {"features": source, "n_train": int(len(tr)), "n_val": int(len(va)), "dim": int(Xtr.shape[1]), "threads": args.threads,
           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    with threadpool_limits(args.threads):
        res["lbfgs_sweep"] = bench_lbfgs(Xtr[tr], ytr[tr], Xtr[va], ytr[va], args.tol, args.lbfgs_dtype)
        print("L-BFGS sweep:", json.dumps(res["lbfgs_sweep"]))
        res["sgd_heads"] = bench_sgd(Xtr, ytr, Xte, yte, Xood, yood, args.batch_size, args.epochs)
        print("SGD heads:", json.dumps(res["sgd_heads"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"L-BFGS sweep {res['lbfgs_sweep']['speedup']:.1f}x faster than sklearn; SGD heads {res['sgd_heads']['speedup']:.1f}x faster than one-at-a-time -> {args.out}")


if __name__ == "__main__":
    main()
