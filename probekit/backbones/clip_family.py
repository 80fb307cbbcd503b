"""CLIP image towers through open_clip: the normalised image embedding or the pre-projection token.

`clip-vit-b-32` is OpenAI's ViT-B/32 (`ViT-B-32-quickgelu`: OpenAI weights were trained with
QuickGELU, the plain `ViT-B-32` config silently changes the activations). Any open_clip model is
reachable as `open_clip:<arch>[:<pretrained tag>]`. The whole CLIP model (text tower included)
stays in `Backbone.extra["clip_model"]` for zero-shot heads.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from probekit.backbones import weights as W
from probekit.backbones.base import Backbone, Classifier, freeze, unfreeze
from probekit.errors import UserError, unknown_name

FAMILY = "open_clip"
ALIASES = {"clip-vit-b-32": ("ViT-B-32-quickgelu", "openai")}
PREFIX = "open_clip:"
_EMBED = ("clip-image-embed", "embed", "image-embed", "projected", None)
_PRE = ("clip-pre-projection", "pre-projection", "pre_projection", "preprojection")


def is_arch(name: str) -> bool:
    import open_clip

    return name in open_clip.list_models()


def parse(name: str) -> tuple[str, str]:
    """Registry name -> (open_clip architecture, pretrained tag)."""
    import open_clip

    if name.lower() in ALIASES:
        return ALIASES[name.lower()]
    rest = name[len(PREFIX):]
    arch, _, tag = rest.partition(":")
    if arch not in open_clip.list_models():
        raise unknown_name("open_clip architecture", arch, open_clip.list_models())
    if not tag:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        tag = "openai" if "openai" in tags else (tags[0] if tags else "")
    return arch, tag


def _feature_kind(feature: str | None) -> str:
    if feature in _EMBED:
        return "clip-image-embed"
    if feature in _PRE:
        return "clip-pre-projection"
    raise UserError(f"unknown CLIP feature {feature!r}; use 'clip-image-embed' (default) or 'pre-projection'")


def _cached_pretrained(arch: str, tag: str) -> Path | None:
    """The pretrained file from the HF hub cache or open_clip's URL cache, if already on disk."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if cfg.get("file"):
        return Path(cfg["file"]) if Path(cfg["file"]).is_file() else None
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        names = [filename] if filename else []
        names += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for fn in names:
            hit = try_to_load_from_cache(repo_id=repo, filename=fn)
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
    url = cfg.get("url", "")
    if url:
        local = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if local.is_file():
            return local
    return None


def _published_file(name: str, arch: str, tag: str) -> Path:
    import open_clip

    if not tag or not open_clip.get_pretrained_cfg(arch, tag):
        raise UserError(f"open_clip has no pretrained tag {tag!r} for {arch!r}; known: "
                        f"{', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'}; or pass --weights PATH")
    local = _cached_pretrained(arch, tag)
    if local is not None:
        return local
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    what = f"open_clip weights {arch}:{tag} for {name!r}"
    if cfg.get("hf_hub"):
        from huggingface_hub import constants

        from probekit.backbones.timm_family import _hf_host

        where = f"the Hugging Face cache ({constants.HF_HUB_CACHE}) as repo {cfg['hf_hub'].rstrip('/')}"
        W.require_host(_hf_host(), what, where)
    else:
        where = "~/.cache/clip"
    path = W.fetch(lambda: open_clip.pretrained.download_pretrained(cfg), what, where)
    if not path:
        raise UserError(f"open_clip could not find weights {arch}:{tag}; pass --weights PATH")
    return Path(path)


def _load_checkpoint(model, path: Path, arch: str) -> None:
    """open_clip's own loader (format conversions, pos-embed resizing), strict, with a key diff on failure."""
    import open_clip
    from open_clip.factory import load_state_dict

    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read CLIP weights {str(path)!r} ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}); "
                        f"pass a state dict saved with torch.save(model.state_dict(), path)") from exc
    try:
        open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
    except (RuntimeError, KeyError, AttributeError, ValueError) as exc:
        missing, unexpected, shapes = W.state_dict_diff(model.state_dict(), state)
        detail = W.describe_mismatch(missing, unexpected, shapes) or str(exc).splitlines()[0][:160]
        raise UserError(f"weights {path} do not fit open_clip {arch!r} ({detail}); they look like weights for "
                        f"another architecture: pass the matching --model or another --weights file") from exc


def build_clip(name: str, weights, image_size: int | None):
    """The full open_clip model with weights loaded; returns (clip_model, arch, weight_id)."""
    import open_clip

    arch, tag = parse(name)
    kwargs = {"force_image_size": image_size} if image_size is not None else {}
    model = open_clip.create_model(arch, pretrained=None, **kwargs)
    if weights == W.NONE:
        wid = W.RANDOM_INIT_ID
    else:
        path = _published_file(name, arch, tag) if weights == W.DEFAULT else Path(weights)
        _load_checkpoint(model, path, arch)
        wid = W.weight_id(path)
    return model, arch, wid


def _transform(model):
    from probekit.backbones.transforms import EvalTransform

    cfg = model.visual.preprocess_cfg
    size = cfg["size"]
    size = int(size[-1] if isinstance(size, (list, tuple)) else size)
    if cfg.get("resize_mode", "shortest") != "shortest":
        raise UserError(f"open_clip resize mode {cfg.get('resize_mode')!r} is not supported; use a model with 'shortest'")
    return EvalTransform(size, size, str(cfg.get("interpolation", "bicubic")),
                         tuple(float(m) for m in cfg["mean"]), tuple(float(s) for s in cfg["std"]))


class ClipImageEncoder(torch.nn.Module):
    """CLIP's image tower: normalised `encode_image` output, or the token before the projection."""

    def __init__(self, visual, pre_projection: bool = False):
        super().__init__()
        self.visual = visual
        self.pre_projection = pre_projection

    def forward(self, x):
        v = self.visual
        if self.pre_projection:
            tokens = v.transformer(v._embeds(x))
            pooled, _ = v._pool(tokens)
            return pooled
        return F.normalize(v(x), dim=-1)


def create(name: str, weights, *, image_size: int | None = None, feature: str | None = None) -> Backbone:
    kind = _feature_kind(feature)
    clip_model, arch, wid = build_clip(name, weights, image_size)
    visual = clip_model.visual
    pre = kind == "clip-pre-projection"
    if pre:
        if not all(hasattr(visual, a) for a in ("_embeds", "_pool", "transformer", "proj")) or visual.proj is None:
            raise UserError(f"pre-projection features need an open_clip ViT with a projection; {arch!r} has none")
        dim = int(visual.proj.shape[0])
    else:
        dim = int(visual.output_dim)
    encoder = freeze(ClipImageEncoder(visual, pre_projection=pre))
    freeze(clip_model)
    transform = _transform(clip_model)
    return Backbone(
        name=name, family=FAMILY, model=encoder, transform=transform, feature_dim=dim,
        weight_id=wid, transform_id=transform.transform_id, feature_kind=kind,
        mean=transform.mean, std=transform.std, input_size=transform.crop,
        extra={"clip_model": clip_model, "tokenizer_name": arch, "open_clip_arch": arch},
    )


def create_classifier(name: str, num_classes: int, weights, *, image_size: int | None = None) -> Classifier:
    clip_model, arch, wid = build_clip(name, weights, image_size)
    head = torch.nn.Linear(int(clip_model.visual.output_dim), num_classes)
    model = torch.nn.Sequential(ClipImageEncoder(clip_model.visual), head)
    transform = _transform(clip_model)
    return Classifier(
        name=name, family=FAMILY, model=unfreeze(model), head_parameters=list(head.parameters()),
        num_classes=num_classes, mean=transform.mean, std=transform.std, input_size=transform.crop,
        weight_id=wid, transform=transform, transform_id=transform.transform_id,
    )
