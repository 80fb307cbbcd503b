"""Eval preprocessing shared by all backbones: RGB conversion, resize, center crop, normalise.

One small picklable class (DataLoader workers pickle it) whose `transform_id` states every
number that changes pixels, so the feature store can key entries on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


def to_rgb(image):
    """Any PIL mode (L, P, LA, RGBA, CMYK, I;16 ...) to RGB; transparency composited on white."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        import numpy as np

        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    return image.convert("RGB")


def scaled_sizes(resize: int, crop: int, image_size: int | None) -> tuple[int, int]:
    """Keep the resize/crop ratio of the recipe when the crop is changed to `image_size`."""
    if image_size is None or image_size == crop:
        return resize, crop
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
    return max(image_size, round(image_size * resize / crop)), image_size


def resize_for_crop_pct(crop: int, crop_pct: float) -> int:
    """timm's eval rule: resize the short side to floor(crop / crop_pct)."""
    return int(math.floor(crop / crop_pct))


@dataclass(frozen=True)
class EvalTransform:
    """PIL image (any mode) -> normalised float tensor [3, crop, crop]."""

    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self):
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}")

    @property
    def transform_id(self) -> str:
        mean = ",".join(f"{m:.6g}" for m in self.mean)
        std = ",".join(f"{s:.6g}" for s in self.std)
        return f"rgb|resize={self.resize}:{self.interpolation}|center_crop={self.crop}|mean={mean}|std={std}"

    def __call__(self, image):
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        image = to_rgb(image)
        image = F.resize(image, self.resize, interpolation=InterpolationMode(self.interpolation))
        image = F.center_crop(image, [self.crop, self.crop])
        tensor = F.pil_to_tensor(image).to(torch.float32).div_(255.0)
        return F.normalize(tensor, self.mean, self.std)
