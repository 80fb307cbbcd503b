"""Options shared by several subcommands, and the value types every numeric option uses, defined once.

A value argparse refuses ends the command with one `probekit: error:` line (see
`probekit.cli.Parser`), so every number is checked here, where it is read, instead of
reaching a library call that raises deep inside (overflowing seeds, NaN learning rates).
"""

from __future__ import annotations

import argparse
import math

SEED_MAX = 2**32 - 1      # numpy's legacy RandomState and most samplers take seeds below 2**32
WORKERS_MAX = 256         # DataLoader processes: beyond this the machine, not probekit, gives way
BOOTSTRAP_MAX = 100_000   # bootstrap resamples: 95% intervals are stable long before this


def _parse_number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except (ValueError, OverflowError):
        noun = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def int_type(minimum: int | None = None, maximum: int | None = None, *, name: str = "") -> callable:
    """An argparse type: a whole number in [minimum, maximum]."""
    def parse(text: str) -> int:
        value = _parse_number(text, int)
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value
    parse.__name__ = name or "integer"
    return parse


def float_type(minimum: float | None = None, *, above: float | None = None, below: float | None = None,
               maximum: float | None = None, hint: str = "", name: str = "") -> callable:
    """An argparse type: a finite number >= minimum (or > above, < below, <= maximum)."""
    def parse(text: str) -> float:
        value = _parse_number(text, float)
        bad = ((minimum is not None and value < minimum) or (above is not None and value <= above)
               or (below is not None and value >= below) or (maximum is not None and value > maximum))
        if bad:
            bounds = [f">= {minimum:g}" if minimum is not None else "", f"> {above:g}" if above is not None else "",
                      f"< {below:g}" if below is not None else "", f"<= {maximum:g}" if maximum is not None else ""]
            raise argparse.ArgumentTypeError(f"must be {' and '.join(b for b in bounds if b)}, got {text}{hint}")
        return value
    parse.__name__ = name or "number"
    return parse


positive_int = int_type(1, name="positive whole number")
batch_size = int_type(1, 2**24, name="batch size")  # 16M rows: past it HDF5 attributes and index tensors overflow
nonnegative_int = int_type(0, name="whole number")
seed = int_type(0, SEED_MAX, name="seed")
workers = int_type(0, WORKERS_MAX, name="worker count")
positive_float = float_type(above=0, name="positive number")
nonnegative_float = float_type(0, name="non-negative number")
def fraction(text: str) -> float:
    """An argparse type: a fraction strictly between 0 and 1 (a percentage gets the hint)."""
    value = _parse_number(text, float)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1 (exclusive), got {text} (e.g. 0.2 for 20%)")
    return value


def accuracy(text: str) -> float:
    """An argparse type: an accuracy as a fraction (the robustness module's own check and hint)."""
    from probekit.errors import UserError
    from probekit.robustness.transforms import check_accuracies

    value = _parse_number(text, float)
    try:
        check_accuracies(value, "accuracy")
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def baseline_spec(text: str) -> str:
    """An argparse type: a --baseline value; an empty one is refused, not read as "no baseline"."""
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a testbed name (see `probekit baseline list`) or a fit JSON file; "
                                         "leave --baseline out for no ER")
    return text


def image_size(text: str) -> int:
    """An argparse type: a crop size the backbones accept (their own check, so the bounds live once)."""
    from probekit.backbones.registry import check_image_size
    from probekit.errors import UserError

    try:
        return check_image_size(_parse_number(text, int))
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def print_table(table: list[tuple[str, ...]]) -> None:
    """Rows of strings as left-aligned columns; the first row is the header."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def print_json(value) -> None:
    """A result as JSON on stdout (`--json`), for scripts; numbers as computed, not rounded."""
    import json

    from probekit.atomic import _json_default

    print(json.dumps(value, indent=2, default=_json_default))


def print_run_summary(out) -> None:
    """`--json` of a run command: its summary.json as written (status included)."""
    import json
    from pathlib import Path

    print_json(json.loads((Path(out) / "summary.json").read_text(encoding="utf-8")))


def add_json(parser: argparse.ArgumentParser, what: str = "the run's summary") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON instead of a table")


def add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", default=None, help="feature-store folder (default: $PROBEKIT_CACHE or ./cache)")


def add_data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", default=None, help="folder holding on-disk datasets (default: $PROBEKIT_DATA or ./data)")


def device(text: str) -> str:
    """An argparse type: a device name torch understands (whether it is present is checked when used)."""
    import torch

    try:
        torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use e.g. cpu, cuda or cuda:1") from None
    return text


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=device, default=None, help="torch device, e.g. cuda, cuda:1, cpu (default: cuda when available)")


def add_feature_source(parser: argparse.ArgumentParser) -> None:
    """Which cached features a `dataset:split` name means (train-head, ablate, cscore)."""
    parser.add_argument("--model", default=None, help="backbone whose cached features to use (needed for dataset:split names)")
    parser.add_argument("--weights", default="default", help="weights the features were extracted with (default, none, or a file)")
    parser.add_argument("--image-size", type=image_size, default=None, help="input resolution the features were extracted at, if not the default")
    parser.add_argument("--feature", default=None, help="feature kind the features were extracted with, if not the default")


def add_sgd_options(parser: argparse.ArgumentParser, *, lr_default=(0.001,), defer_length: bool = False) -> None:
    """The SGD-head hyper-parameters (BiT defaults), shared by train-head and ablate.

    `defer_length`: --batch-size / --epochs default to None (the caller fills BiT's 32768 / 100
    for heads, a finetune recipe its own)."""
    g = parser.add_argument_group("sgd")
    g.add_argument("--lr", type=positive_float, nargs="+", default=None if lr_default is None else list(lr_default),
                   help="learning rates (default 0.001)")
    g.add_argument("--batch-size", type=batch_size, default=None if defer_length else 32768,
                   help="minibatch size (default 32768, BiT" + ("; finetune: the recipe's)" if defer_length else ")"))
    g.add_argument("--epochs", type=positive_float, default=None if defer_length else 100,
                   help="epochs (default 100, BiT" + ("; finetune: the recipe's)" if defer_length else ")"))
    g.add_argument("--momentum", type=float_type(0, below=1, name="momentum"), default=0.9, help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=nonnegative_float, default=0.0, help="weight decay (default 0, BiT)")
    g.add_argument("--schedule", default="constant", choices=("constant", "cosine", "step-30-60-90"),
                   help="learning-rate schedule: constant, cosine (half-cosine to 0) or step-30-60-90 (x0.1 at 30/60/90%% of training)")
    g.add_argument("--head-init", default="uniform", choices=("uniform", "zeros"), help="fresh head init: nn.Linear-style uniform (seeded) or zeros")


def add_lbfgs_options(parser: argparse.ArgumentParser) -> None:
    """The L-BFGS λ-sweep options, shared by train-head and ablate."""
    g = parser.add_argument_group("lbfgs")
    g.add_argument("--l2-grid", type=positive_float, nargs="+", default=None, help="L2 strengths λ (= 1/C of scikit-learn, 2/C for two classes); default ten log-spaced 1e-6..1e7")
    g.add_argument("--refit", action="store_true", help="retrain on train + validation with the chosen λ")
    g.add_argument("--max-iter", type=positive_int, default=1000, help="L-BFGS iterations per λ (default 1000)")
    g.add_argument("--tol", type=positive_float, default=1e-4, help="the chosen λ is solved until max |gradient| of the mean objective <= tol (default 1e-4, scikit-learn's tol; e.g. 1e-6 for a tighter final solve)")
    g.add_argument("--select-tol", type=nonnegative_float, default=1e-4,
                   help="every λ is first solved to this tolerance to choose λ (default 1e-4); a smaller --tol then continues the chosen λ; 0 = every λ to --tol")
    g.add_argument("--no-warm-start", action="store_true", help="start every λ from zero instead of the previous solution")
    g.add_argument("--lbfgs-dtype", choices=("auto", "float64", "float32"), default="auto",
                   help="precision of the L-BFGS feature products (default auto: float32 for --tol >= 1e-7, else float64)")
