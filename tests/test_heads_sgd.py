"""SGDHeads: heads trained jointly equal heads trained alone, and equal a plain PyTorch loop."""

import numpy as np
import pytest
import torch

from probekit.errors import UserError
from probekit.heads.sgd import SGDHeads, epoch_order, init_head, lr_factor

torch.set_num_threads(1)


def plain_loop(X, y, lr, seed, *, batch_size, epochs, momentum, weight_decay, schedule="constant", Xte=None, yte=None):
    """One head, the textbook way: nn.Linear + optim.SGD, same init and same shuffling."""
    N, D = X.shape
    C = int(y.max()) + 1
    W, b, g = init_head(seed, D, C)
    head = torch.nn.Linear(D, C)
    with torch.no_grad():
        head.weight.copy_(W.T), head.bias.copy_(b)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    spe = -(-N // batch_size)
    total = epochs * spe
    accs = []
    for t in range(total):
        k = t % spe
        if k == 0:
            order = epoch_order(g, N)
        idx = order[k * batch_size:(k + 1) * batch_size]
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(schedule, t, total)
        loss = torch.nn.functional.cross_entropy(head(Xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if Xte is not None:
            with torch.no_grad():
                accs.append((head(torch.from_numpy(Xte)).argmax(1).numpy() == yte).mean())
    return head.weight.detach().numpy(), head.bias.detach().numpy(), accs


@pytest.mark.parametrize("momentum,wd,schedule", [(0.9, 0.0, "constant"), (0.5, 1e-3, "cosine"), (0.0, 0.0, "step-30-60-90")])
def test_joint_equals_plain_pytorch_loop(digits, momentum, wd, schedule):
    X, y, Xte, yte = digits
    lrs, seeds = [0.05, 0.5], [0, 1, 2]
    kw = dict(batch_size=100, epochs=3, momentum=momentum, weight_decay=wd)
    seen = []
    m = SGDHeads(lrs, seeds, schedule=schedule, device="cpu", **kw).fit(
        X, y, eval_sets={"test": (Xte, yte)}, callback=lambda p: seen.append(p))
    assert m.coef_.shape == (6, 10, 64) and m.intercept_.shape == (6, 10)
    h = 0
    for lr in lrs:
        for seed in seeds:
            W, b, accs = plain_loop(X, y, lr, seed, schedule=schedule, Xte=Xte, yte=yte, **kw)
            np.testing.assert_allclose(m.coef_[h], W, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(m.intercept_[h], b, rtol=1e-4, atol=1e-5)
            joint_accs = [p.acc["test"][h] for p in seen[1:]]
            assert np.abs(np.array(joint_accs) - np.array(accs)).max() <= 1.0 / len(yte) + 1e-12
            h += 1
    # heads really differ: different seeds and lrs give different weights
    assert not np.allclose(m.coef_[0], m.coef_[1]) and not np.allclose(m.coef_[0], m.coef_[3])


def test_joint_equals_each_head_alone(digits):
    X, y, Xte, yte = digits
    kw = dict(batch_size=128, epochs=2, device="cpu")
    joint = SGDHeads([0.1, 1.0], [3, 4], **kw).fit(X, y)
    for h, (lr, s) in enumerate([(0.1, 3), (0.1, 4), (1.0, 3), (1.0, 4)]):
        alone = SGDHeads([lr], [s], **kw).fit(X, y)
        np.testing.assert_allclose(joint.coef_[h], alone.coef_[0], rtol=1e-5, atol=1e-6)
    assert joint.score(Xte, yte).shape == (4,)
    assert joint.predict(Xte).shape == (4, len(yte))


def test_eval_every_and_step_zero(digits):
    X, y, Xte, yte = digits
    seen = []
    m = SGDHeads([0.1], [0, 1], batch_size=100, epochs=1, eval_every=5, device="cpu").fit(
        X, y, eval_sets={"t": (Xte, yte)}, callback=seen.append)
    steps = [p.step for p in seen]
    assert steps == [0, 5, 10, 12] and m.n_steps_ == 12
    assert seen[0].loss is None and seen[1].loss.shape == (2,)
    assert seen[-1].epoch == 1.0
    np.testing.assert_allclose(seen[-1].acc["t"], m.score(Xte, yte))


def test_float16_storage_trains(digits):
    X, y, Xte, yte = digits
    m = SGDHeads([0.5], [0], batch_size=64, epochs=3, storage_dtype="float16", device="cpu").fit(X, y)
    assert m.score(Xte, yte)[0] > 0.85


def test_init_hook_sets_start(digits):
    X, y, _, _ = digits
    W0 = np.ones((10, 64), np.float32)
    b0 = np.zeros(10, np.float32)
    m = SGDHeads([1e-12], [0, 1], batch_size=100, epochs=1, momentum=0.0, init=(W0, b0), device="cpu").fit(X, y)
    np.testing.assert_allclose(m.coef_[1], W0, atol=1e-6)


@pytest.mark.parametrize("kw,match", [
    (dict(lrs=[0.0]), "lrs"), (dict(lrs=[float("nan")]), "lrs"), (dict(lrs=[-1]), "lrs"),
    (dict(batch_size=0), "batch_size"), (dict(epochs=0), "epochs"), (dict(schedule="linear"), "schedule"),
    (dict(momentum=1.5), "momentum"), (dict(seeds=[0.5]), "seeds"),
    (dict(seeds=[0, 0]), "seeds .*repeats 0"), (dict(lrs=[0.1, 0.1]), "lrs .*repeats 0.1"),
])
def test_bad_hyperparameters(digits, kw, match):
    X, y, _, _ = digits
    with pytest.raises(UserError, match=match):
        SGDHeads(**kw).fit(X, y)


def test_nan_features_named(digits):
    X, y, _, _ = digits
    X = X.copy()
    X[3, 4] = np.nan
    X[5, 6] = np.inf
    with pytest.raises(UserError, match="2 NaN/Inf"):
        SGDHeads().fit(X, y)


def _alone_trace(X, y, rows, lr, seed, Xte, yte, **kw):
    """Head trained alone on X[rows]: its weights and {step: (epoch, loss, acc)} at every evaluation."""
    seen = []
    m = SGDHeads([lr], [seed], device="cpu", **kw).fit(X[rows], y[rows], eval_sets={"t": (Xte, yte)}, callback=seen.append)
    trace = {p.step: (p.epoch, None if p.loss is None else p.loss[0], p.acc["t"][0]) for p in seen}
    return m, trace


@pytest.mark.parametrize("budget", ["epochs", "steps"])
def test_head_rows_equal_each_head_alone_on_its_rows(digits, budget):
    """Every head of a row-set run (own subset, own lr and seed, unequal sizes, several steps per
    epoch with a short last batch, momentum, weight decay, cosine over its own length) ends where
    a fit on X[rows] alone ends, with the same evaluations at the same steps."""
    X, y, Xte, yte = digits
    rng = np.random.default_rng(0)
    rows = [np.sort(rng.choice(len(y), n, replace=False)) for n in (40, 250, 250, 700)]
    pairs = [(0.3, 0), (0.1, 1), (0.1, 2), (0.05, 0)]
    kw = dict(batch_size=96, epochs=2, momentum=0.9, weight_decay=1e-3, schedule="cosine", eval_every=3)
    seen = []
    m = SGDHeads(heads=pairs, budget=budget, device="cpu", **kw).fit(X, y, eval_sets={"t": (Xte, yte)},
                                                                   callback=seen.append, head_rows=rows)
    spe = np.array([1, 3, 3, 8])
    assert list(m.steps_per_epoch_) == list(spe)
    assert list(m.head_n_steps_) == ([2, 6, 6, 16] if budget == "epochs" else [16] * 4) and m.n_steps_ == 16
    for h, ((lr, seed), r) in enumerate(zip(pairs, rows)):
        epochs = kw["epochs"] if budget == "epochs" else 16 / spe[h]
        alone, trace = _alone_trace(X, y, r, lr, seed, Xte, yte, **(kw | {"epochs": epochs}))
        np.testing.assert_allclose(m.coef_[h], alone.coef_[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.intercept_[h], alone.intercept_[0], rtol=1e-5, atol=1e-6)
        joint = {p.step: (p.epoch[h], None if p.loss is None else p.loss[h], p.acc["t"][h])
                 for p in seen if p.heads is None or h in p.heads}
        assert sorted(joint) == sorted(trace)
        for step, (ep, loss, acc) in trace.items():
            assert joint[step][0] == pytest.approx(ep)
            assert (loss is None) == (joint[step][1] is None) and (loss is None or joint[step][1] == pytest.approx(loss, rel=1e-5))
            assert joint[step][2] == acc
    assert m.heads_[0] == {"head": "lr=0.3,seed=0", "lr": 0.3, "seed": 0}


def test_head_rows_heads_that_are_done_stop_updating(digits):
    X, y, _, _ = digits
    rows = [np.arange(50), np.arange(1200)]
    a = SGDHeads(heads=[(0.5, 0), (0.5, 0)], batch_size=50, epochs=1, device="cpu").fit(X, y, head_rows=rows)
    b = SGDHeads([0.5], [0], batch_size=50, epochs=1, device="cpu").fit(X[:50], y[:50])
    np.testing.assert_array_equal(a.coef_[0], b.coef_[0])  # 1 step, then masked for 23 steps: not one bit moved
    assert list(a.head_n_steps_) == [1, 24]


def test_head_rows_without_row_sets_is_the_product(digits):
    X, y, _, _ = digits
    kw = dict(batch_size=128, epochs=1, device="cpu")
    full = SGDHeads([0.1, 1.0], [3, 4], **kw).fit(X, y)
    same = SGDHeads(heads=[(0.1, 3), (0.1, 4), (1.0, 3), (1.0, 4)], **kw).fit(X, y, head_rows=[np.arange(len(y))] * 4)
    np.testing.assert_allclose(full.coef_, same.coef_, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rows,match", [
    ([np.arange(10)], "2 heads"), ([np.arange(10), np.array([], np.int64)], "head 1"),
    ([np.arange(10), np.array([5000])], "head 1"), ([np.arange(10), np.array([0.5])], "head 1"),
])
def test_bad_head_rows(digits, rows, match):
    X, y, _, _ = digits
    with pytest.raises(UserError, match=match):
        SGDHeads([0.1], [0, 1], epochs=1, device="cpu").fit(X, y, head_rows=rows)


@pytest.mark.parametrize("kw,match", [(dict(heads=[(0.1,)]), "pairs"), (dict(heads=[(0.0, 1)]), "lr"),
                                      (dict(heads=[(0.1, 0.5)]), "seed"), (dict(budget="time"), "budget")])
def test_bad_heads_and_budget(digits, kw, match):
    X, y, _, _ = digits
    with pytest.raises(UserError, match=match):
        SGDHeads(epochs=1, device="cpu", **kw).fit(X, y)
def _run(X, y, Xte, yte, **fit_kw):
    seen = []
    m = SGDHeads([0.05, 0.5], [0, 1], batch_size=100, epochs=3, momentum=0.9, schedule="cosine", eval_every=4,
                 device="cpu").fit(X, y, eval_sets={"t": (Xte, yte)}, callback=seen.append, **fit_kw)
    return m, seen


@pytest.mark.parametrize("stop_after", [5, 12, 24])  # mid-epoch, at an epoch end (12 steps/epoch), on an evaluation
def test_stop_and_resume_equals_uninterrupted(digits, stop_after):
    """A snapshot taken at any step, saved and loaded with weights_only, resumes to the same weights and evaluations."""
    import io

    X, y, Xte, yte = digits
    full, full_seen = _run(X, y, Xte, yte)
    steps = iter(range(1, 10**6))
    first, first_seen = _run(X, y, Xte, yte, stop=lambda: next(steps) >= stop_after)
    assert first.stopped_ and first.state_["step"] == stop_after and not full.stopped_
    buf = io.BytesIO()
    torch.save(first.state_, buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    second, second_seen = _run(X, y, Xte, yte, resume=state)
    assert not second.stopped_
    np.testing.assert_array_equal(second.coef_, full.coef_)
    np.testing.assert_array_equal(second.intercept_, full.intercept_)
    joined = [p for p in first_seen if p.step <= stop_after] + second_seen
    assert [p.step for p in joined] == [p.step for p in full_seen]
    for a, b in zip(joined, full_seen):
        np.testing.assert_array_equal(a.acc["t"], b.acc["t"])
        assert (a.loss is None) == (b.loss is None) and (a.loss is None or np.array_equal(a.loss, b.loss))


def test_eval_point_state_resumes(digits):
    X, y, Xte, yte = digits
    full, seen = _run(X, y, Xte, yte)
    states = []
    SGDHeads([0.05, 0.5], [0, 1], batch_size=100, epochs=3, momentum=0.9, schedule="cosine", eval_every=4, device="cpu").fit(
        X, y, eval_sets={"t": (Xte, yte)}, callback=lambda p: states.append(p.state()))
    assert states[3]["step"] == seen[3].step == 12
    resumed, rest = _run(X, y, Xte, yte, resume=states[3])
    assert rest[0].step == seen[4].step
    np.testing.assert_array_equal(resumed.coef_, full.coef_)
    with pytest.raises(RuntimeError, match="inside the callback"):
        seen[3].state()


def test_resume_state_of_another_run_refused(digits):
    X, y, Xte, yte = digits
    states = []
    SGDHeads([0.05, 0.5], [0, 1], batch_size=100, epochs=1, device="cpu").fit(X, y, eval_sets={"t": (Xte, yte)},
                                                                             callback=lambda p: states.append(p.state()))
    state = states[2]
    with pytest.raises(UserError, match="another training run .*heads"):
        SGDHeads([0.05], [0], batch_size=100, epochs=3, device="cpu").fit(X, y, resume=state)
    with pytest.raises(UserError, match="training rows"):
        SGDHeads([0.05, 0.5], [0, 1], batch_size=100, epochs=1, device="cpu").fit(X[:-7], y[:-7], resume=state)
    with pytest.raises(UserError, match="steps per head"):
        SGDHeads([0.05, 0.5], [0, 1], batch_size=100, epochs=2, device="cpu").fit(X, y, resume=state)
    with pytest.raises(UserError, match="not an SGDHeads snapshot"):
        SGDHeads().fit(X, y, resume={"step": 3})


def test_row_set_heads_resume_equals_uninterrupted(digits):
    """Heads with their own row sets (ablate) of unequal epoch lengths resume bit-identically too."""
    X, y, Xte, yte = digits
    rows = [np.arange(0, 1200, 3), np.arange(700), np.arange(1200)]
    kw = dict(heads=[(0.1, 0), (0.1, 1), (0.3, 0)], batch_size=64, epochs=2, momentum=0.9, eval_every=3, device="cpu")
    seen_full, seen_a, seen_b = [], [], []
    full = SGDHeads(**kw).fit(X, y, {"t": (Xte, yte)}, seen_full.append, head_rows=rows)
    n = iter(range(1, 10**6))
    a = SGDHeads(**kw).fit(X, y, {"t": (Xte, yte)}, seen_a.append, head_rows=rows, stop=lambda: next(n) >= 9)
    b = SGDHeads(**kw).fit(X, y, {"t": (Xte, yte)}, seen_b.append, head_rows=rows, resume=a.state_)
    np.testing.assert_array_equal(b.coef_, full.coef_)
    key = lambda p: (p.step, None if p.heads is None else tuple(p.heads), tuple(p.acc["t"]))  # noqa: E731
    assert [key(p) for p in seen_a if p.step <= 9] + [key(p) for p in seen_b] == [key(p) for p in seen_full]




@pytest.mark.parametrize("row_sets", [False, True])
def test_dense_step_equals_gathered_step(digits, monkeypatch, row_sets):
    """Large batches take one wide product over all rows (row weights = batch membership): same heads as gathering."""
    import probekit.heads.sgd as sgd

    X, y, _, _ = digits
    kw = dict(batch_size=900, epochs=3, device="cpu", heads=[(0.1, 0), (0.5, 1), (1.0, 2)])
    rows = [np.arange(0, 1200, 2), np.arange(1200), np.arange(300, 1000)] if row_sets else None
    dense = SGDHeads(**kw).fit(X, y, head_rows=rows)
    monkeypatch.setattr(sgd, "DENSE_BATCH_FRACTION", 1e9)
    gathered = SGDHeads(**kw).fit(X, y, head_rows=rows)
    assert dense.dense_steps_ and not gathered.dense_steps_
    np.testing.assert_allclose(dense.coef_, gathered.coef_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dense.intercept_, gathered.intercept_, rtol=1e-4, atol=1e-6)
