"""Many multinomial logistic heads trained by minibatch SGD in one vectorised pass.

All heads (learning rates × seeds) live in one tensor ``W [H, D, C]``. Each head has its
own initialisation and its own shuffling, both drawn from a `torch.Generator` seeded with
the head's seed, so every head ends exactly where training it alone would take it (the
gradient of each head depends only on its own weights and its own minibatch). One step
gathers ``X[perm_h[batch]]`` for all heads (``[H, B, D]``) and does two batched GEMMs.

The update is PyTorch's ``optim.SGD`` (momentum with dampening 0, coupled weight decay on
weight and bias, no Nesterov), so a plain ``nn.Linear`` + ``optim.SGD`` loop fed the same
minibatches reproduces each head to float rounding (tests/test_heads_sgd.py checks it).
Defaults follow the BiT head recipe (DESIGN.md): lr 0.001, batch 32768, 100 epochs, no
weight decay, and BiT's momentum 0.9.

Per-head row sets (``fit(..., head_rows=...)``, used by `probekit ablate`): each head may
train on its own subset of the rows, drawing its minibatches from that subset exactly as a
run on ``X[rows]`` alone would. Heads with fewer steps stop updating once done (masked) —
``budget="epochs"`` gives every head ``epochs`` epochs of its own rows, ``budget="steps"``
gives every head the steps that ``epochs`` epochs take on the largest row set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from probekit.errors import UserError
from probekit.runtime import choose_device
from probekit.heads.evaluation import (
    FittedHeads,
    SingleHead,
    check_features,
    check_positive_list,
    class_major_logits,
    encode_targets,
    evaluate_all,
    make_eval_sets,
    to_tensor,
)

SCHEDULES = ("constant", "cosine", "step-30-60-90")  # names say what they do; finetune has step-50-75
INITS = ("uniform", "zeros")
BUDGETS = ("epochs", "steps")
STORAGE = {"float32": torch.float32, "float16": torch.float16}
STATE_FORMAT = "probekit-sgd-heads-state-1"


@dataclass
class EvalPoint:
    """What a solver hands its callback at every evaluation, for all heads at once."""

    step: int
    epoch: float | np.ndarray  # [H] when heads have their own row sets (each its own epoch length)
    loss: np.ndarray | None  # [H] training loss of the last step (None before the first)
    acc: dict[str, np.ndarray]  # eval-set name -> accuracy [H]
    extra: dict = field(default_factory=dict)
    W: torch.Tensor | None = None  # the live weights [H, D, C] / bias [H, C] at this point (read only)
    b: torch.Tensor | None = None
    heads: np.ndarray | None = None  # indices of the heads this evaluation is for (None = all); row-set heads that
    # have finished, or whose evaluation step this is not, are left out
    state: Callable[[], dict] | None = None  # snapshot to resume from here (`SGDHeads.fit(resume=...)`); call it in the callback


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate at 0-based optimiser step `step` of `total`.

    ``cosine``: half-cosine from 1 to 0; ``step-30-60-90``: ×0.1 at 30 %, 60 % and 90 % of training.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / max(1, total)))
    if schedule == "step-30-60-90":
        return 0.1 ** sum(step >= int(f * total) for f in (0.3, 0.6, 0.9))
    raise UserError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def init_head(seed: int, n_features: int, n_classes: int, kind: str = "uniform") -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """A fresh head ``(W [D, C], b [C])`` and the generator that then drives its shuffling.

    ``uniform`` draws like ``nn.Linear``'s default (U(±1/√D) for weight and bias);
    ``zeros`` is BiT's zero-initialised head (seeds then differ only by shuffling).
    """
    g = torch.Generator().manual_seed(int(seed))
    if kind == "zeros":
        return torch.zeros(n_features, n_classes), torch.zeros(n_classes), g
    if kind != "uniform":
        raise UserError(f"unknown head init {kind!r}; choose one of {', '.join(INITS)}")
    bound = 1.0 / math.sqrt(n_features)
    W = torch.empty(n_classes, n_features).uniform_(-bound, bound, generator=g)
    b = torch.empty(n_classes).uniform_(-bound, bound, generator=g)
    return W.T.contiguous(), b, g


def epoch_order(g: torch.Generator, n: int) -> torch.Tensor:
    """The next epoch's shuffling of `n` rows for the head owning generator `g`."""
    return torch.randperm(n, generator=g)


def head_id(lr: float, seed: int) -> str:
    return f"lr={lr:g},seed={seed}"


class SGDHeads(FittedHeads):
    """Train ``len(lrs) * len(seeds)`` logistic heads jointly; a scikit-learn estimator.

    Learned: ``classes_``, ``coef_ [H, C, D]``, ``intercept_ [H, C]``, ``heads_`` (one dict per
    head with ``head``, ``lr``, ``seed``), ``n_classes_``, ``n_steps_``. Heads are ordered lr-major.
    `predict` / `score` answer for every head (``[H, N]`` / ``[H]``); `head` hands out one head
    as a plain single-head scikit-learn classifier (`SGDHead`). Labels may be any sortable
    values; with ``n_classes`` they must be the indices ``0..n_classes-1``.
    ``init=(W [C, D] or [H, C, D], b [C] or [H, C])`` starts every head from given weights
    (e.g. a zero-shot head) instead of a fresh draw. ``heads=[(lr, seed), ...]`` lists the
    heads explicitly instead of the ``lrs × seeds`` product (a grid whose cells pair each seed
    with its own row set). ``budget``: how row-set heads of unequal size are trained (module doc).
    Training is resumable: see `fit`'s ``resume`` / ``stop`` and `EvalPoint.state`.
    """

    def __init__(self, lrs: Sequence[float] = (0.001,), seeds: Sequence[int] = (0,), *, batch_size: int = 32768,
                 epochs: float = 100, momentum: float = 0.9, weight_decay: float = 0.0, schedule: str = "constant",
                 eval_every: int = 1, head_init: str = "uniform", init=None, n_classes: int | None = None,
                 device=None, storage_dtype: str = "float32", max_gather_elems: int = 1 << 25,
                 heads: Sequence[tuple[float, int]] | None = None, budget: str = "epochs"):
        self.lrs = lrs
        self.seeds = seeds
        self.batch_size = batch_size
        self.epochs = epochs
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.eval_every = eval_every
        self.head_init = head_init
        self.init = init
        self.n_classes = n_classes
        self.device = device
        self.storage_dtype = storage_dtype
        self.max_gather_elems = max_gather_elems
        self.heads = heads
        self.budget = budget

    # -- validation -------------------------------------------------------------------
    def _check_params(self) -> None:
        self.lrs_ = check_positive_list(self.lrs, "lrs (--lr)")
        seeds = list(self.seeds) if isinstance(self.seeds, (list, tuple, np.ndarray)) else [self.seeds]
        if not seeds or any(not float(s).is_integer() for s in seeds):
            raise UserError(f"seeds (--seeds) must be a non-empty list of integers, got {self.seeds!r}")
        self.seeds_ = [int(s) for s in seeds]
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise UserError(f"batch_size (--batch-size) must be a positive integer, got {self.batch_size!r}")
        if not (isinstance(self.epochs, (int, float)) and math.isfinite(self.epochs) and self.epochs > 0):
            raise UserError(f"epochs (--epochs) must be positive, got {self.epochs!r}")
        if not (0.0 <= self.momentum < 1.0):
            raise UserError(f"momentum (--momentum) must be in [0, 1), got {self.momentum!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserError(f"weight_decay (--weight-decay) must be >= 0, got {self.weight_decay!r}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.head_init not in INITS:
            raise UserError(f"unknown head init {self.head_init!r}; choose one of {', '.join(INITS)}")
        if int(self.eval_every) != self.eval_every or self.eval_every < 0:
            raise UserError(f"eval_every (--eval-every) must be a non-negative integer (0 = only at the end), got {self.eval_every!r}")
        if self.storage_dtype not in STORAGE:
            raise UserError(f"unknown storage dtype {self.storage_dtype!r}; choose float32 or float16")
        if self.budget not in BUDGETS:
            raise UserError(f"unknown budget {self.budget!r}; choose one of {', '.join(BUDGETS)}")
        if self.heads is None:
            self.head_params_ = [(lr, s) for lr in self.lrs_ for s in self.seeds_]
        else:
            pairs = [tuple(h) for h in self.heads]
            if not pairs or any(len(h) != 2 for h in pairs):
                raise UserError(f"heads must be a non-empty list of (lr, seed) pairs, got {self.heads!r}")
            lrs = check_positive_list([h[0] for h in pairs], "lr of heads")
            if any(not float(h[1]).is_integer() for h in pairs):
                raise UserError(f"the seed of every head must be an integer, got {self.heads!r}")
            self.head_params_ = [(lr, int(h[1])) for lr, h in zip(lrs, pairs)]
        if self.heads is None:  # a repeated value would make two heads of one id, logged and summarised as one
            for name, values in (("lrs (--lr)", self.lrs_), ("seeds (--seeds)", self.seeds_)):
                repeated = sorted({v for v in values if values.count(v) > 1})
                if repeated:
                    raise UserError(f"{name} repeats {', '.join(f'{v:g}' for v in repeated)}; give each value once")

    def _initial_weights(self, D: int, C: int):
        H = len(self.head_params_)
        Ws, bs, gens = [], [], []
        for _lr, seed in self.head_params_:
            W, b, g = init_head(seed, D, C, self.head_init)
            Ws.append(W), bs.append(b), gens.append(g)
        W, b = torch.stack(Ws), torch.stack(bs)
        if self.init is not None:
            W0, b0 = (torch.as_tensor(np.asarray(t), dtype=torch.float32) for t in self.init)
            if W0.dim() == 2:
                W0 = W0.expand(H, *W0.shape)
            if b0.dim() == 1:
                b0 = b0.expand(H, *b0.shape)
            if tuple(W0.shape) != (H, C, D) or tuple(b0.shape) != (H, C):
                raise UserError(f"init weights have shape {tuple(W0.shape)} / {tuple(b0.shape)}; expected [{C}, {D}] / [{C}] (classes, features)")
            W, b = W0.transpose(1, 2).contiguous().clone(), b0.contiguous().clone()
        return W, b, gens

    # -- training ---------------------------------------------------------------------
    def fit(self, X, y, eval_sets=None, callback: Callable[[EvalPoint], None] | None = None, *,
            head_rows: Sequence | None = None, resume: dict | None = None, stop: Callable[[], bool] | None = None) -> SGDHeads:
        """Train all heads on ``X [N, D]``, ``y [N]``; call `callback` at every evaluation.

        `eval_sets`: ``{name: (X, y)}`` or `EvalSet`s, scored by every head at step 0, every
        ``eval_every`` steps and at the last step. `head_rows`: one array of row indices into
        `X` per head (in head order); head ``h`` then trains exactly as a fit on
        ``X[head_rows[h]]`` alone would, and reports at its own evaluation steps (`EvalPoint.heads`).

        Resumable: every `EvalPoint` carries ``state()``, a snapshot of everything training
        depends on (weights, momentum buffers, each head's shuffling RNG, the step), and
        ``fit(..., resume=snapshot)`` continues from it exactly as if never interrupted (same
        data, row sets, hyper-parameters and heads; checked). `stop` is polled after every step:
        when it returns true, training ends there with ``stopped_ = True`` and ``state_`` = the
        snapshot at that step (the fitted attributes then hold the weights so far).
        """
        self._check_params()
        X = check_features(X, "X")
        N, D = X.shape
        self.classes_, y = encode_targets(y, N, self.n_classes, "y")
        C = len(self.classes_)
        dev = choose_device(self.device)
        Xs = to_tensor(X, dev, STORAGE[self.storage_dtype])
        yt = torch.from_numpy(y).to(dev)
        sets = make_eval_sets(eval_sets, dev, STORAGE[self.storage_dtype], D)

        W, b, gens = self._initial_weights(D, C)
        W, b = W.to(dev), b.to(dev)
        H = W.shape[0]
        self.heads_ = [{"head": head_id(lr, s), "lr": lr, "seed": s} for lr, s in self.head_params_]
        lr = torch.tensor([lr for lr, _ in self.head_params_], device=dev, dtype=torch.float32)
        bufW = torch.zeros_like(W) if self.momentum else None
        bufb = torch.zeros_like(b) if self.momentum else None

        plan = _BatchPlan(N, H, int(self.batch_size), self.epochs, self.budget, gens, dev, head_rows)
        total = plan.total
        rows = max(1, int(self.max_gather_elems) // (H * D))
        # Large batches (BiT: 32768 of 60k rows) cost less as one wide product over all rows with
        # each head's batch as row weights than as H gathered copies and H narrow products.
        dense = DENSE_BATCH_FRACTION * N <= H * int(plan.B.max()) and N * H <= (1 << 31)
        self.dense_steps_ = bool(dense)
        eval_every = int(self.eval_every)
        ids = [h["head"] for h in self.heads_]
        at = [0]  # steps done so far: a snapshot is only ever taken of the live state

        def snapshot(done: int) -> dict:
            """Everything step `done` + 1 depends on, on the CPU, as tensors and plain values only."""
            if done != at[0]:
                raise RuntimeError(f"EvalPoint.state() of step {done} called at step {at[0]}; call it inside the callback")
            copy = lambda t: None if t is None else t.detach().cpu().clone()  # noqa: E731
            return {"format": STATE_FORMAT, "step": done, "heads": list(ids), "rows": plan.fingerprint(),
                    "head_steps": plan.totals.tolist(), "W": copy(W), "b": copy(b), "momentum_W": copy(bufW),
                    "momentum_b": copy(bufb), "rng": plan.rng_state(done)}

        def report(step: int, loss, heads=None):
            if callback is None:
                return
            epoch = step / plan.spe[0] if plan.rows is None else step / plan.spe
            factor = lr_factor(self.schedule, max(0, step - 1), total) if plan.rows is None else None
            callback(EvalPoint(step, epoch, None if loss is None else loss.cpu().numpy(), evaluate_all(sets, W, b),
                               {"lr_factor": factor}, W, b, heads, lambda: snapshot(step)))

        start = 0
        if resume is not None:
            start = at[0] = self._check_resume(resume, ids, plan, tuple(W.shape))
            W.copy_(resume["W"]), b.copy_(resume["b"])
            if bufW is not None:
                bufW.copy_(resume["momentum_W"]), bufb.copy_(resume["momentum_b"])
            plan.resume_at(start, resume["rng"])
        else:
            report(0, None)
        self.stopped_, self.state_ = False, None
        with torch.no_grad():
            for t in range(start, plan.n_steps):
                idx, valid, nb = plan.batch(t)  # [H, b] rows; [H, b] 0/1 mask or None; [H] or int batch sizes
                if dense:
                    gW, gb, loss = _dense_grads(Xs, yt, W, b, idx, valid, nb, int(self.max_gather_elems))
                else:
                    gW, gb, loss = _gathered_grads(Xs, yt, W, b, idx, valid, nb, rows)
                if self.weight_decay:
                    gW.add_(W, alpha=self.weight_decay)
                    gb.add_(b, alpha=self.weight_decay)
                if bufW is not None:
                    if t == 0:
                        bufW.copy_(gW), bufb.copy_(gb)
                    else:
                        bufW.mul_(self.momentum).add_(gW)
                        bufb.mul_(self.momentum).add_(gb)
                    gW, gb = bufW, bufb
                step_lr = lr * plan.lr_factors(self.schedule, t)  # 0 for heads that are done
                W.sub_(gW * step_lr[:, None, None])
                b.sub_(gb * step_lr[:, None])
                done = at[0] = t + 1
                if plan.rows is None:
                    if (eval_every and done % eval_every == 0) or done == total:
                        report(done, loss)
                else:
                    due = np.flatnonzero((done <= plan.totals) & ((eval_every > 0 and done % eval_every == 0) | (done == plan.totals)))
                    if due.size:
                        report(done, loss, due)
                if stop is not None and done < plan.n_steps and stop():
                    self.stopped_, self.state_ = True, snapshot(done)
                    break
        self.W_, self.b_ = W, b
        self.coef_ = W.transpose(1, 2).cpu().numpy()
        self.intercept_ = b.cpu().numpy()
        self.n_classes_ = C
        self.n_features_in_ = D
        self.n_steps_ = plan.n_steps
        self.steps_per_epoch_ = int(plan.spe[0]) if plan.rows is None else plan.spe.copy()
        self.head_n_steps_ = plan.totals.copy()
        return self

    def _check_resume(self, state: dict, ids: list[str], plan: _BatchPlan, shape: tuple) -> int:
        """The step a snapshot resumes at, or a UserError when it belongs to another training run."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UserError("the resume state is not an SGDHeads snapshot (EvalPoint.state()); start afresh")
        checks = (("heads", list(state.get("heads", [])), ids), ("training rows", state.get("rows"), plan.fingerprint()),
                  ("steps per head", list(state.get("head_steps", [])), plan.totals.tolist()),
                  ("weight shape", tuple(state["W"].shape), shape),
                  ("momentum", state["momentum_W"] is not None, bool(self.momentum)))
        for what, got, want in checks:
            if got != want:
                raise UserError(f"the resume state was saved by another training run ({what} differ); "
                                "resume with the original data and options, or start afresh")
        step = int(state["step"])
        if not 0 <= step <= plan.n_steps:
            raise UserError(f"the resume state is at step {step}, outside this run's {plan.n_steps} steps; start afresh")
        return step

    # -- inference --------------------------------------------------------------------
    def predict(self, X, restrict=None) -> np.ndarray:
        """Predicted labels ``[H, N]`` of every head."""
        return self._predict_all(X, restrict)

    def score(self, X, y) -> np.ndarray:
        """Accuracy ``[H]`` of every head."""
        pred = self.predict(X)
        y = np.asarray(y)
        if y.shape != pred.shape[1:]:
            raise UserError(f"y must be a 1-D array of {pred.shape[1]} labels, got shape {y.shape}")
        return (pred == y[None]).mean(1)

    def head(self, h: int) -> SGDHead:
        """Head `h` (in ``heads_`` order) as a fitted single-head classifier (predict ``[N]``, predict_proba, ...)."""
        self._check_fitted()
        if not -len(self.heads_) <= h < len(self.heads_):
            raise UserError(f"head {h} does not exist; this SGDHeads has {len(self.heads_)} heads")
        lr, seed = self.head_params_[h]
        params = {k: v for k, v in self.get_params().items() if k in SGDHead._PARAMS}
        one = SGDHead(lr, seed, **params)
        one.W_, one.b_ = self.W_[h:h + 1].clone(), self.b_[h:h + 1].clone()
        one.coef_, one.intercept_ = self.coef_[h].copy(), self.intercept_[h].copy()
        one.classes_, one.n_classes_, one.n_features_in_ = self.classes_, self.n_classes_, self.n_features_in_
        one.n_steps_ = int(self.head_n_steps_[h])
        return one


class SGDHead(SingleHead):
    """One SGD logistic head (`SGDHeads` with a single lr and seed): a plain scikit-learn classifier.

    Same recipe and defaults as `SGDHeads`; learned ``classes_``, ``coef_ [C, D]``,
    ``intercept_ [C]``, ``n_steps_``. `SGDHeads.head` returns these for trained heads.
    """

    _PARAMS = ("batch_size", "epochs", "momentum", "weight_decay", "schedule", "head_init", "init", "n_classes",
               "device", "storage_dtype")

    def __init__(self, lr: float = 0.001, seed: int = 0, *, batch_size: int = 32768, epochs: float = 100,
                 momentum: float = 0.9, weight_decay: float = 0.0, schedule: str = "constant", head_init: str = "uniform",
                 init=None, n_classes: int | None = None, device=None, storage_dtype: str = "float32"):
        self.lr = lr
        self.seed = seed
        self.batch_size = batch_size
        self.epochs = epochs
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.head_init = head_init
        self.init = init
        self.n_classes = n_classes
        self.device = device
        self.storage_dtype = storage_dtype

    def fit(self, X, y, eval_sets=None, callback: Callable[[EvalPoint], None] | None = None) -> SGDHead:
        params = {k: getattr(self, k) for k in self._PARAMS}
        many = SGDHeads([self.lr], [self.seed], eval_every=1 if callback else 0, **params).fit(X, y, eval_sets, callback)
        fitted = many.head(0)
        for k in ("W_", "b_", "coef_", "intercept_", "classes_", "n_classes_", "n_features_in_", "n_steps_"):
            setattr(self, k, getattr(fitted, k))
        return self


def head_steps(sizes: Sequence[int], batch_size: int, epochs: float, budget: str = "epochs") -> np.ndarray:
    """Optimiser steps of heads training on `sizes` rows each: ``epochs`` epochs of batches of
    ``min(batch_size, n)`` (``budget="epochs"``), or every head the most of those (``"steps"``)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    spe = -(-sizes // np.minimum(int(batch_size), sizes))
    own = np.maximum(1, np.round(epochs * spe)).astype(np.int64)
    return np.full(len(sizes), own.max()) if budget == "steps" else own


def softmax_lse(L: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logsumexp, softmax)`` of `L` along `dim` (kept), sharing one exp: the step's
    elementwise work is ~1.8× less than `torch.logsumexp` then `exp` (10 × 10 × 1,638, float32).
    (The float64 L-BFGS objective keeps `torch.logsumexp`: its tightest tolerances need its rounding.)"""
    m = L.amax(dim, keepdim=True)
    e = (L - m).exp_()
    total = e.sum(dim, keepdim=True)
    return m + total.log(), e.div_(total)


DENSE_CHUNK_ELEMS = 1 << 23  # rows × max(D, H·C) per chunk of the dense pass
DENSE_BATCH_FRACTION = 2.0  # one wide product over all N rows when the heads' batches hold ≥ 2 N rows in all


def _gathered_grads(Xs, yt, W, b, idx, valid, nb, rows: int):
    """Mean gradients and loss of every head on its own minibatch, gathering ``X[idx_h]`` per head."""
    H = W.shape[0]
    gW = torch.zeros_like(W)
    gb = torch.zeros_like(b)
    loss = torch.zeros(H, device=W.device)
    for s in range(0, idx.shape[1], rows):
        sub = idx[:, s:s + rows]
        Xb = Xs[sub].float()  # [H, r, D]
        logits = torch.baddbmm(b.unsqueeze(1), Xb, W)  # [H, r, C]
        lse, p = softmax_lse(logits, -1)
        yb = yt[sub]  # [H, r]
        nll = lse.squeeze(-1) - logits.gather(-1, yb.unsqueeze(-1)).squeeze(-1)
        p.scatter_add_(-1, yb.unsqueeze(-1), torch.full_like(yb, -1, dtype=p.dtype).unsqueeze(-1))
        if valid is not None:  # padding rows of heads with a shorter (or no) batch count zero
            v = valid[:, s:s + rows]
            nll = nll * v
            p = p * v.unsqueeze(-1)
        loss += nll.sum(1)
        gW += torch.bmm(p.transpose(1, 2), Xb).transpose(1, 2)  # [H, C, r] @ [H, r, D]
        gb += p.sum(1)
    if valid is None:
        return gW / nb, gb / nb, loss / nb
    return gW / nb[:, None, None], gb / nb[:, None], loss / nb


def _dense_grads(Xs, yt, W, b, idx, valid, nb, max_elems: int):
    """The same gradients from one pass over all rows (in row chunks) with every head in each
    product: row ``n`` weighs ``1/nb_h`` times the number of times it is in head ``h``'s batch, else 0.

    Class-major like `logistic.LogisticData.evaluate` (``Wᵀ [H·C, D] @ Xcᵀ``, then ``P @ Xc``),
    in chunks of at most 8M elements (32 MB, kept in the last-level cache between its two
    products; 5 % faster than 2M here): 1.8× faster than ``Xc @ W`` on the BiT recipe's
    60,000 × 1,280 rows (10 heads)."""
    H, D, C = W.shape
    N = Xs.shape[0]
    weight = torch.zeros(H, N, device=W.device)
    w = torch.ones_like(idx, dtype=torch.float32) if valid is None else valid
    weight.scatter_add_(1, idx, w / (nb if valid is None else nb[:, None]))
    gW = torch.zeros(H * C, D, device=W.device)
    gb = torch.zeros(H, C, device=W.device)
    loss = torch.zeros(H, device=W.device)
    rows = max(1, min(max_elems, DENSE_CHUNK_ELEMS) // max(D, H * C))
    for s in range(0, N, rows):
        wc = weight[:, s:s + rows]
        if not bool(wc.any()):  # a chunk no head uses this step
            continue
        Xc, yc = Xs[s:s + rows].float(), yt[s:s + rows]
        r = Xc.shape[0]
        logits = class_major_logits(Xc, W, b)  # [H, C, r], the bias added inside the product
        lse, p = softmax_lse(logits, 1)
        pick = yc.view(1, 1, r).expand(H, 1, r)
        loss += ((lse - logits.gather(1, pick)).squeeze(1) * wc).sum(1)
        p.scatter_add_(1, pick, torch.full((H, 1, r), -1.0, device=W.device))
        p *= wc[:, None, :]
        gW += p.view(H * C, r) @ Xc
        gb += p.sum(2)
    return gW.view(H, C, D).transpose(1, 2), gb, loss


class _BatchPlan:
    """Which rows every head trains on at every step, and for how many steps.

    Without row sets all heads share ``N`` rows, one batch size and one step count; each
    epoch stacks every head's own shuffling into ``[H, N]`` and a step slices it. With row
    sets, head ``h`` shuffles its own ``n_h`` rows (a permutation of ``range(n_h)`` mapped
    through its rows, the draw a fit on ``X[rows]`` makes), uses batch ``min(B, n_h)``, and
    a step pads the shorter batches with a zero mask; heads past their last step get an
    empty batch and a zero learning rate.
    """

    def __init__(self, N: int, H: int, batch_size: int, epochs: float, budget: str, gens, dev, head_rows):
        self.gens, self.dev, self.H = gens, dev, H
        if head_rows is None:
            self.rows = None
            sizes = np.full(H, N)
        else:
            if len(head_rows) != H:
                raise UserError(f"head_rows has {len(head_rows)} row sets for {H} heads; give one per head")
            self.rows = []
            for h, r in enumerate(head_rows):
                r = np.asarray(r)
                if r.ndim != 1 or r.size == 0 or r.dtype.kind not in "iu" or r.min() < 0 or r.max() >= N:
                    raise UserError(f"row set of head {h} must be a non-empty 1-D array of row indices in 0..{N - 1}")
                self.rows.append(torch.from_numpy(r.astype(np.int64)).to(dev))
            sizes = np.array([len(r) for r in self.rows])
        self.sizes = sizes
        self.B = np.minimum(batch_size, sizes)
        self.spe = -(-sizes // self.B)  # steps per epoch of each head
        self.totals = head_steps(sizes, batch_size, epochs, budget)
        self.total = int(self.totals.max())
        self.n_steps = self.total
        self._order = None
        self._orders = [None] * H
        self._epoch_rng = [g.get_state() for g in gens]  # each head's RNG where its current epoch's shuffle was drawn

    def fingerprint(self) -> list:
        """What the batches are drawn from: the row count, or each head's row-set size (for resume checks)."""
        return [int(n) for n in self.sizes] if self.rows is not None else [int(self.sizes[0])]

    def _mid_epoch(self, done: int) -> np.ndarray:
        """Heads whose next step (after `done`) continues an epoch already shuffled."""
        return (done % self.spe != 0) & (done < self.totals)

    def rng_state(self, done: int) -> torch.Tensor:
        """Each head's RNG as the next step needs it: where the current epoch's shuffle was drawn
        when that epoch is under way, else the live state (the next step draws a new epoch)."""
        mid = self._mid_epoch(done)
        return torch.stack([(self._epoch_rng[h] if mid[h] else self.gens[h].get_state()).clone() for h in range(self.H)])

    def resume_at(self, done: int, rng: torch.Tensor) -> None:
        """Restore the RNGs of `rng_state(done)` and redraw the shuffles of epochs under way."""
        for g, r in zip(self.gens, rng):
            g.set_state(r.clone())
        mid = self._mid_epoch(done)
        if self.rows is None:
            if mid[0]:
                self._draw_shared()
            return
        for h in np.flatnonzero(mid):
            self._draw_head(int(h))

    def _draw_shared(self) -> None:
        self._epoch_rng = [g.get_state() for g in self.gens]
        self._order = torch.stack([epoch_order(g, int(self.sizes[0])) for g in self.gens]).to(self.dev)  # [H, N]

    def _draw_head(self, h: int) -> None:
        self._epoch_rng[h] = self.gens[h].get_state()
        self._orders[h] = self.rows[h][epoch_order(self.gens[h], int(self.sizes[h])).to(self.dev)]

    def lr_factors(self, schedule: str, t: int) -> float | torch.Tensor:
        """The schedule's multiplier at step `t`: one number, or per head (each over its own length, 0 once done)."""
        if self.rows is None:
            return lr_factor(schedule, t, self.total)
        f = [lr_factor(schedule, t, int(n)) if t < n else 0.0 for n in self.totals]
        return torch.tensor(f, device=self.dev, dtype=torch.float32)

    def batch(self, t: int):
        if self.rows is None:
            B, spe = int(self.B[0]), int(self.spe[0])
            k = t % spe
            if k == 0:
                self._draw_shared()
            idx = self._order[:, k * B:(k + 1) * B]
            return idx, None, idx.shape[1]
        parts = []
        for h in range(self.H):
            if t >= self.totals[h]:
                parts.append(self.rows[h][:0])
                continue
            k = t % int(self.spe[h])
            if k == 0:
                self._draw_head(h)
            B = int(self.B[h])
            parts.append(self._orders[h][k * B:(k + 1) * B])
        nb = torch.tensor([len(p) for p in parts], device=self.dev)
        width = max(1, int(nb.max()))
        idx = torch.zeros(self.H, width, dtype=torch.int64, device=self.dev)
        valid = torch.zeros(self.H, width, device=self.dev)
        for h, p in enumerate(parts):
            idx[h, :len(p)] = p
            valid[h, :len(p)] = 1.0
        return idx, valid, nb.clamp(min=1).float()
