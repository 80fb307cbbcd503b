"""Open one image file as RGB, or fail naming the file.

Every backbone transform expects RGB, so grayscale, CMYK, palette, 16-bit and
alpha images are converted here, once. Transparent images are composited on a
white background (what a viewer shows), not just stripped of alpha (which would
reveal whatever colour the invisible pixels happen to hold). Truncated files fail
even when some other code set PIL's LOAD_TRUNCATED_IMAGES: a half-grey image
would silently poison the features.
"""

from __future__ import annotations

import os
import threading

import numpy as np
from PIL import Image, ImageFile

from probekit.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")

_strict_lock = threading.Lock()


class BadImageError(UserError):
    """An image file that cannot be decoded (corrupt, truncated, not an image).

    `path` is the offending file, so `extract --skip-bad` can record and skip it.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}; replace or delete the file, or pass --skip-bad")

    def __reduce__(self):  # survives the trip back from a DataLoader worker process
        return (type(self), (self.path, self.reason))


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; alpha is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.int64)
        hi = 65535 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255
        img = Image.fromarray(np.clip(a * 255 // hi, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
        img = Image.fromarray(np.clip(a * scale, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode `path` fully and return an RGB image; BadImageError if it is corrupt or truncated."""
    try:
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            # Someone relaxed PIL globally; be strict for this decode only.
            with _strict_lock:
                ImageFile.LOAD_TRUNCATED_IMAGES = False
                try:
                    img = _decode(path)
                finally:
                    ImageFile.LOAD_TRUNCATED_IMAGES = True
        else:
            img = _decode(path)
    except FileNotFoundError as e:
        raise BadImageError(path, "file not found") from e
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise BadImageError(path, f"{type(e).__name__}: {e}") from e
    return img


def _decode(path: str | os.PathLike) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        rgb = to_rgb(img)
        if rgb is img:  # closing `img` must not touch what we return
            rgb = img.copy()
        rgb.load()
    return rgb
