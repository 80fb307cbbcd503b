"""LBFGSLogistic: the objective is sklearn's with λ = 1/C, and it agrees with sklearn at every λ."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from probekit.errors import UserError
from probekit.heads.lbfgs import DEFAULT_L2_GRID, LBFGSLogistic, logistic_objective, stratified_split

torch.set_num_threads(1)


def test_default_grid_is_clip_recipe():
    np.testing.assert_allclose(DEFAULT_L2_GRID, np.logspace(-6, 7, 10))


@pytest.mark.slow
def test_agrees_with_sklearn_at_every_l2(digits):
    """Both solvers run to tight tolerance (1e-10): ≥ 99.5 % equal test predictions, objective within 1e-4 relative."""
    Xtr, ytr, Xte, yte = digits
    m = LBFGSLogistic(tol=1e-10, max_iter=10000).fit(Xtr, ytr, Xte, yte)
    assert all(m.converged_.values())
    with threadpool_limits(1):
        for i, l2 in enumerate(m.l2_grid_):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sk = LogisticRegression(C=1.0 / l2, tol=1e-10, max_iter=10000).fit(Xtr.astype(np.float64), ytr)
            ours = logistic_objective(Xtr, ytr, m.path_coef_[i], m.path_intercept_[i], l2)
            theirs = logistic_objective(Xtr, ytr, sk.coef_, sk.intercept_, l2)
            # within 1e-4 relative, or lower: at λ = 1e-6 the digits are almost separable and
            # sklearn's gradient test stops while the objective can still fall (by ~0.6 %)
            assert ours <= theirs * (1 + 1e-4), (l2, ours, theirs)
            if l2 >= 1e-5:
                assert abs(ours - theirs) <= 1e-4 * abs(theirs), (l2, ours, theirs)
            assert abs(ours - m.objective_[l2]) <= 1e-6 * abs(ours) + 1e-9
            pred = (Xte @ m.path_coef_[i].T + m.path_intercept_[i]).argmax(1)
            assert (pred == sk.predict(Xte)).mean() >= 0.995, l2


def test_bias_is_unpenalised(digits):
    """At a huge λ the weights vanish but the bias still fits the class priors."""
    Xtr, ytr, _, _ = digits
    m = LBFGSLogistic([1e9], tol=1e-10).fit(Xtr, ytr)
    assert np.abs(m.coef_).max() < 1e-4
    prior = np.bincount(ytr) / len(ytr)
    p = np.exp(m.intercept_ - m.intercept_.max())
    np.testing.assert_allclose(p / p.sum(), prior, atol=1e-4)


def test_choose_by_validation_and_refit(digits):
    Xtr, ytr, Xte, yte = digits
    grid = [1e-2, 1.0, 1e2, 1e5]
    seen = []
    m = LBFGSLogistic(grid, val_fraction=0.2, refit=True).fit(Xtr, ytr, eval_sets={"test": (Xte, yte)}, callback=seen.append)
    assert set(m.val_scores_) == set(grid)
    assert m.val_scores_[m.chosen_l2_] == max(m.val_scores_.values())
    assert m.val_scores_[1e5] < m.val_scores_[m.chosen_l2_]
    assert m.l2_grid_ == sorted(grid, reverse=True)  # warm-start path: strongest first
    assert m.score(Xte, yte) > 0.9
    refits = [p for p in seen if p.extra["refit"]]
    assert refits and all(p.extra["l2"] == m.chosen_l2_ for p in refits)
    # per-iteration records for every λ, starting at iteration 0
    for l2 in grid:
        steps = [p.step for p in seen if p.extra["l2"] == l2 and not p.extra["refit"]]
        assert steps[0] == 0 and steps == sorted(steps) and steps[-1] == m.n_iter_[l2]
    # the last record of the chosen λ scores what the refitted model... before refit
    np.testing.assert_allclose(refits[-1].acc["test"][0], m.score(Xte, yte))


def test_stratified_split_keeps_every_class():
    y = np.repeat(np.arange(5), 20)
    tr, va = stratified_split(y, 0.1, seed=1)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 100
    assert (np.bincount(y[va]) == 2).all()


def test_warm_start_saves_iterations(digits):
    Xtr, ytr, Xte, yte = digits
    grid = list(np.logspace(-2, 4, 5))
    warm = LBFGSLogistic(grid, tol=1e-6).fit(Xtr, ytr, Xte, yte)
    cold = LBFGSLogistic(grid, tol=1e-6, warm_start=False).fit(Xtr, ytr, Xte, yte)
    assert sum(warm.n_iter_.values()) < sum(cold.n_iter_.values())
    for l2 in grid:  # same optimum either way
        assert warm.objective_[l2] == pytest.approx(cold.objective_[l2], rel=1e-5)


def test_init_hook(digits):
    Xtr, ytr, _, _ = digits
    W0 = np.random.default_rng(0).normal(size=(10, 64))
    seen = []
    LBFGSLogistic([1.0], max_iter=1, init=(W0, np.zeros(10))).fit(Xtr, ytr, eval_sets={"tr": (Xtr, ytr)}, callback=seen.append)
    acc0 = ((Xtr @ W0.T).argmax(1) == ytr).mean()
    assert seen[0].acc["tr"][0] == pytest.approx(acc0)


@pytest.mark.parametrize("grid", [[0.0], [-1.0, 1.0], [float("nan")], []])
def test_bad_l2(digits, grid):
    Xtr, ytr, _, _ = digits
    with pytest.raises(UserError, match="l2_grid"):
        LBFGSLogistic(grid).fit(Xtr, ytr)


def test_grid_needs_validation(digits):
    Xtr, ytr, _, _ = digits
    with pytest.raises(UserError, match="validation"):
        LBFGSLogistic([1.0, 2.0]).fit(Xtr, ytr)


@pytest.mark.parametrize("every", [0, 3])
def test_eval_every_logs_start_and_final_iterate(digits, every):
    Xtr, ytr, Xte, yte = digits
    seen = []
    m = LBFGSLogistic([1.0], eval_every=every).fit(Xtr, ytr, eval_sets={"t": (Xte, yte)}, callback=seen.append)
    steps = [p.step for p in seen]
    n = m.n_iter_[1.0]
    assert steps[0] == 0 and steps[-1] == n and len(set(steps)) == len(steps)
    assert steps[1:-1] == ([] if every == 0 else list(range(3, n, 3)))
    assert seen[-1].acc["t"][0] == pytest.approx(m.score(Xte, yte))
