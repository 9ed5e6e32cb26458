"""Where Ctrl-C and SIGTERM end training: at a step that the run's checkpoint (``--save-model``) can keep.

One process: a signal inside a step waits for the step's end; one between steps (a test, a save, the wait for a
batch) raises at once (:class:`~mlet.core.signals.AtBoundaries`). Several processes (torchrun) must stop at one
step to write one checkpoint together, and a signal reaches them at different steps (torchrun passes its own on to
each in turn; ``kill`` of one rank reaches that one alone). So there a signal waits for the next check, about every
:data:`CHECK_S` seconds, where the processes sum what each got (one small all-reduce) and, if any got one, all
save and stop at that step. Without ``--save-model`` nothing waits: there is nothing to keep.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

from mlet.core.signals import AtBoundaries, signal_word
from mlet.training.processes import Parallel

FIRST_CHECK = 16
"""Steps from the start (or resume) to the first check in a run of several processes, before any step was timed."""
CHECK_S = 0.25
"""About how long between two checks: each waits for the device (the host reads a collective's result), about
0.1 ms on a GPU, so under 0.1% of the time; and a signal is answered well within the 30 s torchrun gives its
processes before it kills them. The steps to the next check are agreed at each check, from the slowest process's
step time since the last one, so that a slow step (a large model, a CPU) does not stretch the wait."""
MOST_STEPS = 4096
"""The most steps between two checks (a GPU step of 0.06 ms would ask for more)."""


class Stops:
    """How this process's training loop meets Ctrl-C and SIGTERM (SIGHUP under torchrun); ``wanted``: the run
    has a checkpoint to write (else they end the loop wherever they come, as elsewhere)."""

    def __init__(self, parallel: Parallel, wanted: bool) -> None:
        self.parallel, self.wanted = parallel, wanted
        self.boundaries = AtBoundaries()
        self.together = parallel.world_size > 1  # the processes agree on the step to stop at
        self.next_check: int | None = None  # the iteration of the next check (several processes), once training
        self.last_check: tuple[int, float] = (0, 0.0)  # the iteration and time of the last one

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Around the training loop: the signals wait as the module docstring says (several processes: always, up
        to a check)."""
        self.boundaries.inside = self.together and self.wanted
        with self.boundaries.watching(self.wanted):
            yield

    def step_begins(self) -> None:
        """Before a step (one process: a signal now waits for its end)."""
        if not self.together:
            self.boundaries.inside = True

    def step_ended(self, iteration: int) -> dict[int, int]:
        """After the step that made ``iteration``: one process raises for a signal that came during it; several,
        at a check, give ``{rank: signal}`` of the processes that got one (empty: none, or no check now)."""
        if not self.together:
            self.boundaries.inside = False
            self.boundaries.take()
            return {}
        if not self.wanted:
            return {}
        if self.next_check is None:  # the first step of this run (the same iteration on every process)
            self.next_check, self.last_check = iteration - 1 + FIRST_CHECK, (iteration - 1, time.perf_counter())
        if iteration < self.next_check:
            return {}
        return self.agree(iteration)

    def at_the_end(self) -> dict[int, int]:
        """After the last step (every process): a last check, so that no signal that waited is lost."""
        return self.agree() if self.together and self.wanted else {}

    def agree(self, iteration: int | None = None) -> dict[int, int]:
        """``{rank: signal}`` of the processes that got one since the last check (a collective); at the check of
        ``iteration``, also the steps to the next check (:data:`CHECK_S`), the fewest that a process asks for."""
        world, rank = self.parallel.world_size, self.parallel.rank
        mine = torch.zeros(2 * world, dtype=torch.int64)  # each process's signal, then the steps it asks for
        mine[rank] = self.boundaries.kept or 0
        if iteration is not None:
            mine[world + rank] = self.steps_asked(iteration)
        summed = self.parallel.all_sum(mine)
        assert isinstance(summed, torch.Tensor)
        got = summed.tolist()
        if iteration is not None:
            self.next_check, self.last_check = iteration + min(got[world:]), (iteration, time.perf_counter())
        return {rank: signum for rank, signum in enumerate(got[:world]) if signum}

    def steps_asked(self, iteration: int) -> int:
        """The steps this process asks for to the next check: :data:`CHECK_S` at its step time since the last."""
        steps, seconds = iteration - self.last_check[0], time.perf_counter() - self.last_check[1]
        return max(1, min(MOST_STEPS, round(CHECK_S * steps / max(seconds, 1e-9))))

    @property
    def saves_on_the_way_out(self) -> bool:
        """Whether the loop that a signal just ended is this process's to save as it ends: one process with a
        checkpoint to write, stopped between steps (not midway, by a second signal or an exception inside a step:
        its update may be partial). Several processes saved where they agreed to stop (:meth:`agree`)."""
        return self.wanted and not self.together and not self.boundaries.inside

    def cause(self, signals: dict[int, int]) -> str:
        """The log's words for ``signals`` (:meth:`agree`): ``SIGTERM`` where every process got it, else whom
        (``SIGTERM to rank 1``)."""
        ranks_of: dict[int, list[int]] = {}
        for rank, signum in sorted(signals.items()):
            ranks_of.setdefault(signum, []).append(rank)
        words = []
        for signum, ranks in ranks_of.items():
            word = signal_word(signum)
            if len(ranks) < self.parallel.world_size:
                word += f" to rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"
            words.append(word)
        return "; ".join(words)

    def stop(self, signals: dict[int, int]) -> None:
        """End the loop on this process, as its own signal does, or (it got none) the lowest rank's."""
        self.boundaries.raise_for(signals.get(self.parallel.rank, signals[min(signals)]), agreed=True)
