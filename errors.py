"""The one exception type for bad input: reported as one line, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's flags or files; the message names the flag, file or line."""
