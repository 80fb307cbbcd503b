"""torchvision classifiers as feature extractors: the input of the final Linear layer.

AlexNet/VGG keep `classifier[:-1]` (4096-d), ResNets keep everything before `fc`; any other
torchvision classifier loses its last `nn.Linear`. Published weights come from the torch hub
cache (`<torch.hub.get_dir()>/checkpoints/<file>`) and are downloaded only when missing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

from probekit.backbones import weights as W
from probekit.backbones.base import Backbone, Classifier, freeze, unfreeze
from probekit.backbones.transforms import EvalTransform, scaled_sizes
from probekit.errors import UserError

FAMILY = "torchvision"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Known feature sizes, so callers can plan without building big models.
FEATURE_DIMS = {"alexnet": 4096, "vgg11_bn": 4096, "resnet18": 512, "resnet50": 2048, "resnet152": 2048, "wide_resnet50_2": 2048}


def names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _default_weights_enum(name: str):
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return None
    return getattr(enum, "DEFAULT", None) or next(iter(enum), None)


def hub_checkpoint_path(url: str) -> Path:
    """Where torch.hub keeps a downloaded checkpoint for `url`."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _published_file(name: str, published) -> Path:
    """The local file of torchvision's published weights, downloading it only when missing."""
    import torch

    dest = hub_checkpoint_path(published.url)
    if not dest.is_file():
        def download():
            dest.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(published.url, str(dest), progress=True)

        W.fetch(download, f"torchvision weights {published} for {name!r} from {published.url}", str(dest))
    return dest


def last_linear_name(model) -> str:
    """Dotted name of the final classification Linear (the last nn.Linear registered)."""
    import torch.nn as nn

    found = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise UserError(f"{type(model).__name__} has no final nn.Linear layer to take penultimate features from; pick another --model")
    return found[-1]


def _preprocessing(name: str, published, image_size: int | None) -> tuple[int, int, str, tuple, tuple]:
    resize, crop, interp, mean, std = 256, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD
    if published is not None:
        t = published.transforms()
        crop = int(_first(getattr(t, "crop_size", crop)))
        resize = int(_first(getattr(t, "resize_size", resize)))
        interp = getattr(getattr(t, "interpolation", None), "value", interp)
        mean = tuple(float(m) for m in getattr(t, "mean", mean))
        std = tuple(float(s) for s in getattr(t, "std", std))
    resize, crop = scaled_sizes(resize, crop, image_size)
    return resize, crop, interp, mean, std


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) else value


def _build(name: str, weights, image_size: int | None):
    """Full classifier with weights loaded; returns (model, head_name, feature_dim, weight_id, transform)."""
    import torchvision

    published = _default_weights_enum(name)
    kwargs = {}
    if image_size is not None and name.startswith(("vit_", "swin_", "maxvit")):
        kwargs["image_size"] = image_size
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    head = last_linear_name(model)
    dim = int(model.get_submodule(head).in_features)
    if weights == W.DEFAULT:
        if published is None:
            raise UserError(f"torchvision has no published weights for {name!r}; pass --weights PATH or --weights none")
        path = _published_file(name, published)
        try:
            state = W.load_state_dict_file(path)
        except UserError as exc:
            raise UserError(f"the cached torchvision weights {path} are unreadable (interrupted download?); "
                            f"delete the file and run again") from exc
        W.strict_load(model, _legacy_keys(state), source=f"{path}", arch=name)
        wid = W.weight_id(path)
    elif weights == W.NONE:
        wid = W.RANDOM_INIT_ID
    else:
        state = _legacy_keys(W.load_state_dict_file(weights))
        headless = not any(k.startswith(head + ".") for k in state)
        if headless:  # a feature extractor's own state dict: the head is not needed for features
            _replace(model, head, _identity())
        W.strict_load(model, state, source=str(weights), arch=name)
        wid = W.weight_id(weights)
    resize, crop, interp, mean, std = _preprocessing(name, published, image_size)
    transform = EvalTransform(resize, crop, interp, mean, std)
    return model, head, dim, wid, transform


_DENSENET_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _legacy_keys(state: dict) -> dict:
    """torchvision's published DenseNet files still use 'norm.1'-style keys; rename as torchvision does."""
    out = {}
    for key, value in state.items():
        m = _DENSENET_LEGACY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def _identity():
    import torch.nn as nn

    return nn.Identity()


def _replace(model, dotted: str, module) -> None:
    model.set_submodule(dotted, module)


def create(name: str, weights, *, image_size: int | None = None, feature: str | None = None) -> Backbone:
    if feature not in (None, "penultimate"):
        raise UserError(f"feature {feature!r} is not available for torchvision model {name!r}; only 'penultimate'")
    model, head, dim, wid, transform = _build(name, weights, image_size)
    _replace(model, head, _identity())
    return Backbone(
        name=name, family=FAMILY, model=freeze(model), transform=transform, feature_dim=int(dim),
        weight_id=wid, transform_id=transform.transform_id, feature_kind="penultimate",
        mean=transform.mean, std=transform.std, input_size=transform.crop,
        extra={"head_module": head},
    )


def create_classifier(name: str, num_classes: int, weights, *, image_size: int | None = None) -> Classifier:
    import torch.nn as nn

    model, head, dim, wid, transform = _build(name, weights, image_size)
    new_head = nn.Linear(dim, num_classes)
    _replace(model, head, new_head)
    return Classifier(
        name=name, family=FAMILY, model=unfreeze(model), head_parameters=list(new_head.parameters()),
        num_classes=num_classes, mean=transform.mean, std=transform.std, input_size=transform.crop,
        weight_id=wid, transform=transform, transform_id=transform.transform_id,
    )
