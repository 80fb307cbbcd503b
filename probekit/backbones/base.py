"""What every backbone family returns: a frozen feature extractor or a trainable classifier."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FEATURE_KINDS = ("penultimate", "clip-image-embed", "clip-pre-projection")


@dataclass
class Backbone:
    """A frozen, eval-mode feature extractor with its own eval preprocessing and identity."""

    name: str
    family: str
    model: Any  # torch.nn.Module: forward(x [B,3,H,W]) -> [B, feature_dim]
    transform: Callable
    feature_dim: int
    weight_id: str
    transform_id: str
    feature_kind: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The JSON-safe facts that identify these features (for cache attributes and logs)."""
        return {
            "backbone": self.name,
            "family": self.family,
            "feature_dim": self.feature_dim,
            "weight_id": self.weight_id,
            "transform_id": self.transform_id,
            "feature_kind": self.feature_kind,
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": self.input_size,
        }


@dataclass
class Classifier:
    """A full trainable network with a fresh `num_classes` head, for full fine-tuning."""

    name: str
    family: str
    model: Any  # torch.nn.Module in train mode, all parameters trainable
    head_parameters: list
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    weight_id: str
    transform: Callable  # the eval transform of the same backbone
    transform_id: str


def freeze(model):
    """Eval mode, no gradients: features must not depend on batch statistics or dropout."""
    model.eval()
    model.requires_grad_(False)
    return model


def unfreeze(model):
    model.train()
    model.requires_grad_(True)
    return model
