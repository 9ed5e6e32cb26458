"""Bad input reported as one line, never a traceback: the exception and the parser."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable


class UserError(Exception):
    """A problem with the user's flags or files; the message names the flag, file or line."""


def require_at_least(checks: Iterable[tuple[str, float, float]]) -> None:
    """For each ``(flag, value, minimum)``: a :class:`UserError` naming the flag when ``value < minimum``."""
    for flag, value, minimum in checks:
        if value < minimum:
            raise UserError(f"{flag}: must be >= {minimum}, got {value}")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line, without the usage block."""

    def error(self, message: str) -> None:
        # The processes of a torchrun launch parse the same flags: rank 0 alone reports.
        self.exit(2, f"{self.prog}: error: {message}\n" if os.environ.get("RANK", "0") == "0" else None)


def run_reporting_errors(prog: str, action: Callable[[], object]) -> int:
    """Run ``action`` for a command line: 0, or 2 after one ``PROG: error: ...`` line for a :class:`UserError`."""
    try:
        action()
    except UserError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    return 0
