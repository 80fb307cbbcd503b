"""The L2-regularised multinomial logistic objective of many heads over one training set.

Mean objective of head j with L2 strength λ_j (bias unpenalised), for ``W [D, C]``, ``b [C]``::

    F_j(W, b) = (1/N) [ Σᵢ CE(Wᵀxᵢ + b, yᵢ) + (λ_j / 2) ‖W‖² ]

`LogisticData.evaluate` computes F, ∇F for k heads at once: one ``X [r, D] @ W [D, k·C]``
product and one ``Pᵀ [k·C, r] @ X [r, D]`` product per row chunk, in the compute dtype
(float32 by default: the GEMMs are ~2× faster than float64), with the softmax, the loss and
every sum over rows in float64. Row chunks bound the memory however large N is.

`KroneckerPreconditioner` approximates the inverse Hessian by a Kronecker product: with
centred features the Hessian of the weights is roughly ``Σ ⊗ A + (λ/N) I``, where
``Σ = U diag(s) Uᵀ`` is the feature covariance (computed once, shared by every λ) and ``A``
the mean softmax curvature ``mean_i (diag(pᵢ) − pᵢpᵢᵀ)`` (``[C, C]``, one per λ, from its
warm start). Preconditioning by its inverse removes the feature scaling and correlation and
the unequal curvature of the classes (confusable classes curve far more than easy ones):
on 54,000 Fashion-MNIST Lite0 rows it cut the ten-λ sweep from 310 to 214 iterations
against a scalar curvature ``a Σ ⊗ I``.
"""

from __future__ import annotations

import torch

F64 = torch.float64
FLOOR = 1e-4  # eigenvalues of Σ are raised to FLOOR × their mean in the preconditioner
CLASS_FLOOR = 1e-3  # eigenvalues of A (off the class-mean direction) are raised to CLASS_FLOOR × their mean


class LogisticData:
    """Training rows ``X [N, D]`` (float16/32/64 storage) and class codes ``y [N]`` for `evaluate`."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, n_classes: int, compute_dtype: torch.dtype = torch.float32,
                 chunk_elems: int = 1 << 21):
        self.X, self.y = X, y
        self.N, self.D = X.shape
        self.C = int(n_classes)
        self.dtype = compute_dtype
        self.chunk_elems = int(chunk_elems)
        self.evaluations = 0  # heads evaluated (a k-head call counts k)

    def _rows(self, width: int) -> int:
        return max(1, self.chunk_elems // max(width, self.D))

    def _chunks(self, width: int):
        rows = self._rows(width)
        for s in range(0, self.N, rows):
            yield self.X[s:s + rows].to(self.dtype), self.y[s:s + rows]

    def _logits(self, W: torch.Tensor, b: torch.Tensor):
        """Each row chunk ``(Xc, yc, L)`` with its float64 logits ``L [k, C, r]``: the product in the
        compute dtype, class-major (``Wᵀ [k·C, D] @ Xcᵀ``), the bias added in float64."""
        k, D, C = W.shape
        Wt = W.transpose(1, 2).reshape(k * C, D).to(self.dtype)
        for Xc, yc in self._chunks(k * C):
            yield Xc, yc, (Wt @ Xc.T).to(F64).view(k, C, -1) + b[:, :, None]

    def mean(self) -> torch.Tensor:
        """Feature mean ``[D]`` in float64."""
        total = torch.zeros(self.D, dtype=F64, device=self.X.device)
        for Xc, _ in self._chunks(1):
            total += Xc.sum(0, dtype=F64)
        return total / self.N

    def evaluate(self, W: torch.Tensor, b: torch.Tensor, l2: torch.Tensor):
        """``(f [k], gW [k, D, C], gb [k, C])`` for heads ``W [k, D, C]``, ``b [k, C]`` (float64).

        The cross-entropy part of the gradient sums to zero over classes in exact arithmetic;
        that is enforced, so rounding cannot leak into the class-mean direction that only the
        penalty controls.

        Logits are computed class-major, ``Wᵀ [k·C, D] @ Xcᵀ``, and the gradient as
        ``P [k·C, r] @ Xc``: with a few output columns both products then run at the speed
        of reading X (the row-major ``Xc @ W`` is 2–3× slower in MKL for narrow W). Chunks of
        a few MB keep a chunk in cache between its two products.
        """
        k, D, C = W.shape
        self.evaluations += k
        ce = torch.zeros(k, dtype=F64, device=W.device)
        gW = torch.zeros(k * C, D, dtype=F64, device=W.device)
        gb = torch.zeros(k, C, dtype=F64, device=W.device)
        for Xc, yc, L in self._logits(W, b):
            r = Xc.shape[0]
            lse = torch.logsumexp(L, 1, keepdim=True)
            pick = yc.view(1, 1, r).expand(k, 1, r)
            ce += (lse - L.gather(1, pick)).sum((1, 2))
            P = torch.exp(L - lse)
            P.scatter_add_(1, pick, torch.full((k, 1, r), -1.0, dtype=F64, device=W.device))
            gb += P.sum(2)
            gW += (P.view(k * C, r).to(self.dtype) @ Xc).to(F64)
        gW = gW.view(k, C, D).transpose(1, 2)
        gW = gW - gW.mean(2, keepdim=True)
        gb = gb - gb.mean(1, keepdim=True)
        sq = (W * W).sum((1, 2))
        f = (ce + 0.5 * l2 * sq) / self.N
        gW = (gW + l2[:, None, None] * W) / self.N
        return f, gW, gb / self.N

    def softmax_curvature(self, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``A [k, C, C] = mean_i (diag(pᵢ) − pᵢpᵢᵀ)`` (float64) for heads ``W [k, D, C]``, ``b [k, C]``.

        The class factor of the Kronecker preconditioner: one pass of logits (half an
        evaluation), asked for once per λ that needs iterations."""
        k, _, C = W.shape
        A = torch.zeros(k, C, C, dtype=F64, device=W.device)
        for _, _, L in self._logits(W, b):
            P = torch.softmax(L, 1)
            A -= P @ P.transpose(1, 2)
            A.diagonal(dim1=1, dim2=2).add_(P.sum(2))
        return A / self.N

    def spectrum(self, mu: torch.Tensor, max_rows: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvectors ``U [D, D]`` and eigenvalues ``s [D]`` (float64) of the centred feature covariance.

        Estimated from at most `max_rows` evenly spaced rows: a preconditioner needs the
        shape of Σ, not its last digit, and this keeps the one-off cost below a few evaluations.
        """
        step = max(1, -(-self.N // max_rows))
        rows = self.X[::step].to(self.dtype) - mu.to(self.dtype)
        cov = (rows.T @ rows).to(F64) / rows.shape[0]
        s, U = torch.linalg.eigh(cov)
        return U, s.clamp(min=0)


class KroneckerPreconditioner:
    """``M ≈ H⁻¹`` for one λ on the flat parameter vector ``[W (D·C, row-major), b (C)]``.

    In the centred coordinates ``(W, c = b + Wᵀμ)`` the Hessian is ≈ ``Σ ⊗ A + (λ/N) I`` for
    W (exactly ``λ/N`` along the class-mean direction, where the loss is flat) and ``A`` for c;
    ``M`` applies its inverse in the eigenbases of Σ and A and maps back. Eigenvalues of Σ
    below ``floor · mean(s)`` and of A below ``class_floor · mean`` are raised to those
    levels, so directions of (nearly) no variance or curvature in the sample are not over-stepped.
    """

    def __init__(self, U: torch.Tensor, s: torch.Tensor, mu: torch.Tensor, A: torch.Tensor, l2_over_n: float,
                 floor: float = FLOOR, class_floor: float = CLASS_FLOOR):
        self.U, self.Ut, self.mu = U, U.T.contiguous(), mu
        self.D, self.C = U.shape[0], A.shape[0]
        C = self.C
        ones = torch.full((C, C), 1.0 / C, dtype=F64, device=A.device)
        alpha, Q = torch.linalg.eigh(0.5 * (A + A.T) + ones)  # A·1 = 0: the class mean gets eigenvalue 1, set aside below
        mean_dir = torch.argmax((Q.sum(0) ** 2))
        keep = torch.ones(C, dtype=torch.bool, device=A.device)
        keep[mean_dir] = False
        alpha = alpha.clamp(min=0)
        if C > 1:
            alpha = alpha.clamp(min=max(class_floor * float(alpha[keep].mean()), 1e-12))
        # the class mean of the bias is flat (its gradient is 0): any positive gain keeps M definite
        alpha[mean_dir] = float(alpha[keep].mean()) if C > 1 else 1.0
        self.Q, self.Qt = Q, Q.T.contiguous()
        s = s.clamp(min=floor * float(s.mean()) if s.numel() else 0.0)
        self.d = torch.where(keep[None, :], 1.0 / (s[:, None] * alpha[None, :] + l2_over_n), torch.zeros(1, dtype=F64, device=A.device))
        self.bias_d = 1.0 / alpha
        self.mean_gain = 1.0 / l2_over_n

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        D, C = self.D, self.C
        gW, gb = v[: D * C].view(D, C), v[D * C:]
        gW = gW - self.mu[:, None] * gb[None, :]  # gradient w.r.t. the centred weights
        m = gW.mean(1, keepdim=True)
        dW = self.U @ (self.d * (self.Ut @ (gW - m) @ self.Q)) @ self.Qt + self.mean_gain * m
        dc = self.Q @ (self.bias_d * (self.Qt @ gb))
        db = dc - self.mu @ dW
        return torch.cat([dW.reshape(-1), db])
