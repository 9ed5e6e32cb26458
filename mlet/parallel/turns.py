"""Work that the processes of a run do in turns (filling a cache on disk that the later turns reuse), and how the
others wait for a turn.

A process waiting for a turn polls the store it joined at
(:func:`~mlet.parallel.joining.joined_store`) until the turn's processes are
done, rather than waiting inside a collective: a turn that waits for another
run (its build of the same processed data, which the data layer tells through
:mod:`mlet.core.waits`) is then waited for as long as it takes, with one line
saying why, and ``--dist-timeout`` counts only the time the turn spends on its
own work. See docs/distributed.md.
"""

from __future__ import annotations

import functools
import itertools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch.distributed as dist

from mlet.core import waits
from mlet.core.errors import UserError
from mlet.core.launch import launched_local_rank
from mlet.parallel.joining import POLL_S, duration, joined_store
from mlet.parallel.process_group import T, agree, is_multi_process, share_failure

_calls = itertools.count()  # every process calls in_turns in the same order: the n-th call's keys are its own


def in_turns(step: Callable[[], T], what: str, timeout_s: int) -> T:
    """Run ``step`` once on every process, in three turns: rank 0 first, then each other host's first process,
    then the rest; a failure in a turn stops every process there, with its message (as :func:`agree`).

    For work that fills a cache on disk that the later turns reuse (the processed data): one process makes it on
    a disk all hosts share, or one per host on local disks, instead of every process at once into the same
    folder. The processes waiting for a turn stop after ``timeout_s`` (``--dist-timeout``) with one line naming
    ``what`` the turn does, not counting the time a turn's process says it waits for another run.
    """
    if not is_multi_process():
        return step()
    firsts: list = [None] * dist.get_world_size()
    dist.all_gather_object(firsts, launched_local_rank() == 0)
    call = next(_calls)
    done: list[T] = []
    for number, ranks in enumerate(turn_ranks(firsts)):
        turn = Turn(joined_store(), f"turns/{call}/{number}", ranks, what, timeout_s)
        if dist.get_rank() in ranks:
            done.append(agree(functools.partial(turn.take, step, dist.get_rank())))
        else:
            turn.wait(dist.get_rank())
            share_failure(None, ran=False)
    return done[0]


def turn_ranks(firsts: list[bool]) -> tuple[list[int], list[int], list[int]]:
    """The ranks of each turn, from whether each rank is its host's first process: rank 0; the other hosts' first
    processes; the rest."""
    ranks = range(len(firsts))
    return [0], [r for r in ranks if r != 0 and firsts[r]], [r for r in ranks if not firsts[r]]


@dataclass(frozen=True)
class Turn:
    """One turn, as ``store`` sees it: ``KEY/done`` counts its processes (``ranks``) that are done, ``KEY/waits/R``
    is what rank R of it says it waits for outside the run (empty: nothing)."""

    store: dist.Store
    key: str
    ranks: list[int]
    what: str
    timeout_s: int

    def take(self, step: Callable[[], T], rank: int) -> T:
        """Run ``step`` as this turn's process ``rank``, telling the others what it waits for meanwhile."""
        notice = f"{self.key}/waits/{rank}"
        try:
            with waits.listening(lambda what: self.store.set(notice, what or "")):
                return step()
        finally:
            self.store.add(f"{self.key}/done", 1)

    def wait(self, rank: int) -> None:
        """Wait, as process ``rank``, until this turn's processes are done: a :class:`UserError` once they have
        worked ``timeout_s`` seconds, not counting the time one of them says it waits for another run; that wait
        is said once, on stderr."""
        start, said = time.monotonic(), None
        while self.store.add(f"{self.key}/done", 0) < len(self.ranks):
            if (outside := self.waiting_outside()) is not None:
                start = time.monotonic()  # another run's work: the timeout counts this turn's own
                if outside != said:
                    said = outside
                    line = f"waiting for {outside}; --dist-timeout does not count this wait"
                    print(f"rank {rank}: {line}", file=sys.stderr, flush=True)
            elif time.monotonic() - start >= self.timeout_s:
                raise UserError(self.timed_out())
            time.sleep(POLL_S)

    def waiting_outside(self) -> str | None:
        """``rank R, which waits for WHAT``, of the first process of this turn that says it waits for another
        run; ``None`` where none does."""
        for rank in self.ranks:
            key = f"{self.key}/waits/{rank}"
            if self.store.check([key]) and (what := self.store.get(key).decode()):
                return f"rank {rank}, which waits for {what}"
        return None

    def timed_out(self) -> str:
        """The line of a wait for this turn that reached the timeout."""
        who = f"rank {self.ranks[0]}" if len(self.ranks) == 1 else "ranks " + ", ".join(map(str, self.ranks))
        return (
            f"torch.distributed: {who} did not finish {self.what} within --dist-timeout "
            f"({duration(self.timeout_s)}); give a longer --dist-timeout"
        )
