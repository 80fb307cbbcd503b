"""Full-batch multinomial logistic regression by L-BFGS, swept over an L2 grid.

Objective for one L2 strength λ (bias unpenalised)::

    Σᵢ CE(W xᵢ + b, yᵢ) + (λ / 2) ‖W‖²

which is scikit-learn's ``LogisticRegression(solver="lbfgs", C=1/λ)`` objective (sklearn
minimises ``C Σᵢ CE + ½‖W‖²``, the same problem scaled by C). So ``λ = 1 / C``.
The CLIP recipe (DESIGN.md) sweeps ten log-spaced λ from 1e-6 to 1e7 and picks λ by
validation accuracy.

Speed comes from (1) warm starts along the grid, strongest λ first: the heavily
regularised problems are easy and each solution is a good start for the next weaker λ
(the regularisation path), (2) an analytic gradient (two GEMMs per evaluation, no
autograd), (3) float64 by default so the objective matches sklearn to 1e-4 relative;
``dtype="float32"`` is faster still, for GPUs and very large sets.
The line search is PyTorch's strong-Wolfe search (`torch.optim.lbfgs._strong_wolfe`);
the two-loop recursion is written here so every iteration can be evaluated and logged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.optim.lbfgs import _strong_wolfe

from probekit.errors import UserError
from probekit.heads.evaluation import (
    FittedHeads,
    check_features,
    check_labels,
    check_positive_list,
    evaluate_all,
    make_eval_sets,
    resolve_device,
    to_tensor,
)
from probekit.heads.sgd import EvalPoint

DEFAULT_L2_GRID = tuple(float(v) for v in np.logspace(-6, 7, 10))
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def l2_id(l2: float, refit: bool = False) -> str:
    return f"l2={l2:.6g}" + (",refit" if refit else "")


def stratified_split(y: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val) with `fraction` of every class held out (at least one per class with ≥ 2 rows)."""
    if not (0.0 < fraction < 1.0):
        raise UserError(f"validation fraction must be in (0, 1), got {fraction!r}")
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        k = int(round(fraction * len(rows)))
        k = min(max(k, 1 if len(rows) > 1 else 0), len(rows) - 1)
        val.append(rng.permutation(rows)[:k])
    val = np.sort(np.concatenate(val))
    if val.size == 0:
        raise UserError(f"validation fraction {fraction} leaves no validation rows; use a larger fraction")
    train = np.setdiff1d(np.arange(len(y)), val)
    return train, val


class _Problem:
    """Mean objective and gradient of L2-regularised multinomial logistic regression."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, C: int, l2: float):
        self.X, self.n, self.D, self.C = X, X.shape[0], X.shape[1], C
        self.Y = torch.zeros(self.n, C, dtype=X.dtype, device=X.device)
        self.Y[torch.arange(self.n, device=X.device), y] = 1
        self.l2 = l2
        self.fevals = 0

    def split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return theta[: self.D * self.C].view(self.D, self.C), theta[self.D * self.C:]

    def __call__(self, theta: torch.Tensor) -> tuple[float, torch.Tensor, float]:
        """(mean objective, its gradient, mean cross-entropy) at `theta`."""
        self.fevals += 1
        W, b = self.split(theta)
        logits = torch.addmm(b, self.X, W)
        lse = torch.logsumexp(logits, 1, keepdim=True)
        ce = float((lse.sum() - (logits * self.Y).sum()) / self.n)
        P = torch.exp(logits - lse) - self.Y
        gW = (P.T @ self.X).T  # [C, N] @ [N, D]: much faster than X.T @ P on CPU BLAS
        gW.add_(W, alpha=self.l2).div_(self.n)
        gb = P.sum(0).div_(self.n)
        reg = 0.5 * self.l2 * float((W * W).sum()) / self.n
        return ce + reg, torch.cat([gW.reshape(-1), gb]), ce


def minimize_lbfgs(fg: _Problem, theta: torch.Tensor, *, max_iter: int, tol: float, history: int = 20,
                   on_iter: Callable[[int, torch.Tensor, float, float], None] | None = None):
    """L-BFGS with strong-Wolfe line search; stops when max |∇f| ≤ tol (sklearn's gtol) or
    the objective stops moving (relative change < 1e-12), or after `max_iter` iterations.

    Returns (theta, objective, iterations, converged).
    """
    f, g, _ = fg(theta)
    if on_iter:
        on_iter(0, theta, f, float(g.abs().max()))
    old_s, old_y, rho = [], [], []
    it, converged = 0, float(g.abs().max()) <= tol
    while not converged and it < max_iter:
        it += 1
        # two-loop recursion: d = -H g
        q = -g.clone()
        alphas = []
        for s, yv, r in zip(reversed(old_s), reversed(old_y), reversed(rho)):
            a = r * float(s @ q)
            alphas.append(a)
            q.add_(yv, alpha=-a)
        if old_s:
            q.mul_(float(old_s[-1] @ old_y[-1]) / float(old_y[-1] @ old_y[-1]))
        for (s, yv, r), a in zip(zip(old_s, old_y, rho), reversed(alphas)):
            beta = r * float(yv @ q)
            q.add_(s, alpha=a - beta)
        d = q
        gtd = float(g @ d)
        if gtd > -1e-20:  # not a descent direction: restart from steepest descent
            old_s, old_y, rho = [], [], []
            d = -g
            gtd = float(g @ d)
        t = min(1.0, 1.0 / float(g.abs().sum())) if not old_s else 1.0

        def obj(x, step, direction):
            fx, gx, _ = fg(x + step * direction)
            return fx, gx

        f_new, g_new, t, _ = _strong_wolfe(obj, theta, t, d, f, g, gtd, max_ls=50)
        s = d * t
        theta = theta + s
        yv = g_new - g
        ys = float(yv @ s)
        if ys > 1e-10 * float(yv @ yv):
            if len(old_s) == history:
                old_s.pop(0), old_y.pop(0), rho.pop(0)
            old_s.append(s), old_y.append(yv), rho.append(1.0 / ys)
        moved = abs(f - f_new) / max(abs(f), abs(f_new), 1.0)
        f, g = f_new, g_new
        gmax = float(g.abs().max())
        converged = gmax <= tol or moved < 1e-12 or t == 0
        if on_iter:
            on_iter(it, theta, f, gmax)
    return theta, f, it, converged


class LBFGSLogistic(FittedHeads):
    """Multinomial logistic regression swept over L2 strengths λ = 1/C; scikit-learn style.

    λ is chosen by validation accuracy (``X_val``/``y_val``, or a stratified ``val_fraction``
    of the training rows, seeded by ``val_seed``); ties go to the larger λ. ``refit=True``
    retrains on train + validation with the chosen λ (warm-started from its solution).
    ``tol`` is the largest allowed |gradient| of the *mean* objective (sklearn's ``tol``).

    Learned: ``chosen_l2_``, ``val_scores_ {λ: acc}``, ``coef_ [C, D]``, ``intercept_ [C]``
    (the chosen λ, refitted when asked), ``path_coef_ [L, C, D]``, ``path_intercept_``,
    ``l2_grid_`` (in the order solved: strongest first), ``n_iter_ {λ: iterations}``,
    ``objective_ {λ: Σ CE + λ/2‖W‖²}``, ``converged_``.
    ``init=(W [C, D], b [C])`` starts the first λ from given weights (e.g. zero-shot).
    """

    def __init__(self, l2_grid: Sequence[float] = DEFAULT_L2_GRID, *, max_iter: int = 1000, tol: float = 1e-6,
                 refit: bool = False, warm_start: bool = True, val_fraction: float | None = None, val_seed: int = 0,
                 history: int = 20, eval_every: int = 1, init=None, n_classes: int | None = None, device=None,
                 dtype: str = "float64"):
        self.l2_grid = l2_grid
        self.max_iter = max_iter
        self.tol = tol
        self.refit = refit
        self.warm_start = warm_start
        self.val_fraction = val_fraction
        self.val_seed = val_seed
        self.history = history
        self.eval_every = eval_every
        self.init = init
        self.n_classes = n_classes
        self.device = device
        self.dtype = dtype

    def _check_params(self) -> list[float]:
        grid = check_positive_list(self.l2_grid, "l2_grid (--l2-grid)")
        if int(self.max_iter) != self.max_iter or self.max_iter < 1:
            raise UserError(f"max_iter (--max-iter) must be a positive integer, got {self.max_iter!r}")
        if not (math.isfinite(self.tol) and self.tol > 0):
            raise UserError(f"tol (--tol) must be positive, got {self.tol!r}")
        if self.dtype not in DTYPES:
            raise UserError(f"unknown dtype {self.dtype!r}; choose float64 or float32")
        if int(self.eval_every) != self.eval_every or self.eval_every < 0:
            raise UserError(f"eval_every (--eval-every) must be a non-negative integer, got {self.eval_every!r}")
        return sorted(set(grid), reverse=True)

    def fit(self, X, y, X_val=None, y_val=None, eval_sets=None, callback: Callable[[EvalPoint], None] | None = None) -> LBFGSLogistic:
        """Solve for every λ of the grid (strongest first), choose λ on validation, optionally refit.

        `callback` receives an `EvalPoint` (one head) after every L-BFGS iteration with
        ``extra`` = ``{"l2", "objective", "grad_max", "refit"}``.
        """
        grid = self._check_params()
        X = check_features(X, "X")
        N, D = X.shape
        y = check_labels(y, N, "y")
        if X_val is None and self.val_fraction:
            tr, va = stratified_split(y, float(self.val_fraction), self.val_seed)
            X, X_val, y, y_val = X[tr], X[va], y[tr], y[va]
            N = X.shape[0]
        if X_val is not None:
            X_val = check_features(X_val, "X_val")
            if X_val.shape[1] != D:
                raise UserError(f"X_val has {X_val.shape[1]} features but X has {D}")
            y_val = check_labels(y_val, X_val.shape[0], "y_val")
        elif len(grid) > 1:
            raise UserError("choosing λ from several values needs validation data: pass X_val/y_val (--val) or val_fraction (--val-fraction)")
        C = int(self.n_classes or (max(y.max(), -1 if y_val is None else y_val.max()) + 1))
        dev = resolve_device(self.device)
        dt = DTYPES[self.dtype]
        Xt = to_tensor(X, dev, dt)
        yt = torch.from_numpy(y).to(dev)
        sets = make_eval_sets(eval_sets, dev, dt, D)
        val_set = make_eval_sets({"val": (X_val, y_val)}, dev, dt, D)[0] if X_val is not None else None

        theta = torch.zeros(D * C + C, dtype=dt, device=dev)
        if self.init is not None:
            W0, b0 = (torch.as_tensor(np.asarray(t)) for t in self.init)
            if tuple(W0.shape) != (C, D) or tuple(b0.shape) != (C,):
                raise UserError(f"init weights have shape {tuple(W0.shape)} / {tuple(b0.shape)}; expected [{C}, {D}] / [{C}]")
            theta = torch.cat([W0.T.reshape(-1), b0]).to(dev, dt)

        def heads(th):
            W = th[: D * C].view(1, D, C)
            return W, th[D * C:].view(1, C)

        def run(problem: _Problem, theta, l2, refit):
            def on_iter(it, th, f, gmax):
                if callback is None or not (it == 0 or (self.eval_every and it % self.eval_every == 0)):
                    return
                W, b = heads(th)
                callback(EvalPoint(it, float(problem.fevals), np.array([f]), evaluate_all(sets, W, b),
                                   {"l2": l2, "objective": f * problem.n, "grad_max": gmax, "refit": refit}, W, b))

            theta, f, it, ok = minimize_lbfgs(problem, theta, max_iter=int(self.max_iter), tol=float(self.tol),
                                              history=int(self.history), on_iter=on_iter)
            if callback is not None and it > 0 and (not self.eval_every or it % self.eval_every):
                W, b = heads(theta)  # always log the final iterate
                callback(EvalPoint(it, float(problem.fevals), np.array([f]), evaluate_all(sets, W, b),
                                   {"l2": l2, "objective": f * problem.n, "grad_max": float("nan"), "refit": refit}, W, b))
            return theta, f * problem.n, it, ok

        self.l2_grid_, self.val_scores_, self.n_iter_, self.objective_, self.converged_ = grid, {}, {}, {}, {}
        path = []
        start = theta
        for l2 in grid:
            problem = _Problem(Xt, yt, C, l2)
            sol, obj, it, ok = run(problem, start if self.warm_start else theta, l2, False)
            path.append(sol)
            self.n_iter_[l2], self.objective_[l2], self.converged_[l2] = it, obj, ok
            if val_set is not None:
                W, b = heads(sol)
                self.val_scores_[l2] = float(evaluate_all([val_set], W, b)["val"][0])
            start = sol
        if val_set is not None:
            best = max(self.val_scores_.values())
            self.chosen_l2_ = max(l2 for l2 in grid if self.val_scores_[l2] == best)
        else:
            self.chosen_l2_ = grid[0]
        chosen = path[grid.index(self.chosen_l2_)]
        if self.refit and val_set is not None:
            Xall = torch.cat([Xt, val_set.X])
            yall = torch.cat([yt, val_set.y])
            chosen, obj, it, ok = run(_Problem(Xall, yall, C, self.chosen_l2_), chosen, self.chosen_l2_, True)
            self.refit_objective_, self.refit_n_iter_ = obj, it
        P = torch.stack(path)
        self.path_coef_ = P[:, : D * C].view(-1, D, C).transpose(1, 2).float().cpu().numpy()
        self.path_intercept_ = P[:, D * C:].float().cpu().numpy()
        self.theta_ = chosen
        self.W_, self.b_ = (t.float() for t in heads(chosen))
        self.coef_ = self.W_[0].T.cpu().numpy()
        self.intercept_ = self.b_[0].cpu().numpy()
        self.n_classes_, self.n_features_in_ = C, D
        return self

    def predict(self, X, restrict=None) -> np.ndarray:
        """Predicted classes ``[N]`` of the chosen (or refitted) head."""
        return self._predict_all(X, restrict)[0]

    def score(self, X, y) -> float:
        pred = self.predict(X)
        return float((pred == check_labels(y, len(pred), "y")).mean())

    def objective(self, X, y, l2: float, coef=None, intercept=None) -> float:
        """Σ CE + λ/2 ‖W‖² of a head (default: the chosen one) on ``X, y``, in float64."""
        coef = self.coef_ if coef is None else coef
        intercept = self.intercept_ if intercept is None else intercept
        return logistic_objective(X, y, coef, intercept, l2)


def logistic_objective(X, y, coef, intercept, l2: float) -> float:
    """Σᵢ CE(W xᵢ + b, yᵢ) + (λ/2)‖W‖² in float64 (coef ``[C, D]``)."""
    X = torch.as_tensor(np.asarray(X, np.float64))
    logits = X @ torch.as_tensor(np.asarray(coef, np.float64)).T + torch.as_tensor(np.asarray(intercept, np.float64))
    y = torch.as_tensor(np.asarray(y))
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
    return float(ce) + 0.5 * l2 * float((torch.as_tensor(np.asarray(coef, np.float64)) ** 2).sum())
