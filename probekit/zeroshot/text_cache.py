"""Zero-shot text embeddings kept on disk next to the image features.

Encoding ImageNet's 1000 names × 80 templates through the CLIP text tower takes minutes on a
CPU, and the result depends only on (model, weights, names, templates), so it is computed
once and stored as ``<cache>/text/<model>__<key12>.npz``, written atomically. The full key
(sha256 over those four things) is stored inside the file and checked on every read, so a
file is used only for exactly the inputs it was built from. Random-init weights are never
cached: two random initialisations are different models under the same weight id.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probekit.atomic import atomic_write_bytes
from probekit.paths import cache_dir as resolve_cache_dir

TEXT_SUBDIR = "text"
FORMAT_VERSION = 1
UNCACHEABLE_WEIGHT_IDS = ("random-init",)  # prefixes: a seeded random init may change with the torch release


@dataclass
class TextEmbeddings:
    """Normalised class text embeddings ``weights [D, C]`` and CLIP's (exponentiated) logit scale."""

    weights: np.ndarray        # [D, C] float32, unit-norm columns
    logit_scale: float         # exp(model.logit_scale), 100 for OpenAI CLIP
    model: str
    weight_id: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    key: str


def text_cache_key(model: str, weight_id: str, classnames: Sequence[str], templates: Sequence[str]) -> str:
    """sha256 over everything the embeddings depend on, in a canonical JSON form."""
    blob = json.dumps(
        {"version": FORMAT_VERSION, "model": model, "weight_id": weight_id,
         "classnames": list(classnames), "templates": list(templates)},
        ensure_ascii=False, separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def text_cache_path(model: str, key: str, cache_dir: str | os.PathLike | None = None) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model)
    return resolve_cache_dir(cache_dir) / TEXT_SUBDIR / f"{safe}__{key[:12]}.npz"


def save_text_embeddings(path: str | os.PathLike, emb: TextEmbeddings) -> None:
    meta = {"version": FORMAT_VERSION, "key": emb.key, "model": emb.model, "weight_id": emb.weight_id,
            "classnames": list(emb.classnames), "templates": list(emb.templates), "logit_scale": float(emb.logit_scale)}
    buf = io.BytesIO()
    np.savez(buf, weights=np.ascontiguousarray(emb.weights, dtype=np.float32),
             meta=np.frombuffer(json.dumps(meta, ensure_ascii=False).encode("utf-8"), dtype=np.uint8))
    atomic_write_bytes(path, buf.getvalue())


def load_text_embeddings(path: str | os.PathLike, key: str) -> TextEmbeddings | None:
    """The stored embeddings if `path` holds a readable file built for `key`, else None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode("utf-8"))
            weights = np.asarray(z["weights"], dtype=np.float32)
    except (OSError, ValueError, KeyError, json.JSONDecodeError, UnicodeDecodeError, EOFError):
        return None  # damaged: the caller recomputes and overwrites it
    if meta.get("key") != key or weights.ndim != 2 or weights.shape[1] != len(meta.get("classnames", ())):
        return None
    if not np.all(np.isfinite(weights)):
        return None
    return TextEmbeddings(weights, float(meta["logit_scale"]), meta["model"], meta["weight_id"],
                          tuple(meta["classnames"]), tuple(meta["templates"]), key)


def cached_text_embeddings(
    model: str,
    weight_id: str,
    classnames: Sequence[str],
    templates: Sequence[str],
    compute: Callable[[], tuple[np.ndarray, float]],
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> tuple[TextEmbeddings, bool]:
    """Embeddings for these inputs from the cache, else from ``compute() -> (W [D, C], logit_scale)``.

    Returns ``(embeddings, hit)``; `hit` says whether the cache answered.
    """
    key = text_cache_key(model, weight_id, classnames, templates)
    cacheable = use_cache and not str(weight_id).startswith(UNCACHEABLE_WEIGHT_IDS)
    path = text_cache_path(model, key, cache_dir)
    if cacheable:
        found = load_text_embeddings(path, key)
        if found is not None:
            return found, True
    weights, logit_scale = compute()
    emb = TextEmbeddings(np.asarray(weights, dtype=np.float32), float(logit_scale), model, weight_id,
                         tuple(classnames), tuple(templates), key)
    if cacheable:
        save_text_embeddings(path, emb)
    return emb, False
