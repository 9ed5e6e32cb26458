"""Bad input reported as one line, never a traceback: the exception, the parser, and the checks every
command line shares (bounds, seeds, output files); how a command's errors end it (:func:`run_reporting_errors`).
Signals and exit statuses: :mod:`mlet.core.signals`."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

from mlet.core.signals import sigterm_raises, stopped


class UserError(Exception):
    """A problem with the user's flags or files; the message names the flag, file or line."""


def one_line(error: BaseException) -> str:
    """An exception's whole message on one line (torch's multi-line messages keep their details)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def require_at_least(checks: Iterable[tuple[str, float, float]]) -> None:
    """For each ``(flag, value, minimum)``: a :class:`UserError` naming the flag when ``value < minimum``."""
    for flag, value, minimum in checks:
        if value < minimum:
            raise UserError(f"{flag}: must be >= {minimum}, got {value}")


def check_seed(flag: str, seed: int) -> None:
    """A :class:`UserError` naming ``flag`` unless ``0 <= seed < 2**63`` (what numpy and torch generators take)."""
    if not 0 <= seed < 2**63:
        raise UserError(f"{flag}: must be in [0, 2**63), got {seed}")


def written_as_folder(path: str) -> bool:
    """Whether ``path`` is written as a folder's (``DIR/``, ``.``, ``..``), which :class:`~pathlib.Path` would
    not tell: it drops a trailing slash, and ``.`` has no name."""
    return os.path.basename(path) in ("", ".", "..")


def check_output_file(flag: str, path: str) -> None:
    """Fail now, not after hours of work, if ``path`` cannot be written as a file.

    Creates the missing parent folders (the file goes there anyway) and
    writes and removes a probe file beside it. The :class:`UserError` names
    ``flag`` and says why: the path is a folder (or written as one, ``new/``,
    which pathlib would take for the file ``new``), a parent is a file, or the
    folder refuses new files.
    """
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name")
    if written_as_folder(path):
        raise UserError(f"{flag} {path}: names a folder; give a file name")
    _probe_folder(flag, path, target.parent, prefix=f".{target.name}.")


def check_writable_folder(flag: str, path: str) -> None:
    """Fail now, not after hours of work, if files cannot be written into the folder ``path``.

    Creates it (and its parents) and writes and removes a probe file in it.
    The :class:`UserError` names ``flag`` and says why: the path or a parent is
    a file, or the folder refuses new files.
    """
    check_output_folder(flag, path)
    _probe_folder(flag, path, Path(path), prefix=".probe.")


def _probe_folder(flag: str, path: str, folder: Path, prefix: str) -> None:
    """Create ``folder`` (of ``flag``'s ``path``) and write and remove a probe file in it; a :class:`UserError`
    when a parent is a file or the folder refuses files."""
    blocking = next((parent for parent in (folder, *folder.parents) if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise UserError(f"{flag} {path}: {blocking} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=prefix, suffix=".probe", dir=folder)
    except OSError as error:
        raise UserError(f"{flag} {path}: cannot write there ({error.strerror or error})") from None
    os.close(handle)
    os.unlink(probe)


def check_output_folder(flag: str, path: str | os.PathLike) -> None:
    """A :class:`UserError` naming ``flag`` when ``path``, where files are to be written, is an existing file."""
    if Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{flag} {path}: is a file; give a folder")


def check_distinct_outputs(outputs: dict[str, str]) -> None:
    """``{flag: path}`` of files one run writes: a :class:`UserError` if two name the same file."""
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        if not path:
            continue
        resolved = Path(path).resolve()
        if resolved in seen:
            raise UserError(f"{flag} {path}: same file as {seen[resolved]}; one would overwrite the other")
        seen[resolved] = flag


def flag_value(args: argparse.Namespace, flag: str) -> Any:
    """The value ``args`` holds for ``flag`` (``--rand-data-mu`` -> ``args.rand_data_mu``)."""
    return getattr(args, flag[2:].replace("-", "_"))


def str2bool(value: str) -> bool:
    """Parse ``true/false/1/0/yes/no`` (fixes upstream's ``type=bool``, where any text is True)."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


def add_bool(parser: argparse._ActionsContainer, flag: str, default: bool, help: str) -> None:
    """A boolean flag usable as ``--flag``, ``--flag=true`` or ``--flag=false``."""
    parser.add_argument(flag, type=str2bool, nargs="?", const=True, default=default, metavar="BOOL", help=help)


class DefaultOnceFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that states each flag's default once: ``(default: X)`` is added unless the help text already says
    ``default`` (flags whose default needs words, e.g. a sentinel, say it in their help). Switches show on/off."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.required or action.default is argparse.SUPPRESS:
            return text
        if action.default is None or action.default == "":
            return f"{text} (default: none)"
        value = (
            {True: "on", False: "off"}.get(action.default, action.default)
            if isinstance(action.default, bool)
            else action.default
        )
        return f"{text} (default: {value})"


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line, without the usage block; help states each default once."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultOnceFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # The processes of a torchrun launch parse the same flags: rank 0 alone reports.
        self.exit(2, f"{self.prog}: error: {message}\n" if os.environ.get("RANK", "0") == "0" else None)


def run_reporting_errors(prog: str, action: Callable[[], int | None], interrupted: str = "interrupted") -> int:
    """Run ``action`` for a command line: its exit code (0 for None); 2 after one ``PROG: error: ...`` line for a
    :class:`UserError`; 130 after one ``PROG: INTERRUPTED`` line on Ctrl-C, as training ends (the action cleans
    up what it leaves), and 143 after one line on SIGTERM, which ends the action as Ctrl-C does (:func:`stopped`);
    141 (a shell's code for SIGPIPE) without a word when the reader of the output went away (``... | head``)."""
    try:
        with sigterm_raises():  # SIGTERM's default would leave the action's temporaries
            code = action()
    except UserError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        return stopped(prog, stop, interrupted)
    except BrokenPipeError:
        # Python flushes stdout again at exit and would report the closed pipe there: point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code or 0
