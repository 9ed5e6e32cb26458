"""Bad input reported as one line, never a traceback: the exception, the parser, and the checks every
command line shares (bounds, seeds, output files)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn


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


def check_output_file(flag: str, path: str) -> None:
    """Fail now, not after hours of work, if ``path`` cannot be written as a file.

    Creates the missing parent folders (the file goes there anyway) and
    writes and removes a probe file beside it. The :class:`UserError` names
    ``flag`` and says why: the path is a folder, a parent is a file, or the
    folder refuses new files.
    """
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name")
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
        with handling({signal.SIGTERM: terminate}):  # SIGTERM's default would leave the action's temporaries
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


@contextlib.contextmanager
def interrupt_exits(prog: str) -> Iterator[None]:
    """Ctrl-C inside the block ends the process as a Ctrl-C later in the command does: one ``PROG: interrupted``
    line on stderr and exit status 130, no traceback.

    For the imports at the top of a command's file (torch's take a second or more), which run before its ``main``
    can catch anything; this module imports the standard library only, so it is loaded before them.
    """
    try:
        yield
    except KeyboardInterrupt:
        ignore_interrupts()  # the process ends here: a second Ctrl-C must not turn status 130 into death by SIGINT
        raise SystemExit(report_interrupt(prog)) from None


INTERRUPTED = 130
"""A command's exit status after Ctrl-C (a shell's: 128 + SIGINT)."""
TERMINATED = 143
"""A command's exit status after SIGTERM, where it ends as on Ctrl-C (:class:`Terminated`; a shell's: 128 + 15)."""

_interrupt_reported = False
"""Whether :func:`report_interrupt` wrote its line since :func:`exit_status` started the command."""


def report_interrupt(prog: str, message: str = "interrupted", status: int = INTERRUPTED, say: bool = True) -> int:
    """One ``PROG: message`` line on stderr for Ctrl-C (or SIGTERM; none where ``say`` is false: another process
    of the run says it); ``status``, the exit status to return."""
    global _interrupt_reported
    _interrupt_reported = True  # before the line: a second Ctrl-C while it is written must not write it twice
    if say:
        sys.stderr.write(f"{prog}: {message}\n")  # one write: a second Ctrl-C cannot come between text and end
    return status


def ignore_interrupts() -> None:
    """Ctrl-C (SIGINT) does nothing from now on (in the main thread, the only one that may set handlers).

    For a process on its way out: CPython ends a process whose ``__main__`` ends with an uncaught
    KeyboardInterrupt by killing itself with SIGINT (status -2 to ``subprocess``, not 130), so a second Ctrl-C
    while the first one's line is printed or the interpreter exits would change the status.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def exit_status(prog: str, main: Callable[[], int]) -> int:
    """``main()``'s exit status, for a command's ``cli`` to exit with; Ctrl-C is ignored from then on.

    ``main`` reports its own Ctrl-C (:func:`run_reporting_errors`); a KeyboardInterrupt that escapes it (a second
    Ctrl-C while the first one's line is printed, or one in a step ``main`` does not guard) is
    :data:`INTERRUPTED` too, with the one ``PROG: interrupted`` line unless ``main`` wrote its own. Kept out of
    ``main`` itself, which tests and other code call in-process and whose Ctrl-C must keep working afterwards.
    """
    global _interrupt_reported
    _interrupt_reported = False
    try:
        code = main()
    except KeyboardInterrupt as stop:
        ignore_interrupts()
        status = TERMINATED if isinstance(stop, Terminated) else INTERRUPTED
        return status if _interrupt_reported else stopped(prog, stop)
    ignore_interrupts()
    return code


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch system ending a job, torchrun stopping its other processes), raised as Ctrl-C is,
    so that a command ends the same way: the same clean-up (no temporary file left), then one line."""


def terminate(signum: int, frame: object) -> NoReturn:
    """A SIGTERM handler: raise :class:`Terminated` where the main thread is."""
    raise Terminated


def stopped(prog: str, stop: KeyboardInterrupt, interrupted: str = "interrupted", say: bool = True) -> int:
    """The exit status of a command that ``stop`` ended, after its one line (none where ``say`` is false):
    Ctrl-C's ``PROG: INTERRUPTED`` and 130; SIGTERM's (:class:`Terminated`) the same line with its first word
    ``interrupted`` as ``terminated (SIGTERM)``, and 143."""
    if isinstance(stop, Terminated):
        return report_interrupt(prog, interrupted.replace("interrupted", "terminated (SIGTERM)", 1), TERMINATED, say)
    return report_interrupt(prog, interrupted, INTERRUPTED, say)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while inside and come on leaving (the first one, to the handler from before): for a
    few steps that must all happen or none (renaming a new file and its companion, a new folder over an old one).

    Their Python handlers are swapped for ones that note them (a blocked signal mask would not do: the kernel
    gives a process's signal to any thread that does not block it, and Python runs the handler in the main thread
    anyway). Off the main thread, where no handler runs, nothing changes.
    """
    came: list[int] = []
    try:
        with handling(dict.fromkeys(HELD, lambda number, frame: came.append(number))):
            yield
    finally:
        if came:
            signal.raise_signal(came[0])


HELD = (signal.SIGINT, signal.SIGTERM)
"""The signals :func:`signals_held` holds."""


def restore_handlers(old: dict[int, Any]) -> None:
    """Put back each signal's handler from before (``{signum: handler}``; None, one set outside Python, as the
    default), every one of them, SIGINT last.

    A signal that comes meanwhile runs its handler as soon as that is back (or before: :func:`signal.signal`
    first runs the pending ones), and Ctrl-C's raises: the handlers not yet back are put back all the same (else
    one signal would stay on a temporary handler for the rest of the process), then the first such exception is
    raised."""
    todo = sorted(old, key=lambda signum: signum == signal.SIGINT)
    came: BaseException | None = None
    while todo:
        try:
            while todo:
                signal.signal(todo[0], signal.SIG_DFL if old[todo[0]] is None else old[todo[0]])
                todo.pop(0)
        except BaseException as error:  # raised below, once every handler is back
            came = came or error
    if came is not None:
        raise came


@contextlib.contextmanager
def handling(handlers: dict[int, Any]) -> Iterator[dict[int, Any]]:
    """``handlers`` (``{signum: handler}``) while inside, the old ones after, every one of them whatever comes
    (:func:`restore_handlers`); gives the old ones. Off the main thread (which alone may set them), nothing (and
    none given)."""
    old: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        yield old
        return
    try:
        for signum, handler in handlers.items():
            old[signum] = signal.signal(signum, handler)
        yield old
    finally:
        restore_handlers(old)
