"""Eval preprocessing shared by all backbones: RGB conversion, resize, center crop, normalise.

One small picklable class (DataLoader workers pickle it) whose `transform_id` states every
number that changes pixels, so the feature store can key entries on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from probekit.datasets.images import to_rgb  # the one conversion of any PIL mode to RGB

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


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


CROP_MODES = ("center", "squash", "border")


@dataclass(frozen=True)
class EvalTransform:
    """PIL image (any mode) -> normalised float tensor [3, crop, crop].

    `crop_mode` follows timm's eval transform (`timm.data.transforms_imagenet_eval`):
    "center" resizes the short side to `resize` and centre-crops; "squash" resizes both sides
    to `resize` (aspect ratio not kept), then centre-crops; "border" resizes the long side to
    `resize` and pads with the mean colour to the crop (nothing of the image is lost).
    """

    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_mode: str = "center"

    def __post_init__(self):
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")

    @property
    def transform_id(self) -> str:
        mean = ",".join(f"{m:.6g}" for m in self.mean)
        std = ",".join(f"{s:.6g}" for s in self.std)
        mode = "" if self.crop_mode == "center" else f"|crop_mode={self.crop_mode}"  # center: the ids of existing entries
        return f"rgb|resize={self.resize}:{self.interpolation}|center_crop={self.crop}{mode}|mean={mean}|std={std}"

    def __call__(self, image):
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        image = to_rgb(image)
        interpolation = InterpolationMode(self.interpolation)
        if self.crop_mode == "squash":
            image = F.resize(image, [self.resize, self.resize], interpolation=interpolation)
        elif self.crop_mode == "border":
            width, height = image.size
            ratio = max(height / self.resize, width / self.resize)
            image = F.resize(image, [round(height / ratio), round(width / ratio)], interpolation=interpolation)
            image = _pad_to(image, self.crop, fill=tuple(round(255 * m) for m in self.mean))
        else:
            image = F.resize(image, self.resize, interpolation=interpolation)
        image = F.center_crop(image, [self.crop, self.crop])
        tensor = F.pil_to_tensor(image).to(torch.float32).div_(255.0)
        return F.normalize(tensor, self.mean, self.std)


def _pad_to(image, size: int, fill: tuple[int, ...]):
    """Pad a PIL image evenly (extra pixel right / bottom) to at least size x size with `fill`, like timm."""
    from torchvision.transforms import functional as F

    width, height = image.size
    if width >= size and height >= size:
        return image
    pad_w, pad_h = max(size - width, 0), max(size - height, 0)
    return F.pad(image, [pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2], fill=fill)
