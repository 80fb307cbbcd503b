"""Zero-shot weights as the starting point of trained heads ("fine-tuning the zero-shot model").

`train-head --init zero-shot` starts every SGD head and every λ of the L-BFGS sweep from
``(logit_scale · W_textᵀ, 0)``: the linear head whose logits equal the zero-shot logits, so
the first record of a run (step 0) is the zero-shot evaluation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from probekit.zeroshot.head import ZeroShotHead, check_clip_features, zero_shot_head


def zero_shot_init(model: str, classes: str, features: Any, *, weights: str | os.PathLike = "default",
                   templates: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                   device: Any = None, head: ZeroShotHead | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(coef [C, D], intercept [C])`` float32, the ``init=`` of `SGDHeads` / `LBFGSLogistic`, from CLIP's zero-shot head.

    The training features are checked like evaluation features: CLIP image embeddings of the
    same model and weights as the text encoder, labels within the class list.
    """
    if head is None:
        head = zero_shot_head(model, classes, weights=weights, templates=templates, cache_dir=cache_dir, device=device)
    check_clip_features(head, features, f"training set {getattr(features, 'name', '')}".strip())
    return head.linear_init()


@dataclass
class ZeroShotStart:
    """What `train-head --init zero-shot` hands `train_head`: the loaded training set, the init, config keys."""

    train: Any                                  # FeatureSet, passed on so it is read once
    init: tuple[np.ndarray, np.ndarray]         # (coef [C, D], intercept [C])
    config: dict                                # recorded in the run's config.json
    head: ZeroShotHead


def zero_shot_start(train: Any, *, model: str | None, classes: str, weights: str | os.PathLike = "default",
                    templates: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                    device: Any = None, image_size: int | None = None, feature: str | None = None) -> ZeroShotStart:
    """Resolve the training features (like `train_head` does) and build the zero-shot init for them.

    `train` is ``dataset:split``, a feature file or a FeatureSet; without `model`, the
    backbone recorded in the feature file is the text encoder.
    """
    from probekit.cache import FeatureSet
    from probekit.features import resolve_features
    from probekit.zeroshot.classnames import load_classes
    from probekit.zeroshot.head import check_feature_kind

    class_list = load_classes(classes, templates)
    if not isinstance(train, FeatureSet):
        find_kw = {k: v for k, v in (("weights", weights), ("image_size", image_size), ("feature", feature))
                   if v not in (None, "default")}
        train = resolve_features(train, model=model, cache_dir=cache_dir, **find_kw)
    model = model or train.attrs.get("backbone")
    check_feature_kind(train, f"training set {train.name}", model)
    head = zero_shot_head(model, class_list, weights=weights, cache_dir=cache_dir, device=device)
    init = zero_shot_init(model, classes, train, head=head)
    config = {"init": "zero-shot", "zero_shot": {"classes": class_list.source, "num_templates": len(class_list.templates),
                                                 "text_cache_key": head.embeddings.key, "logit_scale": head.logit_scale,
                                                 "text_model": head.model, "text_weight_id": head.weight_id}}
    return ZeroShotStart(train, init, config, head)


INIT_CHOICES = ("zero-shot",)


def resolve_init(init: str | None, classes: str | None, templates: str | os.PathLike | None, *, train: Any,
                 model: str | None, weights: str | os.PathLike = "default", cache_dir: str | os.PathLike | None = None,
                 device: Any = None, image_size: int | None = None, feature: str | None = None) -> tuple[Any, Any, dict | None]:
    """`train-head --init/--classes/--templates` → ``(train, init, extra_config)`` for `train_head`.

    Without `--init`, `train` passes through unchanged with no init; `--classes` or
    `--templates` without `--init zero-shot` is a mistake worth saying out loud.
    """
    from probekit.errors import UserError

    if init is None:
        if classes or templates:
            raise UserError("--classes / --templates only apply with --init zero-shot; add --init zero-shot or drop them")
        return train, None, None
    if init not in INIT_CHOICES:
        raise UserError(f"unknown --init {init!r}; choose {', '.join(INIT_CHOICES)} (or leave it out for a fresh head)")
    if not classes:
        raise UserError("--init zero-shot needs --classes imagenet|cifar10|FILE: the class names of the training labels, in label order")
    start = zero_shot_start(train, model=model, classes=classes, weights=weights, templates=templates, cache_dir=cache_dir,
                            device=device, image_size=image_size, feature=feature)
    return start.train, start.init, start.config
