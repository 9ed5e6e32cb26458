"""A process that torchrun started stops when torchrun's agent is gone.

torchrun starts each process in a session of its own, so a ``kill -9`` of
torchrun (or the OOM killer choosing it) reaches none of them: they went on
unseen, training to the end and writing the checkpoint and results, or
waiting up to ``--dist-timeout`` for a store that nobody hosts any more, and
held the ``--save-model`` and cache locks all the while. A daemon thread
notices that the parent has changed (the process was handed to init or a
subreaper) and sends this process SIGTERM, which ends it as torchrun's own
SIGTERM would: one line, no temporary file left, exit status 143. A process
started with SIGTERM ignored keeps it ignored (``mlet.core.signals.ignored``),
so there the watch raises that SIGTERM's exception in the main thread itself.
See docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

from mlet.core.launch import launched_local_rank, launched_rank
from mlet.core.signals import Terminated, ignored

POLL_S = 0.5
_watching: list[int] = []  # the agent's pid, once this process watches it (one watch per process)
_said = threading.Lock()  # taken by the first to write the line: the watch, or a collective that failed meanwhile
_at_work: list[bool] = []  # [True] while the main thread is inside watching(): where the watch may raise in it
_raising = threading.Lock()  # the watch raises in the main thread, or the main thread leaves watching(), not both


def started_by_torchrun() -> bool:
    """Whether torchrun's agent (``torch.distributed.run``, or ``torch.distributed.launch``, which runs it) started
    this process: it sets ``TORCHELASTIC_RUN_ID`` in each. Processes started by hand with torchrun's variables
    have no agent to outlive (a ``nohup`` launch whose shell ended must go on)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


@contextlib.contextmanager
def watching(prog: str, agent: int) -> Iterator[None]:
    """Under torchrun, the block is the main thread's work, which the watch stops once the agent, the parent
    ``agent`` (the parent's pid when the process started; gone already if it differs now), has ended. One watch a
    process, started at the first entry. Entered in the main thread, with ``sigterm_raises``'s handler set."""
    if not started_by_torchrun():
        yield
        return
    if not _watching:
        _watching.append(agent)
        sigterm = not ignored(signal.SIGTERM)  # read here, in the handler the run has (held signals swap it)
        threading.Thread(
            target=stop_when_orphaned, args=(prog, agent, sigterm), daemon=True, name="agent-watch"
        ).start()
    _at_work[:] = [True]
    try:
        yield
    finally:
        with _raising:
            _at_work.clear()
            raise_in_main_thread(None)  # one raised too late to come inside would come at exit, as a traceback


def agent_gone() -> bool:
    """Whether the watched agent has ended: a collective that fails now failed as the other processes stopped."""
    return bool(_watching) and os.getppid() != _watching[0]


def say_agent_gone(prog: str) -> None:
    """The line that torchrun has ended, once a host (by its first process) and once a process."""
    if launched_local_rank() != 0 or not _said.acquire(blocking=False):
        return
    sys.stderr.write(
        f"{prog}: rank {launched_rank()}: torchrun (pid {_watching[0]}), which started this process, has ended;"
        " stopping its processes\n"
    )
    sys.stderr.flush()


def stop_when_orphaned(prog: str, agent: int, sigterm: bool, poll_s: float = POLL_S) -> None:
    """Wait until this process's parent is no longer ``agent``, then say so (:func:`say_agent_gone`) and stop this
    process as SIGTERM does: by sending it SIGTERM (``sigterm``: the process handles it), which also wakes a main
    thread that waits in a system call; else by raising :class:`Terminated` in the main thread, while it is inside
    :func:`watching`."""
    while os.getppid() == agent:
        time.sleep(poll_s)
    say_agent_gone(prog)
    if sigterm:
        os.kill(os.getpid(), signal.SIGTERM)
        return
    with _raising:
        if _at_work:
            raise_in_main_thread(Terminated)


def raise_in_main_thread(error: type[BaseException] | None) -> None:
    """Raise ``error`` in the main thread at its next Python instruction (CPython's ``PyThreadState_SetAsyncExc``:
    a signal handler cannot, for a signal the process ignores); ``None`` takes back one not raised yet."""
    main = ctypes.c_ulong(threading.main_thread().ident or 0)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(main, None if error is None else ctypes.py_object(error))
