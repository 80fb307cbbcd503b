"""Shared by the zero-shot tests: a tiny random-init open_clip model saved to a file, and embeddings near its classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ARCH = "pk-test-tiny-clip"
MODEL = f"open_clip:{ARCH}"
TINY = {"embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def save_tiny_clip(root: Path):
    """Register the tiny architecture, draw it with seed 0 and save its state dict: (weights path, the model itself)."""
    import open_clip
    import torch

    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "configs" / f"{ARCH}.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(root / "configs")
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH, pretrained=None).eval()
    path = root / "tiny-clip.pt"
    torch.save(model.state_dict(), path)
    return path, model


def matching_features(W: np.ndarray, per_class: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm image embeddings near each class's text embedding (columns of W [D, C]).

    A random-init text tower puts the class embeddings close together (cosine ~0.97), so
    `noise` is per coordinate and small next to the ~0.25 distance between classes.
    """
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(W.shape[1]), per_class)
    X = W.T[y] + noise * rng.standard_normal((len(y), W.shape[0]))
    return X / np.linalg.norm(X, axis=1, keepdims=True), y
