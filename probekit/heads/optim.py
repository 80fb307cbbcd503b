"""L-BFGS with a Wolfe line search, written so that many problems can share one evaluation.

A solve never calls the objective itself: `LBFGS.run` is a generator that yields the point
it wants evaluated and is sent back ``(f, g)``. A driver can therefore evaluate the trial
points of many independent problems (the ten λ of a sweep) in one batched product, or one
problem at a time, with the same code.

* The curvature pairs are kept as matrices ``S, Y [m, n]`` and the direction ``-H g`` comes
  from the compact representation of Byrd, Nocedal & Schnabel (1994): a few matrix-vector
  products and two ``m × m`` triangular solves, no Python loop over the pairs.
* ``H0 = γ M`` with a caller-supplied symmetric positive definite ``M`` (a preconditioner:
  an approximate inverse Hessian) and the usual scaling ``γ = sᵀy / yᵀMy``.
* The line search (`wolfe_search`) brackets a step satisfying the weak Wolfe conditions
  (Armijo c1 = 1e-4, curvature c2 = 0.9) with safeguarded cubic interpolation; when the
  objective change is at the level of rounding it falls back to Hager & Zhang's
  approximate Wolfe test, which needs only directional derivatives.
* A solve stops for one stated reason: ``"gtol"`` (max |∇f| ≤ tol, the only reason that
  counts as converged), ``"max_iter"``, ``"ftol"`` (relative change of f below 1e-15 ·
  max(|f|, |f_new|): truly relative; twice in a row, the second time right after dropping
  the pairs) or ``"line_search"`` (no acceptable step exists at this precision).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator

import torch

C1, C2 = 1e-4, 0.9  # weak Wolfe constants (Nocedal & Wright's choice for quasi-Newton)
FTOL = 1e-15  # relative change of f that counts as no progress
MAX_LS = 30

Evaluation = tuple[float, torch.Tensor]  # (f, g) at a trial point


def _cubic_min(t0: float, f0: float, d0: float, t1: float, f1: float, d1: float) -> float:
    """Minimiser of the cubic through (t0, f0, f'0) and (t1, f1, f'1); NaN when it has none."""
    d1_ = d0 + d1 - 3 * (f0 - f1) / (t0 - t1)
    disc = d1_ * d1_ - d0 * d1
    if disc < 0:
        return math.nan
    d2 = math.copysign(math.sqrt(disc), t1 - t0)
    denom = d1 - d0 + 2 * d2
    if denom == 0:
        return math.nan
    return t1 - (t1 - t0) * (d1 + d2 - d1_) / denom


def wolfe_search(f0: float, gtd0: float, t: float, direction: torch.Tensor, eps_f: float
                 ) -> Generator[float, Evaluation, tuple[float, float, torch.Tensor] | None]:
    """Find a step along `direction` meeting the weak Wolfe conditions.

    Yields trial steps and receives ``(f, g)`` at ``x + t·d``; returns ``(t, f, g)`` of the
    accepted step, or None when no acceptable step is found in `MAX_LS` trials. `eps_f`
    is the relative rounding level of f: below it, Armijo is replaced by approximate Wolfe.
    """
    lo, f_lo, d_lo = 0.0, f0, gtd0
    hi, f_hi, d_hi = math.inf, math.nan, math.nan
    best = None
    for _ in range(MAX_LS):
        f, g = yield t
        gtd = float(g @ direction)
        finite = math.isfinite(f) and math.isfinite(gtd)
        armijo = finite and f <= f0 + C1 * t * gtd0
        approx = finite and f <= f0 + eps_f * abs(f0) and gtd <= (2 * 0.1 - 1) * gtd0  # Hager-Zhang, δ = 0.1
        if finite and (armijo or approx) and gtd >= C2 * gtd0:
            return t, f, g
        if not (armijo or approx):  # too long: the minimum is before t
            hi, f_hi, d_hi = t, f, gtd
        else:  # sufficient decrease but still descending steeply: go further
            lo, f_lo, d_lo = t, f, gtd
            best = (t, f, g)
        if math.isinf(hi):
            t = 4.0 * t
            continue
        trial = _cubic_min(lo, f_lo, d_lo, hi, f_hi, d_hi) if math.isfinite(f_hi) and math.isfinite(d_hi) else math.nan
        width = hi - lo
        if not (math.isfinite(trial) and lo + 0.1 * width <= trial <= hi - 0.1 * width):
            trial = lo + 0.5 * width
        t = trial
        if width <= 1e-16 * max(1.0, hi):
            break
    return best


class LBFGS:
    """State of one L-BFGS minimisation: iterate, gradient and the last `history` curvature pairs.

    `precondition(v)` returns ``M v`` for a fixed SPD ``M`` ≈ the inverse Hessian (identity
    when None). `eps_f` is the relative rounding level of f (see `wolfe_search`).
    """

    def __init__(self, x: torch.Tensor, f: float, g: torch.Tensor, *, history: int = 10,
                 precondition: Callable[[torch.Tensor], torch.Tensor] | None = None, eps_f: float = 1e-12):
        self.x, self.f, self.g = x, f, g
        self.eps_f = eps_f
        n, m = x.numel(), max(1, int(history))
        self.S = x.new_zeros(m, n)
        self.Y = x.new_zeros(m, n)
        self.MY = x.new_zeros(m, n)
        self.order: list[int] = []  # slots of S / Y, oldest first
        self.iterations = 0
        self.stop_reason: str | None = None
        self.set_preconditioner(precondition)

    def set_preconditioner(self, precondition: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """Use ``H0 = γ M`` from now on (the pairs are dropped: they were scaled for the old M)."""
        self.M = precondition or (lambda v: v)
        self.Mg = self.M(self.g)  # kept with g: M is linear, so M y = M g_new − M g_old costs no second apply
        self.preconditioned = precondition is not None  # then -M g is Newton-like and the first step is 1
        self.reset()

    @property
    def grad_max(self) -> float:
        return float(self.g.abs().max()) if self.g.numel() else 0.0

    def _push(self, s: torch.Tensor, y: torch.Tensor, My: torch.Tensor) -> None:
        ys = float(y @ s)
        if not ys > 1e-10 * math.sqrt(float(y @ y) * float(s @ s)):  # not enough curvature: keep the old pairs
            return
        slot = self.order.pop(0) if len(self.order) == self.S.shape[0] else len(self.order)
        self.S[slot], self.Y[slot], self.MY[slot] = s, y, My
        self.order.append(slot)

    def reset(self) -> None:
        self.order = []

    def direction(self) -> torch.Tensor:
        """``-H g`` from the compact representation with ``H0 = γ M``."""
        g, Mg = self.g, self.Mg
        if not self.order:
            return -Mg
        idx = torch.tensor(self.order, device=g.device)
        S, Y, MY = self.S[idx], self.Y[idx], self.MY[idx]  # [k, n], oldest first
        SY = S @ Y.T  # SY[i, j] = s_i · y_j
        YMY = Y @ MY.T
        gamma = float(SY[-1, -1] / YMY[-1, -1])
        R = torch.triu(SY)
        u = (S @ g).unsqueeze(1)
        w = gamma * (MY @ g).unsqueeze(1)
        q = -torch.linalg.solve_triangular(R, u, upper=True)  # -R⁻¹ u
        rhs = -(torch.diag(torch.diagonal(SY)) + gamma * YMY) @ q - w
        p = torch.linalg.solve_triangular(R.T, rhs, upper=False)  # R⁻ᵀ (...)
        Hg = gamma * Mg + S.T @ p.squeeze(1) + gamma * (MY.T @ q.squeeze(1))
        return -Hg

    def run(self, tol: float, max_iter: int) -> Generator[torch.Tensor, Evaluation, str]:
        """Iterate until a stop reason holds (module doc); yields points to evaluate.

        Resumable: a later `run` with a smaller `tol` continues from the same iterate and
        pairs. ``self.iterations`` counts accepted steps over all runs.
        """
        restarted = False  # the last step came right after a restart for lack of progress
        while True:
            if self.grad_max <= tol:
                self.stop_reason = "gtol"
                return self.stop_reason
            if self.iterations >= max_iter:
                self.stop_reason = "max_iter"
                return self.stop_reason
            d = self.direction()
            gtd = float(self.g @ d)
            if not gtd < 0:  # not a descent direction (lost curvature): restart from M g
                self.reset()
                d = self.direction()
                gtd = float(self.g @ d)
                if not gtd < 0:
                    self.stop_reason = "line_search"
                    return self.stop_reason
            t0 = 1.0 if self.order or self.preconditioned else 1.0 / max(1e-300, float(self.g.abs().sum()))  # a step of length ≤ 1
            search = wolfe_search(self.f, gtd, t0, d, self.eps_f)
            t = next(search)
            try:
                while True:
                    t = search.send((yield self.x + t * d))
            except StopIteration as done:
                found = done.value
            if found is None:
                if self.order:  # the pairs may mislead: retry once along M g
                    self.reset()
                    continue
                self.stop_reason = "line_search"
                return self.stop_reason
            t, f_new, g_new = found
            s = t * d
            Mg_new = self.M(g_new)
            self._push(s, g_new - self.g, Mg_new - self.Mg)
            f_old = self.f
            self.x, self.f, self.g, self.Mg = self.x + s, f_new, g_new, Mg_new
            self.iterations += 1
            yield None  # an iteration is complete (the driver may record it)
            stalled = abs(f_old - f_new) <= FTOL * max(abs(f_old), abs(f_new)) and self.grad_max > tol
            if stalled and not restarted:  # the pairs may have gone stale: one more try along M g
                self.reset()
            elif stalled:
                self.stop_reason = "ftol"
                return self.stop_reason
            restarted = stalled
