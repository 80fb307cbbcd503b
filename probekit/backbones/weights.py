"""Weight files: where they come from, what they are (sha256), and loading them strictly.

Every backbone records which exact weights produced its features, so feature-store entries
from different files never mix; loading is strict so a file for another architecture fails
loudly, naming the keys that differ, instead of silently giving random features.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.error import URLError

from probekit.errors import UserError

DEFAULT = "default"
NONE = "none"
RANDOM_INIT_ID = "random-init"
RANDOM_INIT_SEED = 0  # frozen random-init backbones (extract) are drawn from this seed
RANDOM_INIT_BACKBONE_ID = f"{RANDOM_INIT_ID}:seed={RANDOM_INIT_SEED}"
_NONE_ALIASES = {"none", "random", "random-init", "scratch"}
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")

_hash_cache: dict[tuple[str, int, int], str] = {}


def parse_weights(weights: str | os.PathLike | None) -> str | Path:
    """Normalise the `weights` argument to "default", "none" or an existing local `Path`."""
    if weights is None:
        return DEFAULT
    if isinstance(weights, str) and weights.strip().lower() in (DEFAULT, "pretrained"):
        return DEFAULT
    if isinstance(weights, str) and weights.strip().lower() in _NONE_ALIASES:
        return NONE
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(
            f"weights file {str(path)!r} not found; pass an existing file, 'default' (published "
            f"pretrained weights) or 'none' (random init)"
        )
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, cached per (path, mtime, size) so repeated calls are instant."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    cached = _hash_cache.get(key)
    if cached is None:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        cached = _hash_cache[key] = digest.hexdigest()
    return cached


def weight_id(path: str | os.PathLike) -> str:
    """The weight identity recorded with features: "sha256:<hex>" of the file."""
    return f"sha256:{sha256_file(path)}"


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a state dict from `.pth/.pt/.bin/.ckpt` (torch.load, weights_only) or `.safetensors`.

    Common wrappers ({"state_dict": ...}, {"model": ...}, DataParallel's "module." prefix) are
    unwrapped; anything that is not a mapping of tensors is a `UserError`.
    """
    path = Path(path)
    if path.suffix == ".npz":
        raise UserError(f"{path.name} is a NumPy .npz checkpoint (Google BiT layout); it loads only into a BiT "
                        f"model, e.g. --model resnetv2_50x1_bit (R50x1) or bit-m-r101x1")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - safetensors ships with timm
            raise UserError(f"reading {path.name} needs the 'safetensors' package; pip install safetensors") from exc
        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:
            raise UserError(f"cannot read safetensors weights {str(path)!r} ({exc}); is the file complete?") from exc
    else:
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged or foreign file makes the unpickler fail in any way (KeyError, IndexError ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"cannot load weights {str(path)!r} as a plain state dict with weights_only=True "
                f"({first[:160]}); save it with torch.save(model.state_dict(), path)"
            ) from exc
    return unwrap_state_dict(state, source=str(path))


def unwrap_state_dict(state: Any, source: str = "weights") -> dict[str, Any]:
    """Peel common checkpoint wrappers off a loaded object and check it is a tensor mapping."""
    import torch

    for _ in range(3):
        if isinstance(state, Mapping) and not _is_tensor_mapping(state):
            inner = next((state[k] for k in _WRAPPER_KEYS if k in state and isinstance(state[k], Mapping)), None)
            if inner is None:
                break
            state = inner
    if isinstance(state, torch.jit.ScriptModule):
        state = state.state_dict()
    if not isinstance(state, Mapping) or not _is_tensor_mapping(state):
        raise UserError(f"{source} does not hold a state dict of tensors; save it with torch.save(model.state_dict(), path)")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _is_tensor_mapping(obj: Mapping) -> bool:
    import torch

    return len(obj) > 0 and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def state_dict_diff(expected: Mapping[str, Any], given: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys, and "key: file shape vs model shape" for shape mismatches."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k}: {tuple(given[k].shape)} in file vs {tuple(expected[k].shape)} in model"
        for k in expected
        if k in given and hasattr(given[k], "shape") and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    return missing, unexpected, shapes


def describe_mismatch(missing: list[str], unexpected: list[str], shapes: list[str], limit: int = 3) -> str:
    """One line naming a few of the differing keys of each kind."""

    def few(items: list[str]) -> str:
        more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
        return ", ".join(items[:limit]) + more

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches: {few(shapes)}")
    return "; ".join(parts)


def strict_load(
    model: Any,
    state_dict: Mapping[str, Any],
    *,
    source: str,
    arch: str,
    drop_prefixes: Iterable[str] = (),
) -> None:
    """Load `state_dict` into `model` strictly, after dropping keys under `drop_prefixes`.

    `drop_prefixes` names the classification head the feature extractor does not have, so a
    full classifier's state dict loads into the headless model. Any other difference is a
    `UserError` that names the keys and says the file looks like another architecture.
    """
    drops = tuple(p if p.endswith(".") else p + "." for p in drop_prefixes)
    given = {k: v for k, v in state_dict.items() if not (drops and k.startswith(drops))}
    expected = model.state_dict()
    missing, unexpected, shapes = state_dict_diff(expected, given)
    if missing or unexpected or shapes:
        raise UserError(
            f"weights {source} do not fit {arch!r} ({describe_mismatch(missing, unexpected, shapes)}); "
            f"they look like weights for another architecture: pass the matching --model or another --weights file"
        )
    model.load_state_dict(given, strict=True)


def fetch(download: Callable[[], Any], what: str, where: str) -> Any:
    """Run a download; network failures become a `UserError` saying where to put the file instead."""
    try:
        return download()
    except UserError:
        raise
    except (URLError, OSError, ConnectionError, TimeoutError) as exc:
        raise _offline(what, where, exc) from exc
    except Exception as exc:  # huggingface_hub raises its own errors (LocalEntryNotFoundError, HfHubHTTPError ...)
        if type(exc).__module__.startswith(("huggingface_hub", "requests", "urllib3", "httpx")):
            raise _offline(what, where, exc) from exc
        raise


def require_host(host: str, what: str, where: str, *, timeout: float = 5.0) -> None:
    """Fail fast, before a library's retry loop, when `host` cannot be reached (or HF_HUB_OFFLINE is set)."""
    import socket

    if host.endswith("huggingface.co") and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise _offline(what, where, RuntimeError("HF_HUB_OFFLINE is set"))
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as exc:
        raise _offline(what, where, exc) from exc


def _offline(what: str, where: str, exc: BaseException) -> UserError:
    reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
    return UserError(
        f"cannot download {what} (offline? {reason}); put the file at {where} or pass --weights PATH to a local file"
    )
