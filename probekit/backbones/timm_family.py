"""timm models (BiT and any other timm name) as pooled penultimate-feature extractors.

`num_classes=0` gives the pooled features; preprocessing comes from the model's pretrained
config (BiT: mean = std = 0.5), never hard-coded. Published weights are read from the Hugging
Face cache and downloaded only when missing. Google's original BiT `.npz` checkpoints load
through timm's own npz loader after a strict key/shape check done here.
"""

from __future__ import annotations

from pathlib import Path

from probekit.backbones import weights as W
from probekit.backbones.base import Backbone, Classifier, freeze, unfreeze
from probekit.backbones.transforms import EvalTransform, resize_for_crop_pct, scaled_sizes
from probekit.errors import UserError

FAMILY = "timm"
NPZ_FAMILY = "bit-npz"
BIT_SIZES = ("50x1", "50x3", "101x1", "101x3", "152x2", "152x4")
# Google's original checkpoint names -> timm architectures (BiT-M also has published timm weights).
BIT_ALIASES = {f"bit-m-r{s}": f"resnetv2_{s}_bit.goog_in21k" for s in BIT_SIZES}
BIT_ALIASES.update({f"bit-s-r{s}": f"resnetv2_{s}_bit" for s in BIT_SIZES})
BIT_NPZ_URL = "https://storage.googleapis.com/bit_models/{}.npz"


def bit_names() -> list[str]:
    import timm

    return sorted(timm.list_models("resnetv2_*bit*", pretrained=True))


def is_timm_name(name: str) -> bool:
    import timm

    base = name.split(".", 1)[0]
    if not timm.is_model(base):
        return False
    return "." not in name or name in set(timm.list_models(base, pretrained=True)) or _tag_known(name)


def _tag_known(name: str) -> bool:
    import timm

    try:
        timm.models.get_pretrained_cfg(name, allow_unregistered=False)
        return True
    except Exception:
        return False


def _head_prefixes(model) -> tuple[str, ...]:
    cls = model.pretrained_cfg.get("classifier", "head") if hasattr(model, "pretrained_cfg") else "head"
    return tuple(cls) if isinstance(cls, (list, tuple)) else (cls,)


def _data_config(model, image_size: int | None) -> EvalTransform:
    import timm.data

    cfg = timm.data.resolve_model_data_config(model)
    crop = int(cfg["input_size"][-1])
    resize = resize_for_crop_pct(crop, float(cfg.get("crop_pct", 0.875)))
    resize, crop = scaled_sizes(resize, crop, image_size)
    return EvalTransform(
        resize, crop, str(cfg.get("interpolation", "bilinear")),
        tuple(float(m) for m in cfg["mean"]), tuple(float(s) for s in cfg["std"]),
        crop_mode=str(cfg.get("crop_mode") or "center"),
    )


def _published_file(name: str, model) -> Path:
    """The pretrained file of a timm model from the local HF / torch cache, downloading only when missing."""
    cfg = model.pretrained_cfg
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

        candidates = ["model.safetensors", "pytorch_model.bin"]
        if cfg.get("hf_hub_filename"):
            candidates.insert(0, cfg["hf_hub_filename"])
        for filename in candidates:
            hit = try_to_load_from_cache(repo_id=hub_id, filename=filename)
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
        where = f"the Hugging Face cache ({constants.HF_HUB_CACHE}) as repo {hub_id}"
        W.require_host(_hf_host(), f"timm weights for {name!r} from the Hugging Face hub", where)
        return Path(W.fetch(lambda: hf_hub_download(repo_id=hub_id, filename=candidates[0]),
                            f"timm weights for {name!r} from the Hugging Face hub", where))
    url = cfg.get("url")
    if url:
        from probekit.backbones.torchvision_family import hub_checkpoint_path

        dest = hub_checkpoint_path(url)
        if not dest.is_file():
            import torch

            def download():
                dest.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(url, str(dest), progress=True)

            W.fetch(download, f"timm weights for {name!r} from {url}", str(dest))
        return dest
    hint = ""
    if name.lower().startswith("resnetv2_") and "_bit" in name:
        hint = " (Google's BiT-S checkpoints are not in timm: download e.g. BiT-S-R50x1.npz from storage.googleapis.com/bit_models/)"
    raise UserError(f"timm has no published weights for {name!r}{hint}; pass --weights PATH or --weights none")


def _hf_host() -> str:
    from urllib.parse import urlparse

    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).hostname or "huggingface.co"


def resolve_alias(name: str) -> str:
    return BIT_ALIASES.get(name.lower(), name)


def _build(name: str, weights, image_size: int | None):
    """Headless model with weights loaded; returns (model, family, weight_id, transform)."""
    import timm

    arch = resolve_alias(name)
    kwargs = {"img_size": image_size} if image_size is not None else {}
    try:  # ViT-like models need the size at construction; some CNNs refuse the argument
        model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    except TypeError:
        kwargs = {}
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    family = FAMILY
    if weights == W.DEFAULT and name.lower().startswith("bit-s-"):
        google = "BiT-S-R" + name.lower()[len("bit-s-r"):]
        raise UserError(f"Google's {google} weights are not published through timm; download "
                        f"{BIT_NPZ_URL.format(google)} and pass --weights /path/{google}.npz")
    if weights == W.DEFAULT:
        path = _published_file(name, model)
        try:
            model = timm.create_model(arch, pretrained=True, num_classes=0,
                                      pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        except (KeyboardInterrupt, UserError):
            raise
        except Exception as exc:  # truncated download, SafetensorError, key mismatch ...
            first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise UserError(f"timm could not load {path} into {arch!r} ({first}); delete the file and run again") from exc
        wid = W.weight_id(path)
    elif weights == W.NONE:
        wid = W.RANDOM_INIT_ID
    elif Path(weights).suffix == ".npz":
        load_bit_npz(model, weights, arch=arch)
        family = NPZ_FAMILY
        wid = W.weight_id(weights)
    else:
        W.strict_load(model, W.load_state_dict_file(weights), source=str(weights), arch=arch,
                      drop_prefixes=_head_prefixes(model))
        wid = W.weight_id(weights)
    return model, family, wid, _data_config(model, image_size)


def bit_npz_keys(model, prefix: str = "resnet/") -> dict[str, tuple]:
    """npz key -> expected numpy shape, exactly the keys timm's resnetv2 npz loader reads."""
    import torch.nn as nn

    def conv(w):  # OIHW -> HWIO
        o, i, h, k = w.shape
        return (h, k, i, o)

    keys = {f"{prefix}root_block/standardized_conv2d/kernel": conv(model.stem.conv.weight),
            f"{prefix}group_norm/gamma": tuple(model.norm.weight.shape),
            f"{prefix}group_norm/beta": tuple(model.norm.bias.shape)}
    if isinstance(getattr(model.head, "fc", None), nn.Conv2d):
        keys[f"{prefix}head/conv2d/kernel"] = conv(model.head.fc.weight)
        keys[f"{prefix}head/conv2d/bias"] = tuple(model.head.fc.bias.shape)
    for i, (_, stage) in enumerate(model.stages.named_children()):
        for j, (_, block) in enumerate(stage.blocks.named_children()):
            bp = f"{prefix}block{i + 1}/unit{j + 1:02d}/"
            for letter, n in (("a", 1), ("b", 2), ("c", 3)):
                keys[f"{bp}{letter}/standardized_conv2d/kernel"] = conv(getattr(block, f"conv{n}").weight)
                keys[f"{bp}{letter}/group_norm/gamma"] = tuple(getattr(block, f"norm{n}").weight.shape)
                keys[f"{bp}{letter}/group_norm/beta"] = tuple(getattr(block, f"norm{n}").bias.shape)
            if block.downsample is not None:
                keys[f"{bp}a/proj/standardized_conv2d/kernel"] = conv(block.downsample.conv.weight)
    return keys


def load_bit_npz(model, path, *, arch: str, prefix: str = "resnet/") -> None:
    """Check an original BiT `.npz` against the model key by key, then load it with timm's loader."""
    import numpy as np

    if not hasattr(model, "stages") or not hasattr(model, "load_pretrained"):
        raise UserError(f"{Path(path).name} is a BiT .npz checkpoint but {arch!r} is not a timm ResNetV2; use e.g. --model resnetv2_50x1_bit")
    try:
        with np.load(path, allow_pickle=False) as npz:
            shapes = {k: tuple(npz[k].shape) for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"cannot read {str(path)!r} as an .npz archive ({exc}); is the download complete?") from exc
    expected = bit_npz_keys(model, prefix)
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected and not k.startswith(f"{prefix}head/")]
    bad = [f"{k}: {shapes[k]} in file vs {v} in model" for k, v in expected.items() if k in shapes and shapes[k] != v]
    if missing or unexpected or bad:
        raise UserError(
            f"BiT checkpoint {path} does not fit {arch!r} ({W.describe_mismatch(missing, unexpected, bad)}); "
            f"it looks like weights for another BiT size: pass the matching --model (e.g. resnetv2_101x1_bit for R101x1)"
        )
    model.load_pretrained(str(path), prefix=prefix)


def create(name: str, weights, *, image_size: int | None = None, feature: str | None = None) -> Backbone:
    if feature not in (None, "penultimate"):
        raise UserError(f"feature {feature!r} is not available for timm model {name!r}; only 'penultimate'")
    model, family, wid, transform = _build(name, weights, image_size)
    dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    return Backbone(
        name=name, family=family, model=freeze(model), transform=transform, feature_dim=dim,
        weight_id=wid, transform_id=transform.transform_id, feature_kind="penultimate",
        mean=transform.mean, std=transform.std, input_size=transform.crop,
        extra={"timm_arch": resolve_alias(name)},
    )


def create_classifier(name: str, num_classes: int, weights, *, image_size: int | None = None) -> Classifier:
    model, family, wid, transform = _build(name, weights, image_size)
    model.reset_classifier(num_classes)
    head = model.get_classifier()
    return Classifier(
        name=name, family=family, model=unfreeze(model), head_parameters=list(head.parameters()),
        num_classes=num_classes, mean=transform.mean, std=transform.std, input_size=transform.crop,
        weight_id=wid, transform=transform, transform_id=transform.transform_id,
    )
