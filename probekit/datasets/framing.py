"""Bring handwritten digits from different sources to one framing.

UCI optdigits (sklearn `load_digits`) fill their 8x8 frame; MNIST digits sit in a
20-px box inside 28x28. Left alone, the ID -> OOD shift would be mostly about
framing, not about writers and scanning. Both are therefore put through the
same steps: crop to the ink's bounding box, scale so the longer side is
`box` px (aspect ratio kept, bilinear), and paste into a `canvas` x `canvas`
black image with the bounding box centred (bounding-box centring, not centre
of mass: it is exact for both sources and never pushes ink off the canvas).
Ink is white on black, 0..255, like MNIST.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

CANVAS = 28
BOX = 20


def frame_digit(img: np.ndarray, *, canvas: int = CANVAS, box: int = BOX) -> np.ndarray:
    """One 2-D intensity image (ink > 0, any scale already in 0..255) -> uint8 [canvas, canvas]."""
    a = np.asarray(img, dtype=np.float64)
    out = np.zeros((canvas, canvas), dtype=np.uint8)
    rows = np.flatnonzero(a.max(axis=1) > 0)
    cols = np.flatnonzero(a.max(axis=0) > 0)
    if rows.size == 0:
        return out
    crop = a[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    h, w = crop.shape
    scale = box / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    pil = Image.fromarray(np.clip(crop, 0, 255).astype(np.float32), mode="F")
    resized = np.asarray(pil.resize((nw, nh), Image.BILINEAR), dtype=np.float64)
    top, left = (canvas - nh) // 2, (canvas - nw) // 2
    out[top: top + nh, left: left + nw] = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    return out


def frame_digits(images: np.ndarray, *, max_value: float, canvas: int = CANVAS, box: int = BOX) -> np.ndarray:
    """[N, H, W] images with ink in 0..max_value -> uint8 [N, canvas, canvas], ink 0..255."""
    scaled = np.asarray(images, dtype=np.float64) * (255.0 / max_value)
    return np.stack([frame_digit(x, canvas=canvas, box=box) for x in scaled]) if len(scaled) else \
        np.zeros((0, canvas, canvas), np.uint8)


def ink_bbox(img: np.ndarray, threshold: int = 0) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) inclusive of the pixels above `threshold`; None if blank."""
    a = np.asarray(img)
    rows = np.flatnonzero(a.max(axis=1) > threshold)
    cols = np.flatnonzero(a.max(axis=0) > threshold)
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])
