"""Full fine-tuning mode: train whole networks and log the same per-iteration record as train-head.

See `loop.finetune` (the API behind `probekit finetune`), `recipes` (the paper's presets),
`data` (seeded, resumable data order and augmentation) and `ddp` (torchrun support).
"""

from probekit.finetune.loop import FinetuneConfig, Stopped, finetune
from probekit.finetune.recipes import RECIPES, Recipe, get_recipe, lr_at

__all__ = ["FinetuneConfig", "RECIPES", "Recipe", "Stopped", "finetune", "get_recipe", "lr_at"]
