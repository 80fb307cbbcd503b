"""Full-batch multinomial logistic regression by L-BFGS, swept over an L2 grid.

Objective for one L2 strength λ (bias unpenalised)::

    Σᵢ CE(W xᵢ + b, yᵢ) + (λ / 2) ‖W‖²

For three or more classes this is scikit-learn's ``LogisticRegression(solver="lbfgs",
C=1/λ)`` (sklearn minimises ``C Σᵢ CE + ½‖W‖²``, the same problem scaled by C), so
**λ = 1/C**. For two classes sklearn fits one weight vector ``w`` (binomial model) while
probekit keeps two symmetric rows ``W = [-w/2, w/2]`` whose penalty is ``(λ/4)‖w‖²``: the
same problem is then **C = 2/λ**. The CLIP recipe (DESIGN.md) sweeps ten log-spaced λ from
1e-6 to 1e7 and picks λ by validation accuracy.

Speed (docs/benchmarks.md) comes from
1. a Kronecker preconditioner (`logistic.KroneckerPreconditioner`): the feature covariance,
   computed once for the grid, times each λ's softmax curvature between classes, computed at
   its warm start: raw L-BFGS spends most of its iterations on feature scale and class curvature;
2. warm starts along the grid, strongest λ first (the regularisation path);
3. every λ solved to ``select_tol`` (sklearn's default 1e-4, enough to *choose* λ); a smaller
   ``tol`` (default also 1e-4) continues only the chosen λ, from the same L-BFGS state;
4. float32 GEMMs with float64 softmax and sums, two products per evaluation, row-chunked
   (``dtype="auto"`` picks them for ``tol ≥ 1e-7`` and float64 products below);
5. the L-BFGS history as matrices, and records scored up to 32 iterates at a time in one
   product (the callback gets them in order, at most 32 iterations late; L-BFGS runs do not resume).

`converged_[λ]` is True only when max |∇| of the *mean* objective (sklearn's ``tol``
criterion) reached the tolerance that λ was solved to (``tol_[λ]``); ``stop_reason_[λ]``
says which criterion stopped it (`optim.LBFGS.run`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from probekit.errors import UserError
from probekit.runtime import choose_device
from probekit.heads.evaluation import (
    SingleHead,
    check_features,
    check_positive_list,
    encode_targets,
    encode_with,
    evaluate_all,
    make_eval_sets,
    to_tensor,
)
from probekit.heads.logistic import KroneckerPreconditioner, LogisticData
from probekit.heads.optim import LBFGS
from probekit.heads.sgd import EvalPoint

DEFAULT_L2_GRID = tuple(float(v) for v in np.logspace(-6, 7, 10))
DTYPES = {"float64": torch.float64, "float32": torch.float32}
ROUNDING = {"float64": 1e-10, "float32": 1e-6}  # relative level of f below which Armijo is unreliable
FLOAT32_TOL = 1e-7  # dtype="auto": float32 products reach max |∇| ≤ 1e-7 on typical features; below it, float64
RECORD_BATCH, RECORD_BYTES = 32, 1 << 28  # records scored together: at most 32 iterates or 256 MB of them


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


class _Solve:
    """One λ's L-BFGS solve, driven by `_drive` (which may batch it with others)."""

    def __init__(self, l2: float, state: LBFGS, refit: bool = False):
        self.l2, self.state, self.refit = l2, state, refit
        self.evaluations = 0
        self.seconds = 0.0  # wall clock of its solve
        self.recorded = -1  # last iteration handed to the callback
        self.request: torch.Tensor | None = None
        self.gen = None

    def start(self, tol: float, max_iter: int) -> None:
        self.gen = self.state.run(tol, max_iter)
        self.advance(None)

    def advance(self, value) -> list[int]:
        """Send `value`, run to the next evaluation request; returns the iterations completed meanwhile."""
        done = []
        try:
            r = self.gen.send(value) if value is not None else next(self.gen)
            while r is None:
                done.append(self.state.iterations)
                r = next(self.gen)
            self.request = r
        except StopIteration:
            self.request = None
            self.gen = None
        return done

    @property
    def active(self) -> bool:
        return self.gen is not None


class LBFGSLogistic(SingleHead):
    """Multinomial logistic regression swept over L2 strengths λ; a scikit-learn classifier.

    λ is chosen by validation accuracy (``X_val``/``y_val``, or a stratified ``val_fraction``
    of the training rows, seeded by ``val_seed``); ties go to the larger λ. ``refit=True``
    retrains on train + validation with the chosen λ (warm-started from its solution).
    With one λ no validation is needed (a plain regularised classifier: grid search, pipelines).

    Tolerances bound max |∇| of the *mean* objective (sklearn's ``tol``): every λ is solved
    to ``select_tol`` (enough to choose λ), then the chosen one on to ``tol``
    (``select_tol=None``: every λ to ``tol``).

    Learned: ``classes_``, ``coef_ [C, D]``, ``intercept_ [C]`` (the chosen λ, refitted when
    asked), ``chosen_l2_``, ``val_scores_ {λ: acc}`` (at ``select_tol``), ``l2_grid_`` (in
    the order solved: strongest first), ``n_iter_ [L]`` (iterations, aligned with
    ``l2_grid_``), ``path_coef_ [L, C, D]``, ``path_intercept_ [L, C]``, ``objective_ {λ:
    Σ CE + λ/2‖W‖²}``, ``converged_ {λ: bool}``, ``stop_reason_ {λ: str}``, ``tol_ {λ}``,
    ``grad_max_ {λ}``, ``solve_seconds_ {λ}``. ``init=(W [C, D], b [C])`` starts the first λ from given weights
    (e.g. zero-shot). Labels may be any sortable values; with ``n_classes`` they must be
    the indices ``0..n_classes-1`` (a feature file's label space).
    """

    def __init__(self, l2_grid: Sequence[float] = DEFAULT_L2_GRID, *, max_iter: int = 1000, tol: float = 1e-4,
                 select_tol: float | None = 1e-4, refit: bool = False, warm_start: bool = True,
                 val_fraction: float | None = None, val_seed: int = 0, history: int = 10, eval_every: int = 1,
                 init=None, n_classes: int | None = None, device=None, dtype: str = "auto",
                 precondition: bool = True):
        self.l2_grid = l2_grid
        self.max_iter = max_iter
        self.tol = tol
        self.select_tol = select_tol
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
        self.precondition = precondition

    def _check_params(self) -> list[float]:
        grid = check_positive_list(self.l2_grid, "l2_grid (--l2-grid)")
        if isinstance(self.max_iter, bool) or int(self.max_iter) != self.max_iter or self.max_iter < 1:
            raise UserError(f"max_iter (--max-iter) must be a positive integer, got {self.max_iter!r}")
        for name, v in (("tol (--tol)", self.tol), ("select_tol (--select-tol)", self.select_tol)):
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise UserError(f"{name} must be positive, got {v!r}")
        if self.tol is None:
            raise UserError("tol (--tol) must be positive, got None")
        if self.dtype not in (*DTYPES, "auto"):
            raise UserError(f"unknown dtype {self.dtype!r}; choose auto, float64 or float32")
        if int(self.eval_every) != self.eval_every or self.eval_every < 0:
            raise UserError(f"eval_every (--eval-every) must be a non-negative integer, got {self.eval_every!r}")
        if int(self.history) != self.history or self.history < 1:
            raise UserError(f"history must be a positive integer, got {self.history!r}")
        return sorted(set(grid), reverse=True)

    # -- fitting ----------------------------------------------------------------------
    def fit(self, X, y, X_val=None, y_val=None, eval_sets=None, callback: Callable[[EvalPoint], None] | None = None) -> LBFGSLogistic:
        """Solve for every λ of the grid (strongest first), choose λ on validation, optionally refit.

        `callback` receives an `EvalPoint` (one head) at iteration 0, every ``eval_every``
        iterations and at the last iteration of each λ, with ``extra`` = ``{"l2",
        "objective", "grad_max", "refit"}``; `eval_sets` labels are class indices.
        """
        grid = self._check_params()
        X = check_features(X, "X")
        N, D = X.shape
        self.classes_, y = encode_targets(y, N, self.n_classes, "y")
        if X_val is None and self.val_fraction and len(grid) > 1:
            tr, va = stratified_split(y, float(self.val_fraction), self.val_seed)
            X, X_val, y, y_val = X[tr], X[va], y[tr], self.classes_[y[va]]
            N = X.shape[0]
        if X_val is not None:
            X_val = check_features(X_val, "X_val")
            if X_val.shape[1] != D:
                raise UserError(f"X_val has {X_val.shape[1]} features but X has {D}")
            y_val = encode_with(self.classes_, y_val, X_val.shape[0], "y_val")
        elif len(grid) > 1:
            raise UserError("choosing λ from several values needs validation data: pass X_val/y_val (--val) or val_fraction (--val-fraction)")
        C = len(self.classes_)
        dev = choose_device(self.device)
        self.dtype_ = self.dtype if self.dtype != "auto" else ("float64" if self.tol < FLOAT32_TOL else "float32")
        dt = DTYPES[self.dtype_]
        storage = torch.float16 if getattr(X, "dtype", None) in (np.float16, torch.float16) and dt == torch.float32 else dt
        data = LogisticData(to_tensor(X, dev, storage), torch.from_numpy(y).to(dev), C, dt)
        sets = make_eval_sets(eval_sets, dev, storage, D)
        val_set = make_eval_sets({"val": (X_val, y_val)}, dev, storage, D)[0] if X_val is not None else None
        theta0 = self._start(D, C, dev)

        mu = data.mean()
        spectrum = data.spectrum(mu) if self.precondition else None
        eps_f = ROUNDING[self.dtype_]

        def split(T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return T[:, : D * C].view(-1, D, C), T[:, D * C:]

        def evaluate(data: LogisticData, thetas: list[torch.Tensor], l2s: list[float]):
            f, gW, gb = data.evaluate(*split(torch.stack(thetas)), torch.tensor(l2s, dtype=torch.float64, device=dev))
            g = torch.cat([gW.reshape(len(thetas), -1), gb], 1)
            return [(float(f[i]), g[i]) for i in range(len(thetas))]

        def new_solve(l2: float, theta, fg, refit=False) -> _Solve:
            return _Solve(l2, LBFGS(theta, *fg, history=int(self.history), eps_f=eps_f), refit)

        def precondition(data: LogisticData, solves: list[_Solve], tol: float) -> None:
            """Give each solve that has work to do its λ's preconditioner, from the curvature at its start."""
            todo = [s for s in solves if spectrum and not s.state.preconditioned and s.state.grad_max > tol]
            if todo:
                A = data.softmax_curvature(*split(torch.stack([s.state.x for s in todo])))
                for s, a in zip(todo, A):
                    s.state.set_preconditioner(KroneckerPreconditioner(*spectrum, mu, a, s.l2 / data.N))

        pending: list[tuple] = []  # records waiting for one batched scoring product
        per_batch = max(1, min(RECORD_BATCH, RECORD_BYTES // max(1, 8 * theta0.numel())))

        def flush() -> None:
            if not pending:
                return
            T = torch.stack([snap[0] for snap in pending])
            W, b = T[:, : D * C].view(-1, D, C), T[:, D * C:]
            acc = evaluate_all(sets, W, b)
            for i, (_, step, evals, f, extra) in enumerate(pending):
                callback(EvalPoint(step, evals, np.array([f]), {k: v[i:i + 1] for k, v in acc.items()},
                                   extra, W[i:i + 1], b[i:i + 1]))
            pending.clear()

        def report(data: LogisticData, solves: list[_Solve]) -> None:
            """Queue a record of each solve's current iterate; scored `per_batch` at a time (`flush`)."""
            if callback is None:
                return
            for s in solves:
                s.recorded = s.state.iterations
                pending.append((s.state.x, s.state.iterations, float(s.evaluations), s.state.f,
                                {"l2": s.l2, "objective": s.state.f * data.N, "grad_max": s.state.grad_max,
                                 "refit": s.refit}))
            if len(pending) >= per_batch:
                flush()

        def drive(data: LogisticData, solves: list[_Solve], tol: float) -> None:
            """Run `solves` to `tol` together: each round evaluates all their trial points in one product."""
            every = int(self.eval_every)
            precondition(data, solves, tol)
            for s in solves:
                s.start(tol, int(self.max_iter))
            report(data, [s for s in solves if s.recorded < 0])
            active = [s for s in solves if s.active]
            try:
                while active:
                    res = evaluate(data, [s.request for s in active], [s.l2 for s in active])
                    due = []
                    for s, (f, g) in zip(active, res):
                        s.evaluations += 1
                        done = s.advance((f, g))
                        if (every and any(it % every == 0 for it in done)) or (not s.active and s.recorded != s.state.iterations):
                            due.append(s)
                    report(data, due)
                    active = [s for s in active if s.active]
            except KeyboardInterrupt:  # hand over what was computed before stopping
                flush()
                raise
            flush()

        select_tol = float(self.tol) if self.select_tol is None or len(grid) == 1 else max(float(self.select_tol), float(self.tol))
        self.l2_grid_ = grid
        solves: list[_Solve] = []
        for l2 in grid:
            if solves and self.warm_start:  # the previous solution, re-scored for this λ without a pass over the data
                theta, fg = solves[-1].state.x, _rescore(solves[-1], l2, D * C, data.N)
            else:
                theta, fg = theta0, evaluate(data, [theta0], [l2])[0]
            s = new_solve(l2, theta, fg)
            t = time.perf_counter()
            drive(data, [s], select_tol)
            s.seconds = time.perf_counter() - t
            solves.append(s)
        self.tol_ = {s.l2: select_tol for s in solves}

        path = torch.stack([s.state.x for s in solves])
        PW, Pb = path[:, : D * C].view(-1, D, C), path[:, D * C:]
        if val_set is not None:
            scores = evaluate_all([val_set], PW, Pb)["val"]
            self.val_scores_ = {s.l2: float(a) for s, a in zip(solves, scores)}
            best = max(self.val_scores_.values())
            self.chosen_l2_ = max(l2 for l2 in grid if self.val_scores_[l2] == best)
        else:
            self.val_scores_ = {}
            self.chosen_l2_ = grid[0]
        chosen = solves[grid.index(self.chosen_l2_)]
        if select_tol > self.tol:  # carry on with the same iterate and curvature pairs
            t = time.perf_counter()
            drive(data, [chosen], float(self.tol))
            chosen.seconds += time.perf_counter() - t
            self.tol_[chosen.l2] = float(self.tol)
            path[grid.index(self.chosen_l2_)] = chosen.state.x
        self.n_iter_ = np.array([s.state.iterations for s in solves], dtype=np.int64)
        self.objective_ = {s.l2: s.state.f * data.N for s in solves}
        self.grad_max_ = {s.l2: s.state.grad_max for s in solves}
        self.stop_reason_ = {s.l2: s.state.stop_reason for s in solves}
        self.solve_seconds_ = {s.l2: s.seconds for s in solves}
        self.converged_ = {s.l2: s.state.stop_reason == "gtol" for s in solves}
        final = chosen.state.x
        if self.refit and val_set is not None:
            full = LogisticData(torch.cat([data.X, val_set.X.to(storage)]), torch.cat([data.y, val_set.y]), C, dt)
            r = new_solve(self.chosen_l2_, final, evaluate(full, [final], [self.chosen_l2_])[0], refit=True)
            drive(full, [r], float(self.tol))
            final = r.state.x
            self.refit_objective_, self.refit_n_iter_ = r.state.f * full.N, r.state.iterations
            self.refit_converged_, self.refit_stop_reason_ = r.state.stop_reason == "gtol", r.state.stop_reason
        self.path_coef_ = PW.transpose(1, 2).float().cpu().numpy()
        self.path_intercept_ = Pb.float().cpu().numpy()
        self.theta_ = final
        self.W_ = final[: D * C].view(1, D, C).float()
        self.b_ = final[D * C:].view(1, C).float()
        self.coef_ = self.W_[0].T.cpu().numpy()
        self.intercept_ = self.b_[0].cpu().numpy()
        self.n_classes_, self.n_features_in_ = C, D
        return self

    def _start(self, D: int, C: int, dev) -> torch.Tensor:
        theta = torch.zeros(D * C + C, dtype=torch.float64, device=dev)
        if self.init is not None:
            W0, b0 = (torch.as_tensor(np.asarray(t)) for t in self.init)
            if tuple(W0.shape) != (C, D) or tuple(b0.shape) != (C,):
                raise UserError(f"init weights have shape {tuple(W0.shape)} / {tuple(b0.shape)}; expected [{C}, {D}] / [{C}]")
            theta = torch.cat([W0.T.reshape(-1), b0]).to(dev, torch.float64)
        return theta

    def objective(self, X, y, l2: float, coef=None, intercept=None) -> float:
        """Σ CE + λ/2 ‖W‖² of a head (default: the chosen one) on ``X, y`` (class indices), in float64."""
        coef = self.coef_ if coef is None else coef
        intercept = self.intercept_ if intercept is None else intercept
        return logistic_objective(X, y, coef, intercept, l2)


def _rescore(prev: _Solve, l2: float, n_weights: int, N: int):
    """(f, g) of the previous λ's solution under a new λ: only the penalty term changes."""
    x, delta = prev.state.x, l2 - prev.l2
    f = prev.state.f + 0.5 * delta * float((x[:n_weights] ** 2).sum()) / N
    g = prev.state.g.clone()
    g[:n_weights] += delta / N * x[:n_weights]
    return f, g


def logistic_objective(X, y, coef, intercept, l2: float) -> float:
    """Σᵢ CE(W xᵢ + b, yᵢ) + (λ/2)‖W‖² in float64 (coef ``[C, D]``, y class indices)."""
    X = torch.as_tensor(np.asarray(X, np.float64))
    logits = X @ torch.as_tensor(np.asarray(coef, np.float64)).T + torch.as_tensor(np.asarray(intercept, np.float64))
    y = torch.as_tensor(np.asarray(y))
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
    return float(ce) + 0.5 * l2 * float((torch.as_tensor(np.asarray(coef, np.float64)) ** 2).sum())
