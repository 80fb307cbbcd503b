"""Zero-shot CLIP heads: class names + prompt templates through the CLIP text tower.

The zero-shot classifier is the starting point of the paper's CLIP experiments: it is scored
like any other head (`evaluate_zero_shot`, `probekit zero-shot`) and it initialises SGD heads
and the L-BFGS sweep (`zero_shot_init`, `train-head --init zero-shot`).
"""

from probekit.zeroshot.classnames import (
    CIFAR10_CLASSNAMES,
    CIFAR10_TEMPLATES,
    ClassList,
    imagenet_classnames,
    imagenet_templates,
    load_classes,
)
from probekit.zeroshot.evaluate import ZeroShotResult, evaluate_zero_shot, write_zero_shot_run
from probekit.zeroshot.head import ZeroShotHead, check_clip_features, encode_classes, zero_shot_head
from probekit.zeroshot.init import ZeroShotStart, zero_shot_init, zero_shot_start
from probekit.zeroshot.run import run_zero_shot
from probekit.zeroshot.text_cache import TextEmbeddings, cached_text_embeddings, text_cache_key, text_cache_path

__all__ = [
    "CIFAR10_CLASSNAMES", "CIFAR10_TEMPLATES", "ClassList", "TextEmbeddings", "ZeroShotHead", "ZeroShotResult",
    "cached_text_embeddings", "check_clip_features", "encode_classes", "evaluate_zero_shot", "imagenet_classnames",
    "imagenet_templates", "load_classes", "run_zero_shot", "text_cache_key", "text_cache_path", "write_zero_shot_run",
    "zero_shot_head", "zero_shot_init", "zero_shot_start", "ZeroShotStart",
]
