"""Errors a user can cause, and how they reach the terminal.

Anything raised as `UserError` ends the CLI with its one-line message and exit
status 2, no traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """A mistake the user can fix: bad name, missing file, wrong shape, offline download.

    The message is one line that names the culprit and says what to do. It is a
    `ValueError`, so library callers (scikit-learn's model selection among them) can catch
    bad input the usual way.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def unknown_name(kind: str, name: str, known: Iterable[str], hint: str = "") -> UserError:
    """A `UserError` for an unknown registry name that suggests the closest known names."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    suggestion = f"did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listing = f"see `{hint}`" if hint else f"known: {', '.join(known[:20])}{' ...' if len(known) > 20 else ''}"
    return UserError(f"unknown {kind} {name!r}; {suggestion + ' ' if suggestion else ''}{listing}")
