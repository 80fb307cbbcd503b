"""The `probekit` command: a thin argparse layer over the Python API.

Each subcommand lives in its own module here and exposes ``ORDER`` (its place in
``--help``) and ``add_parser(subparsers)``, which sets ``func`` to a callable taking
the parsed arguments. Modules import heavy libraries (torch) only inside ``func``, so
``probekit --help`` stays instant.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import pkgutil
import re
import sys
from collections.abc import Sequence

from probekit import __version__
from probekit.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse with probekit's error contract: one `probekit: error:` line, exit 2, no usage dump.

    A misspelt command or choice gets the closest known names, like every other unknown name."""

    def error(self, message: str):
        m = re.match(r"argument (\S+): invalid choice: '(.*)' \(choose from (.*)\)$", message)
        if m:
            from probekit.errors import unknown_name

            command = m.group(1) in ("COMMAND", "ACTION", "ANALYSIS")
            known = [c.strip().strip("'") for c in m.group(3).split(",")]
            what = "command" if command else f"value for {m.group(1)}"
            message = str(unknown_name(what, m.group(2), known, hint=f"{self.prog} --help" if command else ""))
        else:
            message = f"{self.prog.removeprefix('probekit ')}: {message}" if self.prog != "probekit" else message
            message += f"; see `{self.prog} --help`"
        self.exit(2, f"probekit: error: {' '.join(message.split())}\n")


# What the operating system says about a path the user gave, as the one line that says what to do.
_OS_ADVICE = {
    errno.ENOSPC: "free some space (or choose a folder on another disk) and rerun",
    errno.EDQUOT: "free some space within your quota and rerun",
    errno.EROFS: "choose a folder on a writable disk",
    errno.EACCES: "choose a path you may write to, or fix its permissions",
    errno.EPERM: "choose a path you may write to, or fix its permissions",
    errno.EISDIR: "pass a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENAMETOOLONG: "use a shorter path",
}


class _TerminalHandler(logging.Handler):
    """Library messages (`logging`, logger ``probekit``) as ``probekit: ...`` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"probekit: {record.getMessage()}", file=sys.stderr, flush=True)


def _show_library_messages() -> None:
    """The CLI decides what reaches the terminal: INFO and up from probekit's modules."""
    logger = logging.getLogger("probekit")
    if not any(isinstance(h, _TerminalHandler) for h in logger.handlers):
        logger.addHandler(_TerminalHandler())
    logger.setLevel(logging.INFO)


def _command_modules() -> list:
    modules = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted((m for m in modules if hasattr(m, "add_parser")), key=lambda m: getattr(m, "ORDER", 100))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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


def os_error_message(e: OSError) -> str | None:
    """The one-line message for an OSError a user's path or disk caused, or None for anything else (a bug)."""
    advice = _OS_ADVICE.get(e.errno)
    if advice is None:
        return None
    where = f" {e.filename}" if e.filename else ""
    return f"{os.strerror(e.errno).lower()}:{where}; {advice}"


def main(argv: Sequence[str] | None = None) -> int:
    """The `probekit` command: parse, run, and turn every mistake a user can make into one line and exit 2."""
    _show_library_warnings()
    _show_library_messages()
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # a bad option (its one line is printed) returns 2 like any user error; --help exits
            if e.code == 2:
                return 2
            raise
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
        except OSError as e:
            message = os_error_message(e) if not isinstance(e, BrokenPipeError) else None
            if message is None:
                raise
            print(f"probekit: error: {message}", file=sys.stderr)
            return 2
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at interpreter exit
        return int(result or 0)
    except BrokenPipeError:  # `probekit cache ls | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13  # what a shell reports for a writer ended by SIGPIPE
