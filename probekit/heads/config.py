"""`TrainHeadConfig`: everything one `train-head` run needs, as data (mirrors `FinetuneConfig`).

The CLI, the demo, `probekit ablate` and notebooks fill one in and hand it to
`probekit.heads.run.train_head`; ``dataclasses.replace(cfg, solver="lbfgs")`` is the
notebook way to vary one thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainHeadConfig:
    """One stage-2 run: feature sets, solver and its hyper-parameters, outputs.

    Feature sets (`train`, `id_set`, `ood`, `val`) are ``dataset:split`` names (found in the
    feature store for `model`), ``.h5`` paths, or `probekit.cache.FeatureSet` objects. `val`
    may also be ``TRAIN%F`` or a bare fraction F (a stratified held-out share of train, the
    same as `val_fraction`). `baselines`: ``--baseline`` values, each a named baseline or fit
    file (applied to the OOD sets it was fitted for) or ``OOD_SET=NAME_OR_FILE``.
    """

    train: Any
    id_set: Any
    ood: list[Any] = field(default_factory=list)
    val: Any = None
    model: str | None = None
    weights: str = "default"
    image_size: int | None = None
    feature: str | None = None
    cache_dir: str | None = None
    solver: str = "sgd"                       # "sgd" (batched SGD heads) | "lbfgs" (L2 sweep)
    baselines: list[Any] = field(default_factory=list)
    subset: str | None = None                 # "per-class=N" | "classes=K" | "cscore=KIND:N"
    subset_seed: int = 0
    cscores: str | None = None
    out: str | None = None
    overwrite: bool = False
    save_predictions: bool = False
    device: str | None = None
    storage_dtype: str = "float32"            # "float16" halves feature memory; compute stays float32
    eval_every: int = 1                       # steps / L-BFGS iterations; 0 = only start and end
    progress: bool = True
    # sgd
    lrs: list[float] = field(default_factory=lambda: [0.001])
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int = 32768
    epochs: float = 100
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"                # see probekit.heads.sgd.SCHEDULES
    head_init: str = "uniform"
    # lbfgs
    l2_grid: list[float] | None = None        # default: probekit.heads.lbfgs.DEFAULT_L2_GRID
    val_fraction: float | None = None
    val_seed: int = 0
    refit: bool = False
    max_iter: int = 1000
    tol: float = 1e-4                          # scikit-learn's tol (and the CLIP recipe's)
    select_tol: float | None = 1e-4          # looser tol for the sweep; the chosen λ is then solved to `tol`
    warm_start: bool = True
    lbfgs_dtype: str = "auto"                # "auto" | "float64" | "float32"
    # inputs and run folder
    allow_mixed_features: bool = False       # accept feature sets of different extractions (recorded in config.json)
    resume: bool = False                     # continue a stopped or killed SGD run in `out` from its checkpoint
