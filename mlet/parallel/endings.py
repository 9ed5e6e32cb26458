"""How the processes of a run ended, told to the others through the group's store.

Only rank 0 writes the lines of a signal (every process gets Ctrl-C or torchrun's SIGTERM), so a process that was
signalled alone (``kill PID`` of one rank) used to end without a word, and the others' failed collective then
pointed to a message that nobody wrote. Now a process that stops (a signal, an error of its own) leaves a line in
the store first, ``ended/R``, and a process whose collective fails reads the others' before it says why it stops.
Both are bounded: the store may be gone (its host ended) or stuck, and a process on its way out must not wait for
it. See docs/distributed.md.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from mlet.core.launch import launched_rank, launched_world_size
from mlet.core.signals import Terminated
from mlet.parallel import joining

WAIT_S = 1.0  # the longest a process on its way out gives the store (an answer takes about a millisecond)

T = TypeVar("T")


def key(rank: int) -> str:
    """The store's key for how ``rank`` ended."""
    return f"ended/{rank}"


def bounded(step: Callable[[], T], wait_s: float = WAIT_S) -> T | None:
    """``step()``'s result, or ``None`` where it failed or took longer than ``wait_s`` (then it goes on, unwaited,
    on a daemon thread: a store whose host has gone can block until ``--dist-timeout``)."""
    result: list[T] = []

    def run() -> None:
        try:
            result.append(step())
        except Exception:  # the store gone or refusing: as unknown as no answer
            return

    worker = threading.Thread(target=run, daemon=True, name="store-ending")
    worker.start()
    worker.join(wait_s)
    return result[0] if result else None


def record(how: str) -> None:
    """Leave in the store how this process ends (``was terminated (SIGTERM)``, ``stopped with an error (see its
    message)``), with its rank, pid and host in front, for the others' lines; nothing outside a run of several
    processes. Confirmed by a read on the same connection, so that the store has it before this process's end
    closes its connections (which is what makes the others' collectives fail)."""
    store = joining.store_if_joined()
    if store is None:
        return
    text = f"rank {launched_rank()} (pid {os.getpid()} on {socket.gethostname()}) {how}"
    name = key(launched_rank())

    def write() -> bool:
        store.set(name, json.dumps({"line": text, "at": time.time(), "host": socket.gethostname(), "pid": os.getpid()}))
        return store.check([name])

    bounded(write)


SPOKEN = "ended/spoken"
"""The store's count of the processes that wrote a line of another's end (:func:`first_to_speak`)."""


def first_to_speak() -> bool:
    """Whether this process is the first of the run to write the line of another process's end. Every surviving
    process's collective fails (or gets torchrun's SIGTERM) when one ends, and with three or more processes each
    wrote the same line. True where the store does not answer (the line twice rather than not at all) and outside
    a run of several processes."""
    store = joining.store_if_joined()
    if store is None:
        return True
    count = bounded(lambda: store.add(SPOKEN, 1))
    return count is None or count == 1


def this_one_says(ended: Endings) -> bool:
    """Whether this process writes the line of another's end (what ``ended`` knows): not where rank 0 recorded its
    own end (it wrote its own line), nor where another survivor wrote it first (:func:`first_to_speak`)."""
    return not ended.rank_zero_spoke and first_to_speak()


def record_stop(stop: KeyboardInterrupt) -> None:
    """:func:`record` that this process was stopped by ``stop``: Ctrl-C's SIGINT, or SIGTERM or SIGHUP
    (:class:`Terminated`)."""
    record(f"was {stop.words}" if isinstance(stop, Terminated) else "was interrupted (SIGINT)")


@dataclass(frozen=True)
class Endings:
    """What the store says of the other processes: ``{rank: line}`` for those that recorded how they ended,
    ``{rank: time}`` when they did (``time.time()``) and ``{rank: (host, pid)}`` where they ran; ``readable`` is
    false where the store did not answer (then nothing is known)."""

    lines: dict[int, str]
    readable: bool
    at: dict[int, float] = field(default_factory=dict)
    places: dict[int, tuple[str, int]] = field(default_factory=dict)

    def before(self, moment: float) -> Endings:
        """Those recorded before ``moment``: processes that had ended by then."""
        ranks = [rank for rank in self.lines if self.at.get(rank, moment) < moment]
        return Endings(
            {rank: self.lines[rank] for rank in ranks},
            self.readable,
            {rank: self.at[rank] for rank in ranks},  # (a rank without a time is not among them)
            {rank: self.places[rank] for rank in ranks if rank in self.places},
        )

    def none_reaped(self) -> bool:
        """Whether every process recorded here runs on this host and has not been waited for: its pid is still
        there, running or exited (torchrun reaps a process that ends before it stops the others)."""
        return bool(self.lines) and all(
            rank in self.places and self.places[rank][0] == socket.gethostname() and pid_present(self.places[rank][1])
            for rank in self.lines
        )

    @property
    def first(self) -> str | None:
        """The line of the lowest rank that recorded its end (``None``: none did)."""
        return self.lines[min(self.lines)] if self.lines else None

    @property
    def rank_zero_spoke(self) -> bool:
        """Whether rank 0 recorded its end: it writes its own line for a signal or an error, so the other
        processes need not add theirs."""
        return 0 in self.lines and launched_rank() != 0


NOTHING_KNOWN = Endings({}, readable=False)
"""What is known where the store was not read (a single process, or a caller that does not ask)."""


def others() -> Endings:
    """How the other processes of the run ended, as far as the store knows (:class:`Endings`)."""
    store = joining.store_if_joined()
    if store is None:
        return NOTHING_KNOWN
    ranks = [rank for rank in range(launched_world_size()) if rank != launched_rank()]

    def read() -> dict[int, dict]:
        return {rank: json.loads(store.get(key(rank))) for rank in ranks if store.check([key(rank)])}

    found = bounded(read)
    if found is None:
        return NOTHING_KNOWN
    return Endings(
        {r: e["line"] for r, e in found.items()},
        True,
        {r: e["at"] for r, e in found.items()},
        {r: (e["host"], e["pid"]) for r, e in found.items() if "host" in e and "pid" in e},
    )


def pid_present(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (a zombie, exited but not waited for, does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: there all the same
        return True
    return True
