"""CPU training threads that make way for other processes.

Why: torch's CPU wheels run their intra-op parallel regions on GNU OpenMP
(``libgomp.so.1`` in ``torch/lib``, the one OpenMP runtime in the process's
maps), whose waiting threads spin 300,000 times before they sleep (its
default; it spins less only when one process has more OpenMP threads than
CPUs, other processes do not count), and whose regions end at a barrier that
every thread of the team must reach. Alone on 2 cores that keeps the second
thread hot; beside another busy process each region waits for a sibling
thread that the scheduler has put behind the other process's threads, which
spin too. On this project's 2-core VM the quickstart's MLET run (batch 256,
about 4 ms a step) trained at 44-51k samples/s alone and at 2.4-3.3k beside a
second copy of itself: its main thread and its OpenMP thread were each
runnable but waiting half of the time (``/proc/PID/task/*/schedstat``), and
alone its OpenMP thread burnt a whole core. Other people's jobs do the same to it.

Rejected (``bench/shared_machine.py``, ``bench/NOTES.md``): a shorter
``GOMP_SPINCOUNT`` (libgomp reads it when torch loads) trades one for the
other: 1,000 and 10,000 spins kept 33k and 15k samples/s beside a second copy
but cost 37% and 22% alone (each region wakes a sleeping thread), 30,000 and
100,000 cost 12-14% alone and kept only 7.5k and 3.7k; ``OMP_WAIT_POLICY=passive``
(no spinning) ran at 28k alone against 48k; one thread always
(``OMP_NUM_THREADS=1``) costs the quickstart run 9-20% alone and the
Kaggle-sized runs 30-36%.

So the count is chosen while training, which needs nothing set before torch
loads: ``torch.set_num_threads`` applies from the next parallel region. Every
half second :meth:`ThreadGovernor.tick` (called by the training loop, on the
thread that runs the steps: OpenMP's thread count belongs to the calling
thread) reads how much CPU time other processes took on this process's cores
(``/proc/stat`` less this process's own time) and uses the cores they leave
free (:func:`threads_for`), at least 1 and at most the count it started with.
Measured (docs/performance.md): quickstart run 45k alone, 41k per copy beside a second copy (0.91 of
alone, against 0.06 before); Kaggle-sized runs alone as before, 0.64-0.74 of
alone beside a second copy (0.56-0.62 before). A tick costs 0.14 us; a
reading 36 us.

A fixed count is kept when the user chose one (``OMP_NUM_THREADS`` or another
OpenMP/MKL threading variable is set, as torchrun does), with
``--adapt-threads=false``, and on GPU. A changing count changes float results
in the last bits, so an exact resume needs a fixed count. This module imports
nothing of the project, and torch only in :func:`adapting`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

# Variables through which a user picks threads or OpenMP's waiting; any of them set: keep torch's count.
USER_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "OMP_DYNAMIC",
    "OMP_THREAD_LIMIT",
)
INTERVAL_S = 0.5
STAT = Path("/proc/stat")


def user_setting(environ: Mapping[str, str]) -> str | None:
    """``NAME=value`` of the first threading variable the user set, or None."""
    return next((f"{name}={environ[name]}" for name in USER_VARIABLES if environ.get(name)), None)


def busy_ticks(stat: str, cpus: set[int]) -> int:
    """Clock ticks ``cpus`` spent busy (neither idle nor waiting for I/O), from ``/proc/stat`` text.

    Guest time is already counted in user time; steal (another VM on the core) counts as busy.
    """
    total = 0
    for line in stat.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
            total += user + nice + system + irq + softirq + steal
    return total


def threads_for(others: float, cores: int, most: int, current: int) -> int:
    """Threads for a process on ``cores`` cores, now running ``current``, while other processes keep
    ``others`` of them busy: the cores left free, rounded to nearest, but taking a core back only once
    it is three quarters free (a load between 0.25 and 0.5 of a core changes nothing, so the count
    does not flap); at least 1, at most ``most``."""
    free = cores - others
    wanted = int(free + 0.5)
    if wanted > current:
        wanted = max(current, int(free + 0.25))
    return max(1, min(most, wanted))


class ThreadGovernor:
    """Sets torch's intra-op thread count to the cores other processes leave free (see the module docstring).

    ``tick()`` is cheap (a clock read) except every ``interval`` seconds, when it
    reads the CPU times and may change the count; ``close()`` restores the count
    it started with. The readers and the setter are parameters for the tests.
    """

    def __init__(
        self,
        most: int,
        cpus: set[int],
        set_threads: Callable[[int], None],
        log: Callable[[str], None] = print,
        interval: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        read_stat: Callable[[], str] = STAT.read_text,
        own_seconds: Callable[[], float] = lambda: sum(os.times()[:2]),
    ) -> None:
        self.most, self.cpus, self.set_threads, self.log, self.interval = most, cpus, set_threads, log, interval
        self.clock, self.read_stat, self.own_seconds = clock, read_stat, own_seconds
        self.ticks_per_second = os.sysconf("SC_CLK_TCK")
        self.threads = most
        self.last: tuple[float, int, float] | None = None  # (time, busy ticks, own CPU seconds) of the last reading

    def reading(self) -> tuple[float, int, float]:
        """(now, busy ticks of our cores, this process's CPU seconds)."""
        return self.clock(), busy_ticks(self.read_stat(), self.cpus), self.own_seconds()

    def tick(self) -> None:
        """Every ``interval`` seconds: adjust the thread count to the other processes' load since the last reading."""
        now = self.clock()
        if self.last is not None and now - self.last[0] < self.interval:
            return
        reading = self.reading()
        if self.last is not None:
            wall = reading[0] - self.last[0]
            busy = (reading[1] - self.last[1]) / self.ticks_per_second
            others = max(0.0, busy - (reading[2] - self.last[2])) / wall
            wanted = threads_for(others, len(self.cpus), self.most, self.threads)
            if wanted != self.threads:
                self.log(
                    f"cpu threads: {self.threads} -> {wanted}"
                    f" (other processes keep {others:.1f} of {len(self.cpus)} cores busy)"
                )
                self.set_threads(wanted)
                self.threads = wanted
        self.last = reading

    def close(self) -> None:
        """Restore the starting thread count."""
        if self.threads != self.most:
            self.set_threads(self.most)
            self.threads = self.most


def fixed_because(enabled: bool, device_type: str, threads: int, environ: Mapping[str, str]) -> str | None:
    """Why the thread count stays fixed, or None where it adapts."""
    if not enabled:
        return "--adapt-threads=false"
    if device_type != "cpu":
        return f"a {device_type} run"
    if user := user_setting(environ):
        return f"{user} is set"
    if not STAT.exists():
        return f"no {STAT}"
    return "one thread" if threads == 1 else None


@contextlib.contextmanager
def adapting(
    enabled: bool, device_type: str, log: Callable[[str], None], environ: Mapping[str, str] = os.environ
) -> Iterator[ThreadGovernor | None]:
    """A :class:`ThreadGovernor` for the run inside the block (the count restored after it), or None
    where the count stays fixed; either way one log line says which."""
    import torch

    threads = torch.get_num_threads()
    reason = fixed_because(enabled, device_type, threads, environ)
    if reason:
        log(f"cpu threads: {threads} (fixed: {reason})")
        yield None
        return
    cpus = os.sched_getaffinity(0)
    log(
        f"cpu threads: {threads}, fewer while other processes use these {len(cpus)} cores"
        " (--adapt-threads=false: fixed)"
    )
    governor = ThreadGovernor(threads, cpus, torch.set_num_threads, log)
    try:
        yield governor
    finally:
        governor.close()
