"""What `probekit models` lists: backbone names with feature dimension and eval preprocessing, built on torch's
meta device (no weights, no memory, no download), so a user can choose before fetching anything."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass

from probekit.errors import UserError


@dataclass
class ModelInfo:
    name: str
    family: str
    feature_dim: int | None
    input_size: int | None    # the eval crop
    resize: int | None        # the eval resize before the crop
    crop_mode: str | None
    interpolation: str | None

    def to_json(self) -> dict:
        return asdict(self)


def list_models(pattern: str | None = None, *, pretrained: bool = False) -> list[str]:
    """Names `create_backbone` accepts that match `pattern` (shell-style, case-insensitive).

    Without a pattern: probekit's own list (the paper's models, BiT, CLIP, the bundled default,
    every torchvision classifier). With one: also every timm name (`--pretrained`: with a
    published tag, e.g. `convnext_tiny.fb_in1k`) and every open_clip architecture."""
    from probekit.backbones.registry import list_backbones

    names = list(list_backbones())
    if pattern:
        import open_clip
        import timm

        names += timm.list_pretrained() if pretrained else timm.list_models()
        names += [f"open_clip:{a}" for a in open_clip.list_models()]
        pat = pattern.lower() if any(c in pattern for c in "*?[") else f"*{pattern.lower()}*"
        names = [n for n in names if fnmatch.fnmatchcase(n.lower(), pat)]
    return list(dict.fromkeys(names))


def describe(name: str) -> ModelInfo:
    """Feature dimension and eval preprocessing of `name`, from a meta-device build (no weights read)."""
    import torch

    from probekit.backbones.registry import create_backbone, resolve

    family, inner = resolve(name)
    if family == "open_clip":  # open_clip copies buffers at build time, which meta tensors cannot do: its config says it
        import open_clip

        from probekit.backbones.clip_family import parse

        arch, _ = parse(name if name.lower().startswith(("clip-", "open_clip:")) else f"open_clip:{inner}")
        cfg = open_clip.get_model_config(arch) or {}
        size = cfg.get("vision_cfg", {}).get("image_size")
        size = size[-1] if isinstance(size, (list, tuple)) else size
        return ModelInfo(name, family, cfg.get("embed_dim"), size, size, "center", "bicubic")
    try:
        with torch.device("meta"):
            bb = create_backbone(name, "none")
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a listed name the meta device cannot build: show it without details
        return ModelInfo(name, family, None, None, None, None, f"({type(e).__name__})")
    t = bb.transform
    return ModelInfo(name, bb.family, bb.feature_dim, t.crop, t.resize, getattr(t, "crop_mode", "center"), t.interpolation)
