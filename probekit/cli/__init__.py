"""The `probekit` command: a thin argparse layer over the Python API.

Each subcommand lives in its own module here and exposes ``ORDER`` (its place in
``--help``) and ``add_parser(subparsers)``, which sets ``func`` to a callable taking
the parsed arguments. Modules import heavy libraries (torch) only inside ``func``, so
``probekit --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from probekit import __version__
from probekit.errors import UserError


def _command_modules() -> list:
    modules = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted((m for m in modules if hasattr(m, "add_parser")), key=lambda m: getattr(m, "ORDER", 100))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probekit",
        description="Measure how out-of-distribution robustness evolves throughout fine-tuning "
        "(Andreassen et al., TMLR 2022): cache backbone features, train linear heads or whole "
        "networks, and log ID accuracy, OOD accuracy and effective robustness at every iteration.",
    )
    parser.add_argument("--version", action="version", version=f"probekit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module in _command_modules():
        module.add_parser(subparsers)
    return parser


class _StderrLines(logging.StreamHandler):
    """One ``probekit: warning: ...`` line per record, on the sys.stderr of the moment (tests redirect it)."""

    stream = property(lambda self: sys.stderr, lambda self, value: None)

    def format(self, record: logging.LogRecord) -> str:
        return f"probekit: {record.levelname.lower()}: {record.getMessage()}"


def _show_library_warnings() -> None:
    """Library warnings (`logging` under ``probekit``) as one ``probekit: warning: ...`` line each on stderr."""
    logger = logging.getLogger("probekit")
    if not any(isinstance(h, _StderrLines) for h in logger.handlers):
        handler = _StderrLines()
        handler.setLevel(logging.WARNING)
        logger.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    _show_library_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except UserError as e:
        print(f"probekit: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("probekit: interrupted; what was written is kept, rerun the same command to resume", file=sys.stderr)
        return 130
    return int(result or 0)
