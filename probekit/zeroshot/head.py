"""The zero-shot CLIP head: class text embeddings as a linear classifier over image embeddings.

``W [D, C]`` holds the normalised text embedding of each class (templates averaged, as in
open_clip's `build_zero_shot_classifier`), and ``logits = logit_scale · img_emb @ W`` with
CLIP's learned temperature. As a linear head that is ``(logit_scale · W, b = 0)``, which is
how `train-head --init zero-shot` starts SGD heads and the L-BFGS sweep from it
(`SGDHeads(init=...)` / `LBFGSLogistic(init=...)` take ``(coef [C, D], intercept [C])``).

The head only makes sense on the embedding the text was trained against: the projected,
normalised `encode_image` output of the *same* CLIP weights. `check_clip_features` refuses
anything else before a single accuracy is computed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from probekit.errors import UserError
from probekit.zeroshot.classnames import ClassList, load_classes
from probekit.zeroshot.text_cache import TextEmbeddings, cached_text_embeddings

IMAGE_EMBED = "clip-image-embed"
HEAD_ID = "zero-shot"


@dataclass
class ZeroShotHead:
    """Class text embeddings + CLIP's logit scale, for the classes of `classes` in label order."""

    embeddings: TextEmbeddings
    classes: ClassList
    cache_hit: bool = False

    @property
    def W(self) -> np.ndarray:
        """[D, C] unit-norm class embeddings."""
        return self.embeddings.weights

    @property
    def logit_scale(self) -> float:
        return self.embeddings.logit_scale

    @property
    def num_classes(self) -> int:
        return int(self.W.shape[1])

    @property
    def dim(self) -> int:
        return int(self.W.shape[0])

    @property
    def model(self) -> str:
        return self.embeddings.model

    @property
    def weight_id(self) -> str:
        return self.embeddings.weight_id

    def linear_init(self) -> tuple[np.ndarray, np.ndarray]:
        """The equivalent linear head in the estimators' ``init`` layout (as ``nn.Linear``):
        ``coef [C, D] = logit_scale · Wᵀ`` and ``intercept [C] = 0``."""
        return np.ascontiguousarray((self.logit_scale * self.W).T, dtype=np.float32), np.zeros(self.num_classes, dtype=np.float32)

    def logits(self, X: Any, *, chunk: int = 8192) -> np.ndarray:
        """``[N, C]`` logits of image embeddings ``X [N, D]`` (float32, computed in row chunks)."""
        import torch

        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise UserError(f"image features have shape {tuple(X.shape)} but the zero-shot head expects [N, {self.dim}]; "
                            f"extract them with the same CLIP model")
        W = torch.from_numpy(np.ascontiguousarray(self.W, dtype=np.float32)) * float(self.logit_scale)
        out = np.empty((X.shape[0], self.num_classes), dtype=np.float32)
        for s in range(0, X.shape[0], chunk):
            xb = torch.from_numpy(np.ascontiguousarray(X[s:s + chunk], dtype=np.float32))
            out[s:s + chunk] = (xb @ W).numpy()
        return out


def encode_classes(clip_model: Any, tokenizer: Any, classes: ClassList, *, device: Any = None,
                   classes_per_batch: int = 10) -> tuple[np.ndarray, float]:
    """Run the CLIP text tower over every (class, template) prompt: ``(W [D, C], exp(logit_scale))``.

    Uses open_clip's `build_zero_shot_classifier` (per-prompt normalise, average over
    templates, normalise again), so the weights are exactly open_clip's zero-shot weights.
    """
    import torch
    from open_clip import build_zero_shot_classifier

    from probekit.runtime import choose_device

    device = choose_device(device)
    param = next(clip_model.parameters())
    moved = param.device != device
    if moved:
        clip_model.to(device)
    try:
        with torch.inference_mode():
            W = build_zero_shot_classifier(clip_model, tokenizer, list(classes.names), list(classes.templates),
                                           num_classes_per_batch=classes_per_batch, device=device,
                                           use_tqdm=len(classes) * len(classes.templates) > 500)
        scale = float(clip_model.logit_scale.exp().item())
    finally:
        if moved:
            clip_model.to(param.device)
    return W.float().cpu().numpy(), scale


def text_encoder(backbone: Any) -> tuple[Any, Any]:
    """The full open_clip model and its tokenizer from a CLIP `Backbone`; other families are refused."""
    import open_clip

    clip_model = getattr(backbone, "extra", {}).get("clip_model")
    if clip_model is None or not hasattr(clip_model, "encode_text"):
        raise UserError(f"--model {backbone.name!r} is a {backbone.family} backbone without a text encoder; "
                        f"zero-shot heads need a CLIP model such as clip-vit-b-32 or open_clip:<arch>")
    arch = backbone.extra.get("tokenizer_name") or backbone.extra.get("open_clip_arch")
    return clip_model, open_clip.get_tokenizer(arch)


def zero_shot_head(model: str, classes: ClassList | str, *, weights: str | os.PathLike = "default",
                   templates: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                   device: Any = None, use_cache: bool = True) -> ZeroShotHead:
    """Build (or read from the text cache) the zero-shot head of CLIP `model` for `classes`.

    `classes` is a `ClassList` or a ``--classes`` spec (``imagenet``, ``cifar10`` or a file);
    `templates` (a file) overrides the list's default templates.
    """
    from probekit.backbones import create_backbone

    if not isinstance(classes, ClassList):
        classes = load_classes(classes, templates)
    backbone = create_backbone(model, weights)
    clip_model, tokenizer = text_encoder(backbone)

    def compute() -> tuple[np.ndarray, float]:
        return encode_classes(clip_model, tokenizer, classes, device=device)

    emb, hit = cached_text_embeddings(backbone.name, backbone.weight_id, classes.names, classes.templates, compute,
                                      cache_dir=cache_dir, use_cache=use_cache)
    return ZeroShotHead(emb, classes, cache_hit=hit)


def check_feature_kind(fs: Any, role: str, model: str) -> None:
    """Only the projected, normalised CLIP image embedding lives in the text embedding's space."""
    kind = (fs.attrs or {}).get("feature_kind")
    if kind != IMAGE_EMBED:
        raise UserError(f"{role} holds {kind or 'unlabelled'} features, but a zero-shot head needs the projected, normalised "
                        f"CLIP image embedding ({IMAGE_EMBED}); re-extract with `probekit extract --model {model}` "
                        f"without --feature pre-projection")


def check_clip_features(head: ZeroShotHead, fs: Any, role: str, *, expect_classes: bool = True) -> None:
    """Refuse features the head cannot be matched against: wrong kind, other backbone or weights, wrong classes.

    `fs` is a `probekit.cache.FeatureSet`; `role` names it in messages ("ID set digits:test").
    With `expect_classes`, the set's labels must live in the head's C classes.
    """
    attrs = fs.attrs or {}
    check_feature_kind(fs, role, head.model)
    backbone, wid = attrs.get("backbone"), attrs.get("weight_id")
    if backbone != head.model or wid != head.weight_id:
        raise UserError(f"{role} was extracted with {backbone} (weights {wid}) but the text encoder is {head.model} "
                        f"(weights {head.weight_id}); image and text embeddings must come from the same CLIP model and weights")
    if fs.features.shape[1] != head.dim:
        raise UserError(f"{role} has {fs.features.shape[1]}-d features but the text embeddings are {head.dim}-d; "
                        f"extract them with the same CLIP model")
    if not expect_classes:
        return
    names = list(attrs.get("classes") or [])
    if names and len(names) != head.num_classes:
        raise UserError(f"{role} has {len(names)} classes but --classes {head.classes.source} gives {head.num_classes}; "
                        f"pass a class list with one name per label of the set, in label order")
    space = attrs.get("label_space")
    if head.classes.label_space and space and space != head.classes.label_space:
        raise UserError(f"{role} is labelled in the {space} label space but --classes {head.classes.source} is "
                        f"{head.classes.label_space}; pass the class list of the set's dataset (or a FILE of its class names)")
    top = int(fs.labels.max(initial=-1))
    if top >= head.num_classes:
        raise UserError(f"{role} has label {top} but --classes {head.classes.source} gives only {head.num_classes} classes; "
                        f"pass a class list with one name per label, in label order")
