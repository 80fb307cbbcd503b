"""Options shared by several subcommands, defined once."""

from __future__ import annotations

import argparse


def add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", default=None, help="feature-store folder (default: $PROBEKIT_CACHE or ./cache)")


def add_data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", default=None, help="folder holding on-disk datasets (default: $PROBEKIT_DATA or ./data)")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda, cuda:1, cpu (default: cuda when available)")


def add_feature_source(parser: argparse.ArgumentParser) -> None:
    """Which cached features a `dataset:split` name means (train-head, ablate, cscore)."""
    parser.add_argument("--model", default=None, help="backbone whose cached features to use (needed for dataset:split names)")
    parser.add_argument("--weights", default="default", help="weights the features were extracted with (default, none, or a file)")
    parser.add_argument("--image-size", type=int, default=None, help="input resolution the features were extracted at, if not the default")
    parser.add_argument("--feature", default=None, help="feature kind the features were extracted with, if not the default")


def add_sgd_options(parser: argparse.ArgumentParser, *, lr_default=(0.001,), defer_length: bool = False) -> None:
    """The SGD-head hyper-parameters (BiT defaults), shared by train-head and ablate.

    `defer_length`: --batch-size / --epochs default to None (the caller fills BiT's 32768 / 100
    for heads, a finetune recipe its own)."""
    g = parser.add_argument_group("sgd")
    g.add_argument("--lr", type=float, nargs="+", default=None if lr_default is None else list(lr_default),
                   help="learning rates (default 0.001)")
    g.add_argument("--batch-size", type=int, default=None if defer_length else 32768,
                   help="minibatch size (default 32768, BiT" + ("; finetune: the recipe's)" if defer_length else ")"))
    g.add_argument("--epochs", type=float, default=None if defer_length else 100,
                   help="epochs (default 100, BiT" + ("; finetune: the recipe's)" if defer_length else ")"))
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default 0, BiT)")
    g.add_argument("--schedule", default="constant", choices=("constant", "cosine", "step"), help="learning-rate schedule")
    g.add_argument("--head-init", default="uniform", choices=("uniform", "zeros"), help="fresh head init: nn.Linear-style uniform (seeded) or zeros")


def add_lbfgs_options(parser: argparse.ArgumentParser) -> None:
    """The L-BFGS λ-sweep options, shared by train-head and ablate."""
    g = parser.add_argument_group("lbfgs")
    g.add_argument("--l2-grid", type=float, nargs="+", default=None, help="L2 strengths λ (= 1/C of scikit-learn, 2/C for two classes); default ten log-spaced 1e-6..1e7")
    g.add_argument("--refit", action="store_true", help="retrain on train + validation with the chosen λ")
    g.add_argument("--max-iter", type=int, default=1000, help="L-BFGS iterations per λ (default 1000)")
    g.add_argument("--tol", type=float, default=1e-6, help="the chosen λ is solved until max |gradient| of the mean objective <= tol (default 1e-6)")
    g.add_argument("--select-tol", type=float, default=1e-4,
                   help="every λ is first solved to this tolerance to choose λ (default 1e-4, scikit-learn's tol); 0 = every λ to --tol")
    g.add_argument("--no-warm-start", action="store_true", help="start every λ from zero instead of the previous solution")
    g.add_argument("--lbfgs-dtype", choices=("auto", "float64", "float32"), default="auto",
                   help="precision of the L-BFGS feature products (default auto: float32 for --tol >= 1e-7, else float64)")
