"""How a command ends on Ctrl-C and SIGTERM: one line and its exit status (130, 143), no traceback, no temporary
left; handlers swapped for a while and every one put back; a few steps that signals wait for.

The standard library only: the command files import it before torch, to guard those imports
(:func:`interrupt_exits`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn


@contextlib.contextmanager
def interrupt_exits(prog: str) -> Iterator[None]:
    """Ctrl-C inside the block ends the process as a Ctrl-C later in the command does: one ``PROG: interrupted``
    line on stderr and exit status 130, no traceback; SIGTERM likewise, with its own line and 143 (without this it
    ended the process at once, with no line: a batch system's kill in the first seconds left no word in the log).

    For the imports at the top of a command's file (torch's take a second or more), which run before its ``main``
    can catch anything; this module imports the standard library only, so it is loaded before them. The process
    ends in the signal handler itself rather than by a KeyboardInterrupt: raised inside a library's import, that
    one can be caught on the way (numpy half-imported under torch then failed with an unrelated traceback, or the
    run went on as if no Ctrl-C had come). Nothing is written yet that an exit this abrupt would leave behind.
    A spawned worker importing the command's file ends without a line (:func:`spawned_worker`).
    """
    stops = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated}
    say = not spawned_worker()
    handlers: dict[int, Any] = {
        signum: (lambda signum, frame: end_interrupted(prog, stops[signum](), say=say))
        for signum in stops
        if not ignored(signum)
    }
    with handling(handlers):
        yield


def ignored(signum: int) -> bool:
    """Whether this process ignores signal ``signum``, as its parent set it (``trap '' TERM`` in a wrapper script,
    ``nohup``'s SIGHUP, SIGINT in a shell's background job): the commands keep it ignored, setting no handler."""
    return signal.getsignal(signum) == signal.SIG_IGN


def sigterm_raises() -> contextlib.AbstractContextManager[dict[int, Any]]:
    """Inside, SIGTERM raises :class:`Terminated` (:func:`terminate`), so that a command ends as on Ctrl-C, unless
    the process ignores it (:func:`ignored`); the handler from before after (:func:`handling`)."""
    return handling({} if ignored(signal.SIGTERM) else {signal.SIGTERM: terminate})


def spawned_worker() -> bool:
    """Whether this process is a worker that :mod:`multiprocessing` started by spawning (Terabyte's day readers,
    ``full_scale.py``'s runners), now importing the command's file again as ``__mp_main__``: a signal to the
    process group ends it there too, and the command, its parent, says the one line. (The worker's name is set
    before that import; ``multiprocessing.parent_process()`` only after it.)"""
    started = sys.modules.get("multiprocessing")  # not imported yet: the command's own process
    return started is not None and started.current_process().name != "MainProcess"


def end_interrupted(prog: str, stop: KeyboardInterrupt, say: bool = True) -> NoReturn:
    """End the process now with the line (unless ``say`` is false) and exit status of ``stop`` (Ctrl-C's or
    SIGTERM's, see :func:`stopped`), skipping the interpreter's own exit."""
    for signum in HELD:  # a second Ctrl-C or SIGTERM while the line is written must not run this again
        signal.signal(signum, signal.SIG_IGN)  # (a signal handler: in the main thread, which may set them)
    code = stopped(prog, stop, say=say)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: the status still tells
            stream.flush()
    os._exit(code)


INTERRUPTED = 130
"""A command's exit status after Ctrl-C (a shell's: 128 + SIGINT)."""
TERMINATED = 143
"""A command's exit status after SIGTERM, where it ends as on Ctrl-C (:class:`Terminated`; a shell's: 128 + 15)."""

_interrupt_reported = False
"""Whether :func:`stopped` wrote its line since :func:`exit_status` started the command."""


def on_the_way_out(prog: str) -> None:
    """From now on (in the main thread, the only one that may set handlers) Ctrl-C (SIGINT) does nothing, and
    SIGTERM ends the process at once with status 143 and the command's one line, unless one was written.

    For a process on its way out, its command done. Ctrl-C: CPython ends a process whose ``__main__`` ends with an
    uncaught KeyboardInterrupt by killing itself with SIGINT (status -2 to ``subprocess``, not 130), so a second
    Ctrl-C while the first one's line is printed or the interpreter exits would change the status. SIGTERM was
    back on its default once the command's handler was put back, and the interpreter's exit can take long: it
    waits for the (non-daemon) threads still at work, so a SIGTERM there killed the process with no line. (The
    longest such wait found, the shuffle of the epoch after a run's last, is gone: ``EpochOrders`` makes its
    orders on a daemon thread.) It ends in the handler: nothing is left to clean up, and an exception raised
    during the exit would be lost.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not ignored(signal.SIGTERM):
        signal.signal(
            signal.SIGTERM, lambda signum, frame: end_interrupted(prog, Terminated(), say=not _interrupt_reported)
        )


def exit_status(prog: str, main: Callable[[], int]) -> int:
    """``main()``'s exit status, for a command's ``cli`` to exit with. SIGTERM ends ``main`` as Ctrl-C does
    (:func:`terminate`) from the start, before ``main`` sets its own handler; once it returns, Ctrl-C is ignored and
    SIGTERM ends the process at once (:func:`on_the_way_out`).

    ``main`` reports its own Ctrl-C (:func:`~mlet.core.errors.run_reporting_errors`); a KeyboardInterrupt that
    escapes it (a second Ctrl-C while the first one's line is printed, or one in a step ``main`` does not guard)
    is :data:`INTERRUPTED` too (:data:`TERMINATED` for SIGTERM's), with the one ``PROG: interrupted`` line unless
    ``main`` wrote its own. Kept out of ``main`` itself, which tests and other code call in-process and whose
    Ctrl-C must keep working afterwards.
    """
    global _interrupt_reported
    _interrupt_reported = False
    if threading.current_thread() is threading.main_thread() and not ignored(signal.SIGTERM):
        # (the main thread alone may set handlers) before main sets its own: SIGTERM while it reads its flags ended
        # the process with no line
        signal.signal(signal.SIGTERM, terminate)
    try:
        code = main()
    except KeyboardInterrupt as stop:
        on_the_way_out(prog)
        return stopped(prog, stop, say=not _interrupt_reported)
    on_the_way_out(prog)
    return code


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch system ending a job, torchrun stopping its other processes), raised as Ctrl-C is,
    so that a command ends the same way: the same clean-up (no temporary file left), then one line."""

    words = "terminated (SIGTERM)"
    """What the command's line says of it, in place of Ctrl-C's ``interrupted``."""
    status = TERMINATED
    signum: int = signal.SIGTERM
    agreed = False
    """Whether the processes of a run stopped together at one step for it (:meth:`AtBoundaries.raise_for`), rather
    than each where the signal found it."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.at = time.time()  # raised by the handler: when the signal came, unless the main thread was busy in C


def terminate(signum: int, frame: object) -> NoReturn:
    """A SIGTERM handler: raise :class:`Terminated` where the main thread is."""
    raise Terminated


HUNG_UP = 129
"""A process's exit status after SIGHUP, where it ends as on SIGTERM (:class:`HungUp`; a shell's: 128 + 1)."""


class HungUp(Terminated):
    """SIGHUP to a process that torchrun started (:func:`sighup_raises`): torchrun passes its own SIGHUP on to its
    processes, and one process may get one alone; ended as on SIGTERM, with its own line and status."""

    words = "terminated (SIGHUP)"
    status = HUNG_UP
    signum = signal.SIGHUP


def hang_up(signum: int, frame: object) -> NoReturn:
    """A SIGHUP handler: raise :class:`HungUp` where the main thread is."""
    raise HungUp


def sighup_raises(wanted: bool) -> contextlib.AbstractContextManager[dict[int, Any]]:
    """Inside, where ``wanted``, SIGHUP raises :class:`HungUp` (:func:`hang_up`), unless the process ignores it
    (:func:`ignored`, ``nohup``'s); the handler from before after. Elsewhere SIGHUP keeps its default: a terminal
    that closes ends a command at once, as any program's."""
    return handling({signal.SIGHUP: hang_up} if wanted and not ignored(signal.SIGHUP) else {})


_arrived: dict[int, float] = {}  # {signal: when it first came} (time.time()'s clock), inside arrival_times()

SO_TIMESTAMP = 29
"""Linux's socket option (the standard library does not name it) by which each message read carries the time it
was written (``SCM_TIMESTAMP``, a ``struct timeval``)."""
TIMEVAL = struct.Struct("@ll")


@contextlib.contextmanager
def arrival_times(wanted: bool) -> Iterator[None]:
    """Inside, where ``wanted``, the time each signal with a Python handler first comes is kept (:func:`arrived`):
    when the interpreter's C handler wrote its number to the wakeup descriptor, as the kernel stamped it. The
    Python handler is no clock: it runs once the main thread is back from a call into C, such as a collective
    that waits for a process that stops. Nor is the reader of the descriptor: it needs the interpreter's lock,
    which a busy main thread holds for milliseconds at a time (on a loaded machine, longer than another process
    takes to end). In the main thread only (elsewhere nothing is kept); the wakeup descriptor from before after."""
    if not wanted or threading.current_thread() is not threading.main_thread():
        yield
        return
    read, write = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # one message a signal; an end
    with contextlib.suppress(OSError):  # not Linux: the reader's own clock
        read.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
    write.setblocking(False)  # as set_wakeup_fd requires: a full buffer drops the byte, it never blocks
    old = signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
    threading.Thread(target=note_arrivals, args=(read,), daemon=True, name="signal-arrivals").start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old)
        write.close()  # the reader sees the end and closes its side


def note_arrivals(read: socket.socket) -> None:
    """Keep the time each signal number read from ``read`` first came (its kernel stamp, else now), until its
    writing side is closed."""
    with read:
        while True:
            come, notes, _, _ = read.recvmsg(64, socket.CMSG_SPACE(TIMEVAL.size))
            if not come:
                return
            at = stamp(notes) or time.time()
            for signum in come:
                _arrived.setdefault(signum, at)


def stamp(notes: list[tuple[int, int, bytes]]) -> float | None:
    """The time a message was written, from the ``SCM_TIMESTAMP`` among its ancillary ``notes`` (``None``: none)."""
    for level, kind, data in notes:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP and len(data) >= TIMEVAL.size:
            seconds, microseconds = TIMEVAL.unpack_from(data)
            return seconds + microseconds / 1e6
    return None


def arrived(signum: int) -> float | None:
    """When ``signum`` first came inside :func:`arrival_times` (``time.time()``); ``None``: not seen."""
    return _arrived.get(signum)


def stop_name(stop: KeyboardInterrupt) -> str:
    """What stopped a command, for a log line (:func:`signal_word`): ``Ctrl-C``, ``SIGTERM``, ``SIGHUP``."""
    return signal_word(stop.signum if isinstance(stop, Terminated) else signal.SIGINT)


def signal_word(signum: int) -> str:
    """Signal ``signum`` as a log line names it: ``Ctrl-C`` for SIGINT, else its name (``SIGTERM``)."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def stop_status(stop: KeyboardInterrupt) -> int:
    """The exit status after ``stop``: Ctrl-C's :data:`INTERRUPTED`, or its signal's (:class:`Terminated`)."""
    return stop.status if isinstance(stop, Terminated) else INTERRUPTED


def stopped(prog: str, stop: KeyboardInterrupt, interrupted: str = "interrupted", say: bool = True) -> int:
    """The exit status of a command that ``stop`` ended, after its one line on stderr (none where ``say`` is false:
    another process of the run says it): Ctrl-C's ``PROG: INTERRUPTED`` and 130; SIGTERM's (:class:`Terminated`)
    the same line with its first word ``interrupted`` as ``terminated (SIGTERM)``, and 143 (SIGHUP's,
    :class:`HungUp`: ``terminated (SIGHUP)`` and 129)."""
    global _interrupt_reported
    _interrupt_reported = True  # before the line: a second Ctrl-C while it is written must not write it twice
    if say:
        message = interrupted.replace("interrupted", stop.words, 1) if isinstance(stop, Terminated) else interrupted
        sys.stderr.write(f"{prog}: {message}\n")  # one write: a second Ctrl-C cannot come between text and end
    return stop_status(stop)


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


STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that :class:`AtBoundaries` makes wait (SIGHUP where it has a Python handler: under torchrun)."""


class AtBoundaries:
    """Ctrl-C and SIGTERM end a loop of units of work (training steps) at a boundary between two units, so that
    what the loop has done so far is whole and can be kept (a checkpoint).

    While :meth:`watching`, a signal that comes inside a unit (``inside`` set by the loop) waits until the loop
    calls :meth:`take` after it; one that comes between units, or a second one inside (the unit does not end),
    raises at once. Either raises what the handler from before raises (:class:`Terminated`, KeyboardInterrupt).
    Where ``inside`` is still set as that goes by, the unit was stopped midway. (A loop of several processes
    keeps ``inside`` set from one agreed boundary to the next, and raises with :meth:`raise_for`.)

    A flag the loop sets, rather than handlers swapped around each unit (:func:`signals_held`): a training step on
    a GPU takes a few tenths of a millisecond, and four ``signal.signal`` calls would cost several percent of it.
    """

    def __init__(self) -> None:
        self.inside = False
        self.kept: int | None = None
        self.before: dict[int, Any] = {}

    @contextlib.contextmanager
    def watching(self, wanted: bool) -> Iterator[None]:
        """Inside, where ``wanted``, the :data:`STOPPING` signals go to :meth:`came` where they raise through a
        Python handler now (not where they are ignored or end the process without one); the handlers from before
        after."""
        raising = [signum for signum in STOPPING if wanted and callable(signal.getsignal(signum))]
        with handling(dict.fromkeys(raising, self.came)) as before:
            self.before = before
            yield

    def came(self, signum: int, frame: object) -> None:
        """The handler: keep the first signal inside a unit; else raise as the handler from before does."""
        if self.inside and self.kept is None:
            self.kept = signum
            return
        self.before[signum](signum, frame)

    def take(self) -> None:
        """At a boundary: raise for the signal kept during the unit just ended, if one came."""
        if self.kept is not None:
            self.raise_for(self.kept)

    def raise_for(self, signum: int, agreed: bool = False) -> None:
        """Raise what ``signum``'s handler from before raises (:func:`terminate` where it had none), forgetting a
        kept signal; ``agreed``: the processes of a run stop together here (:attr:`Terminated.agreed`)."""
        self.kept = None
        try:
            self.before.get(signum, terminate)(signum, None)
        except Terminated as stop:
            stop.agreed = agreed
            raise


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
