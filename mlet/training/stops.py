"""Where Ctrl-C and SIGTERM end training: at a step that the run's checkpoint (``--save-model``) can keep.

One process: a signal inside a step waits for the step's end; one between steps (a test, a save, the wait for a
batch) raises at once (:class:`~mlet.core.signals.AtBoundaries`). Several processes (torchrun) must stop at one
step to write one checkpoint together, and a signal reaches them at different steps (torchrun passes its own on to
each in turn; ``kill`` of one rank reaches that one alone). So there a signal waits for the next check, every
:data:`CHECK_EVERY` steps, where the processes sum what each got (one small all-reduce) and, if any got one, all
save and stop at that step. Without ``--save-model`` nothing waits: there is nothing to keep.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from mlet.core.signals import AtBoundaries, signal_word
from mlet.training.processes import Parallel

CHECK_EVERY = {"cuda": 256, "cpu": 16}
"""Steps between two checks in a run of several processes, by device type. A check waits for the device (the host
reads a collective's result): on an H200 a step takes 0.3-0.5 ms, so every 256 steps (about 0.1 s) it costs under
0.1% of the time; a CPU step takes milliseconds, so 16 steps are about as long. Either way a signal is answered
well within the 30 s torchrun gives its processes before it kills them."""


class Stops:
    """How this process's training loop meets Ctrl-C and SIGTERM (SIGHUP under torchrun); ``wanted``: the run
    has a checkpoint to write (else they end the loop wherever they come, as elsewhere)."""

    def __init__(self, parallel: Parallel, wanted: bool) -> None:
        self.parallel, self.wanted = parallel, wanted
        self.boundaries = AtBoundaries()
        self.every = CHECK_EVERY.get(parallel.device.type, CHECK_EVERY["cpu"]) if parallel.world_size > 1 else 0

    @property
    def together(self) -> bool:
        """Whether the processes agree on the step to stop at (a run of several)."""
        return self.every > 0

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
        if not self.wanted or iteration % self.every:
            return {}
        return self.agree()

    def at_the_end(self) -> dict[int, int]:
        """After the last step (every process): a last check, so that no signal that waited is lost."""
        return self.agree() if self.together and self.wanted else {}

    def agree(self) -> dict[int, int]:
        """``{rank: signal}`` of the processes that got one since the last check (a collective)."""
        mine = torch.zeros(self.parallel.world_size, dtype=torch.int64)
        mine[self.parallel.rank] = self.boundaries.kept or 0
        summed = self.parallel.all_sum(mine)
        assert isinstance(summed, torch.Tensor)
        return {rank: signum for rank, signum in enumerate(summed.tolist()) if signum}

    @property
    def stopped_midway(self) -> bool:
        """Whether one process's signal ended its step midway (a second signal, or an exception inside it): its
        update may be partial, not to be saved."""
        return not self.together and self.boundaries.inside

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
