"""Bad input reported as one line, never a traceback: the exception and the parser."""

from __future__ import annotations

import argparse
import os


class UserError(Exception):
    """A problem with the user's flags or files; the message names the flag, file or line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line, without the usage block."""

    def error(self, message: str) -> None:
        # The processes of a torchrun launch parse the same flags: rank 0 alone reports.
        self.exit(2, f"{self.prog}: error: {message}\n" if os.environ.get("RANK", "0") == "0" else None)
