"""`small_cnn`: a LeNet-sized network for baseline testbeds trained from scratch.

The ER baseline of a new task is the line through models trained *without* pretraining
(the paper's "models trained from scratch"). On small images a full ResNet is wasteful on a
CPU; this four-layer CNN trains in seconds and still spans a wide accuracy range when its
training length and data size vary. Random init only, unless a local state dict is given.
"""

from __future__ import annotations

from pathlib import Path

from probekit.backbones import weights as W
from probekit.backbones.base import Backbone, Classifier, freeze, unfreeze
from probekit.backbones.transforms import EvalTransform
from probekit.errors import UserError

NAME = "small_cnn"
FAMILY = "small_cnn"
MEAN = STD = (0.5, 0.5, 0.5)
FEATURE_DIM = 128
DEFAULT_SIZE = 28


def build_network(num_classes: int = 0):
    """conv(32)-pool-conv(64)-pool-conv(128)-global pool [-linear]; any input size >= 8."""
    from torch import nn

    def block(c_in: int, c_out: int) -> list:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

    layers = [*block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, FEATURE_DIM),
              nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    layers.append(nn.Linear(FEATURE_DIM, num_classes) if num_classes else nn.Identity())
    return nn.Sequential(*layers)


def _weights(model, weights, drop_head: bool) -> str:
    if weights == W.DEFAULT:
        raise UserError(f"{NAME} has no published weights; pass --weights none (random init) or --weights PATH")
    if weights == W.NONE:
        return W.RANDOM_INIT_ID
    path = Path(weights)
    W.strict_load(model, W.load_state_dict_file(path), source=str(path), arch=NAME,
                  drop_prefixes=(str(len(model) - 1),) if drop_head else ())
    return W.weight_id(path)


def _transform(image_size: int | None) -> EvalTransform:
    size = image_size or DEFAULT_SIZE
    return EvalTransform(size, size, "bilinear", MEAN, STD)


def create(name: str, weights, *, image_size: int | None = None, feature: str | None = None) -> Backbone:
    if feature not in (None, "penultimate"):
        raise UserError(f"feature {feature!r} is not available for {NAME}; only 'penultimate'")
    model = build_network()
    wid = _weights(model, weights, drop_head=True)
    transform = _transform(image_size)
    return Backbone(name=name, family=FAMILY, model=freeze(model), transform=transform, feature_dim=FEATURE_DIM,
                    weight_id=wid, transform_id=transform.transform_id, feature_kind="penultimate",
                    mean=MEAN, std=STD, input_size=transform.crop)


def create_classifier(name: str, num_classes: int, weights, *, image_size: int | None = None) -> Classifier:
    model = build_network(num_classes)
    wid = _weights(model, weights, drop_head=False)
    transform = _transform(image_size)
    return Classifier(name=name, family=FAMILY, model=unfreeze(model), head_parameters=list(model[-1].parameters()),
                      num_classes=num_classes, mean=MEAN, std=STD, input_size=transform.crop, weight_id=wid,
                      transform=transform, transform_id=transform.transform_id)
