"""Stage-2 solvers on CUDA equal their CPU results: batched SGD heads (float32 and float16 feature
storage) and the L-BFGS λ sweep (float64 and float32), on the bundled digits pixels."""

from __future__ import annotations

import numpy as np
import pytest
from _gpu import DEVICE, GPU

from probekit.heads.lbfgs import LBFGSLogistic
from probekit.heads.sgd import SGDHeads

pytestmark = GPU


def _sgd(digits, device, storage="float32"):
    X, y, Xt, yt = digits
    points = []
    est = SGDHeads(lrs=(0.1, 0.5), seeds=(0, 1), batch_size=128, epochs=3, eval_every=5, device=device,
                   storage_dtype=storage)
    est.fit(X, y, eval_sets={"test": (Xt, yt)}, callback=points.append)
    return est, points


@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_sgd_heads_on_device_equal_cpu(digits, storage):
    cpu, cpu_points = _sgd(digits, "cpu", storage)
    dev, dev_points = _sgd(digits, DEVICE, storage)
    assert [p.step for p in dev_points] == [p.step for p in cpu_points] and len(cpu_points) > 3
    np.testing.assert_allclose(dev.coef_, cpu.coef_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dev.intercept_, cpu.intercept_, rtol=1e-4, atol=1e-5)
    n = len(digits[3])
    for p, q in zip(dev_points, cpu_points):
        np.testing.assert_allclose(p.acc["test"], q.acc["test"], atol=1.5 / n)  # at most one test image flips
        if q.loss is not None:
            np.testing.assert_allclose(p.loss, q.loss, rtol=1e-4)
    np.testing.assert_array_equal(dev.predict(digits[2]), cpu.predict(digits[2]))
    assert cpu_points[-1].acc["test"].min() > 0.8  # the heads learned something


def test_float16_storage_on_device_is_close_to_float32(digits):
    f32, _ = _sgd(digits, DEVICE, "float32")
    f16, _ = _sgd(digits, DEVICE, "float16")
    np.testing.assert_allclose(f16.coef_, f32.coef_, rtol=2e-2, atol=2e-3)
    assert np.abs(f16.score(digits[2], digits[3]) - f32.score(digits[2], digits[3])).max() <= 3 / len(digits[3])


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-6), ("float32", 1e-3)])
def test_lbfgs_sweep_on_device_equals_cpu(digits, dtype, rtol):
    X, y, Xt, yt = digits
    Xtr, ytr, Xva, yva = X[:900], y[:900], X[900:], y[900:]

    def fit(device):
        points = []
        est = LBFGSLogistic(l2_grid=(100.0, 1.0, 0.01), max_iter=300, tol=1e-5, dtype=dtype, device=device)
        return est.fit(Xtr, ytr, Xva, yva, eval_sets={"test": (Xt, yt)}, callback=points.append), points

    cpu, cpu_points = fit("cpu")
    dev, dev_points = fit(DEVICE)
    assert dev.chosen_l2_ == cpu.chosen_l2_
    assert dev.val_scores_ == pytest.approx(cpu.val_scores_, abs=1.5 / len(yva))
    for l2, n_dev, n_cpu in zip(cpu.l2_grid_, dev.n_iter_, cpu.n_iter_):
        assert dev.objective_[l2] == pytest.approx(cpu.objective_[l2], rel=rtol)
        assert abs(n_dev - n_cpu) <= max(3, n_cpu // 5)
    np.testing.assert_allclose(dev.coef_, cpu.coef_, rtol=0, atol=50 * rtol * np.abs(cpu.coef_).max())
    assert dev.score(Xt, yt) == pytest.approx(cpu.score(Xt, yt), abs=1.5 / len(yt))
    assert dev_points[0].acc["test"] == pytest.approx(cpu_points[0].acc["test"])  # the same start point
