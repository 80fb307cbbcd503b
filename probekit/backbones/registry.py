"""Backbone names -> the family that builds them, timm-style: one factory, many entry points.

Lookup order: the bundled `efficientnet_lite0` and `small_cnn` (for from-scratch testbeds); CLIP (`clip-vit-b-32`, `open_clip:ARCH[:TAG]`);
explicit `torchvision:NAME` / `timm:NAME`; Google BiT names (`bit-m-r50x1`, `bit-s-r50x1` ...);
then any torchvision classifier name; then any timm name (with an optional `.tag`); then any
open_clip architecture (`ViT-B-32-quickgelu`, default tag `openai` where it exists).
Bare names that exist in both libraries (e.g. `resnet50`) mean torchvision, as in the paper.
"""

from __future__ import annotations

import importlib
import os

from probekit.backbones import weights as W
from probekit.backbones.base import Backbone, Classifier
from probekit.errors import UserError, unknown_name

PAPER_TORCHVISION = ("alexnet", "resnet18", "resnet50", "resnet152", "vgg11_bn", "wide_resnet50_2")
_MODULES = {
    "efficientnet_lite0": "probekit.backbones.efficientnet_lite0",
    "small_cnn": "probekit.backbones.small_cnn",
    "open_clip": "probekit.backbones.clip_family",
    "torchvision": "probekit.backbones.torchvision_family",
    "timm": "probekit.backbones.timm_family",
}


def resolve(name: str) -> tuple[str, str]:
    """(family, name that family understands) for a registry name, or an unknown-name `UserError`."""
    from probekit.backbones import clip_family, timm_family, torchvision_family

    if not isinstance(name, str) or not name.strip():
        raise UserError("no backbone name given; pass --model NAME (see `probekit extract --help`)")
    name = name.strip()
    low = name.lower()
    if low in ("efficientnet_lite0", "efficientnet-lite0"):
        return "efficientnet_lite0", "efficientnet_lite0"
    if low in ("small_cnn", "small-cnn"):
        return "small_cnn", "small_cnn"
    if low in clip_family.ALIASES or name.startswith(clip_family.PREFIX):
        return "open_clip", name
    if low.startswith(("torchvision:", "tv:")):
        inner = name.split(":", 1)[1]
        if inner not in torchvision_family.names():
            raise unknown_name("torchvision model", inner, torchvision_family.names())
        return "torchvision", inner
    if low.startswith("timm:"):
        inner = name.split(":", 1)[1]
        if not timm_family.is_timm_name(inner):
            import timm

            raise unknown_name("timm model", inner, timm.list_models())
        return "timm", inner
    if low in timm_family.BIT_ALIASES:
        return "timm", low
    if name in torchvision_family.names():
        return "torchvision", name
    if timm_family.is_timm_name(name):
        return "timm", name
    if clip_family.is_arch(name):  # bare open_clip architecture, e.g. ViT-B-32-quickgelu
        return "open_clip", clip_family.PREFIX + name
    raise unknown_name("backbone", name, _suggestable(), hint="probekit.backbones.list_backbones()")


def _suggestable() -> list[str]:
    import timm

    return sorted(set(list_backbones()) | set(timm.list_models()))


def list_backbones() -> list[str]:
    """Names worth listing: the paper's models, BiT (timm tags and Google names), CLIP, the bundled default,
    and every torchvision classifier. Any other timm name (or `timm:NAME`, `open_clip:ARCH[:TAG]`) also works."""
    from probekit.backbones import clip_family, timm_family, torchvision_family

    names = {"efficientnet_lite0", "small_cnn", *clip_family.ALIASES, *PAPER_TORCHVISION, *timm_family.bit_names(),
             *timm_family.BIT_ALIASES, *torchvision_family.names()}
    return sorted(names)


def _family_module(family: str):
    return importlib.import_module(_MODULES[family])


IMAGE_SIZE_MIN = 8      # the stems of the supported families need at least this much input
IMAGE_SIZE_MAX = 4096   # one 4096-px RGB batch of 64 is already 12 GiB; no published recipe comes near


def check_image_size(image_size) -> int | None:
    """`image_size` if it is a usable crop in pixels (or None), else a `UserError` saying the range."""
    if image_size is None:
        return None
    if (isinstance(image_size, bool) or not isinstance(image_size, int)
            or not IMAGE_SIZE_MIN <= image_size <= IMAGE_SIZE_MAX):
        raise UserError(f"image size must be a whole number of pixels from {IMAGE_SIZE_MIN} to {IMAGE_SIZE_MAX}, "
                        f"got {image_size!r}")
    return image_size


def create_backbone(name: str, weights: str | os.PathLike | None = "default", *,
                    image_size: int | None = None, feature: str | None = None) -> Backbone:
    """Build a frozen eval-mode feature extractor with its eval transform and weight identity.

    weights: "default" (published pretrained, from the local cache; downloaded only when missing),
    "none" (random init, seeded with RANDOM_INIT_SEED = 0, weight id "random-init:seed=0")
    or a local file (state dict, .safetensors, or a BiT .npz).
    image_size: the crop size (the resize keeps the recipe's ratio); None keeps the recipe's size.
    feature: None / "penultimate"; CLIP also "pre-projection".
    """
    family, inner = resolve(name)
    parsed = W.parse_weights(weights)
    size = check_image_size(image_size)
    if parsed == W.NONE:
        # Random init is drawn from a fixed seed, so a killed `--weights none` extract
        # resumes bit-identically and two runs make the same cache entry.
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(W.RANDOM_INIT_SEED)
            backbone = _family_module(family).create(inner, parsed, image_size=size, feature=feature)
        backbone.weight_id = W.RANDOM_INIT_BACKBONE_ID
    else:
        backbone = _family_module(family).create(inner, parsed, image_size=size, feature=feature)
    backbone.name = name.strip()
    return backbone


def create_classifier(name: str, num_classes: int, weights: str | os.PathLike | None = "default", *,
                      image_size: int | None = None) -> Classifier:
    """The full trainable network with a fresh `num_classes`-way head, for full fine-tuning."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive whole number, got {num_classes!r}")
    family, inner = resolve(name)
    parsed = W.parse_weights(weights)
    classifier = _family_module(family).create_classifier(inner, num_classes, parsed, image_size=check_image_size(image_size))
    classifier.name = name.strip()
    return classifier
