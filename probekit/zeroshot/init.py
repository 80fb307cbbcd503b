"""Zero-shot weights as the starting point of trained heads ("fine-tuning the zero-shot model").

`train-head --init zero-shot` starts every SGD head and every λ of the L-BFGS sweep from
``(logit_scale · W_textᵀ, 0)``: the linear head whose logits equal the zero-shot logits, so
the first record of a run (step 0) is the zero-shot evaluation.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from probekit.zeroshot.head import ZeroShotHead, check_features, zero_shot_head


def zero_shot_init(model: str, classes: str, features: Any, *, weights: str | os.PathLike = "default",
                   templates: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                   device: Any = None, head: ZeroShotHead | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(coef [C, D], intercept [C])`` float32, the ``init=`` of `SGDHeads` / `LBFGSLogistic`, from CLIP's zero-shot head.

    The training features are checked like evaluation features: CLIP image embeddings of the
    same model and weights as the text encoder, labels within the class list.
    """
    if head is None:
        head = zero_shot_head(model, classes, weights=weights, templates=templates, cache_dir=cache_dir, device=device)
    check_features(head, features, f"training set {getattr(features, 'name', '')}".strip())
    return head.linear_init()
