"""The head estimators are real scikit-learn classifiers: clone, grid search, pipelines, labels, checks."""

import warnings

import numpy as np
import pytest
import scipy.sparse
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from probekit.errors import UserError
from probekit.heads.lbfgs import LBFGSLogistic
from probekit.heads.sgd import SGDHead, SGDHeads

# The documented departures of SGDHeads (docs/python-api.md): predict / score answer for every
# head ([H, N] / [H]); one head as a plain classifier is `SGDHeads.head(h)` or `SGDHead`.
SGDHEADS_DEPARTURES = {
    "check_classifiers_train": "predict returns one row of labels per head",
    "check_classifiers_one_label": "predict returns one row of labels per head",
    "check_methods_sample_order_invariance": "predict returns one row of labels per head",
}


def _failed(est, expected=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(est, on_fail=None, expected_failed_checks=expected)
    return sorted({r["check_name"] for r in results if r["status"] == "failed"})


@pytest.mark.slow
@pytest.mark.parametrize("est", [LBFGSLogistic([1.0]), SGDHead(lr=0.1, batch_size=64, epochs=20)], ids=["lbfgs", "sgd-head"])
def test_check_estimator_passes(est):
    assert _failed(est) == []


@pytest.mark.slow
def test_check_estimator_sgdheads_only_documented_departures():
    assert _failed(SGDHeads([0.1], [0], batch_size=64, epochs=20), SGDHEADS_DEPARTURES) == []


def test_clone_get_set_params():
    m = LBFGSLogistic([0.5, 5.0], tol=1e-5, val_fraction=0.2)
    c = clone(m)
    assert c.get_params() == m.get_params() and c is not m
    c.set_params(tol=1e-3, l2_grid=[2.0])
    assert c.tol == 1e-3 and c.l2_grid == [2.0] and m.tol == 1e-5
    assert clone(SGDHeads([0.1, 1.0], [0, 1])).get_params()["lrs"] == [0.1, 1.0]


def test_grid_search_over_l2_grid_and_cross_val(digits):
    X, y, Xte, yte = digits
    gs = GridSearchCV(LBFGSLogistic(tol=1e-4), {"l2_grid": [[1e-2], [10.0], [1e5]]}, cv=3).fit(X, y)
    assert gs.best_params_["l2_grid"] != [1e5] and gs.score(Xte, yte) > 0.9
    assert cross_val_score(SGDHead(lr=0.5, batch_size=128, epochs=5), X, y, cv=3).mean() > 0.85


def test_pipeline_with_standard_scaler(digits):
    X, y, Xte, yte = digits
    pipe = make_pipeline(StandardScaler(), LBFGSLogistic([10.0])).fit(X * 16 + 3, y)
    assert pipe.score(Xte * 16 + 3, yte) > 0.9
    proba = pipe.predict_proba(Xte * 16 + 3)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)


def test_string_and_noncontiguous_labels(digits):
    X, y, Xte, yte = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    m = LBFGSLogistic([10.0]).fit(X, names[y])
    assert list(m.classes_) == sorted(names) and m.coef_.shape == (10, 64)
    assert m.predict(Xte).dtype.kind == "U" and m.score(Xte, names[yte]) > 0.9
    big = np.where(y % 2 == 0, 0, 10 ** 6)  # two classes, not a million
    m = LBFGSLogistic([1.0]).fit(X, big)
    assert list(m.classes_) == [0, 10 ** 6] and m.decision_function(Xte).shape == (len(Xte),)
    assert set(np.unique(m.predict(Xte))) <= {0, 10 ** 6}
    neg = y - 5
    heads = SGDHeads([0.5], [0, 1], batch_size=128, epochs=3).fit(X, neg)
    assert list(heads.classes_) == list(range(-5, 5)) and heads.predict(Xte).shape == (2, len(Xte))
    assert heads.score(Xte, yte - 5).shape == (2,)


def test_probabilities_and_decision_function_agree(digits):
    X, y, Xte, _ = digits
    m = LBFGSLogistic([1.0]).fit(X, y)
    z = m.decision_function(Xte)
    p = m.predict_proba(Xte)
    np.testing.assert_allclose(p, np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(np.log(p), m.predict_log_proba(Xte), rtol=1e-4, atol=1e-6)
    assert (m.predict(Xte) == m.classes_[z.argmax(1)]).all()


def test_sgdheads_hands_out_one_head(digits):
    X, y, Xte, yte = digits
    heads = SGDHeads([0.1, 1.0], [0, 1], batch_size=128, epochs=3).fit(X, y)
    one = heads.head(3)
    assert isinstance(one, SGDHead) and (one.lr, one.seed) == (1.0, 1)
    assert one.predict(Xte).shape == (len(Xte),)
    np.testing.assert_array_equal(one.predict(Xte), heads.predict(Xte)[3])
    assert one.score(Xte, yte) == pytest.approx(heads.score(Xte, yte)[3])
    np.testing.assert_allclose(one.predict_proba(Xte).sum(1), 1.0, rtol=1e-6)
    alone = SGDHead(1.0, 1, batch_size=128, epochs=3).fit(X, y)  # the same head trained on its own
    np.testing.assert_allclose(alone.coef_, one.coef_, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="head 4 does not exist"):
        heads.head(4)


@pytest.mark.parametrize("cls", [LBFGSLogistic, SGDHeads, SGDHead])
def test_unfitted_predict_raises_not_fitted(cls, digits):
    with pytest.raises(NotFittedError, match="not fitted"):
        cls().predict(digits[2])


def test_user_error_is_a_value_error():
    assert issubclass(UserError, ValueError)


@pytest.mark.parametrize("make,match", [
    (lambda X, y: (X[:, :0], y), "0 feature"),
    (lambda X, y: (scipy.sparse.csr_matrix(X), y), "sparse"),
    (lambda X, y: (X, y.astype(float) + 0.5), "Unknown label type"),
])
@pytest.mark.parametrize("cls", [LBFGSLogistic, SGDHeads])
def test_refused_inputs(digits, cls, make, match):
    X, y, _, _ = digits
    Xb, yb = make(X, y)
    with pytest.raises(UserError, match=match):
        cls(**({"l2_grid": [1.0]} if cls is LBFGSLogistic else {})).fit(Xb, yb)


def test_labels_beyond_n_classes(digits):
    X, y, _, _ = digits
    for est in (LBFGSLogistic([1.0], n_classes=5), SGDHeads(n_classes=5)):
        with pytest.raises(UserError, match="label 9 but n_classes is 5"):
            est.fit(X, y)
    m = LBFGSLogistic([1.0, 10.0], val_fraction=None)
    with pytest.raises(UserError, match="outside the training classes"):
        m.fit(X[y < 9], y[y < 9], X, y)

