"""Effective robustness: accuracy transforms, baseline fits, ER, shipped testbeds, class-subset shifts.

Nothing else in probekit computes ER: heads, fine-tuning and plots call
`effective_robustness` with a `Baseline` from `load_baseline` or `fit_baseline`.
"""

from probekit.robustness.baseline import Baseline, effective_robustness, fit_baseline
from probekit.robustness.testbeds import (
    build_cifar10_baseline,
    list_baselines,
    load_baseline,
    read_testbed_csv,
    load_testbed_points,
)
from probekit.robustness.transforms import AccuracyClippedWarning, clip_accuracy, inverse_transform, transform

__all__ = [
    "AccuracyClippedWarning", "Baseline", "build_cifar10_baseline", "clip_accuracy", "effective_robustness",
    "fit_baseline", "inverse_transform", "list_baselines", "load_baseline", "read_testbed_csv", "load_testbed_points", "transform",
]
