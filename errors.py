"""Bad input reported as one line, never a traceback: the exception and the parser."""

from __future__ import annotations

import argparse


class UserError(Exception):
    """A problem with the user's flags or files; the message names the flag, file or line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line, without the usage block."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")
