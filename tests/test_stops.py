"""Ctrl-C and SIGTERM to a run of several processes with --save-model: the processes stop together at one step,
the run saved there (mlet/training/stops.py), whichever of them got the signal; the run resumed from that
checkpoint is the run never stopped."""

from __future__ import annotations

import functools
import os
import re
import signal

import pytest
from helpers import LONG_RUN, kill_marked, rank_pids, read_to_end, training_torchrun
from ranks import run_ranks

import dlrm_mlet
from mlet.parallel.equivalence import TOLERANCE, scenario_flags, state_differences
from mlet.training.checkpoints import load_checkpoint
from mlet.training.stops import CHECK_EVERY

SCENARIO = "mlet-adagrad-3-tables"  # 15 steps an epoch, 2 epochs
EVERY = CHECK_EVERY["cpu"]


def signal_in_step(signum: int, at: int, signalled: int, rank: int) -> None:
    """Fault: rank ``signalled`` alone gets ``signum`` during the step that makes iteration ``at``."""
    if rank != signalled:
        return
    step = dlrm_mlet.Trainer.step

    def signalling(self, batch):
        if self.iteration == at - 1:
            os.kill(os.getpid(), signum)
        return step(self, batch)

    dlrm_mlet.Trainer.step = signalling


def saving_lines(cause: str, iteration: int, position: str, path) -> str:
    """The two log lines of a run that a signal stops at ``iteration`` (``position``: its epoch and batch)."""
    return (
        f"{cause} at iteration {iteration} ({position} of 15): saving the run to {path} before stopping (a second"
        f" one stops at once)\nsaved {path}; continue the run with --load-model={path}\n"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "at", "signalled", "saved_at", "position", "words", "status"),
    [
        # one rank alone; the next check
        (signal.SIGTERM, 5, 1, EVERY, "epoch 1, batch 1", "SIGTERM to rank 1", 143),
        # after the last check: at the end (the position after the last epoch)
        (signal.SIGINT, EVERY + 4, 0, 30, "epoch 2, batch 0", "Ctrl-C to rank 0", 130),
    ],
    ids=["sigterm-to-rank-1", "ctrl-c-after-the-last-check"],
)
def test_a_signal_to_one_rank_stops_all_at_one_step_and_the_saved_run_resumes_exactly(
    signum: int, at: int, signalled: int, saved_at: int, position: str, words: str, status: int, tmp_path
) -> None:
    """Without this, a signal during training lost the run (the checkpoint is written at the end) or, to one rank
    alone, stopped that rank wherever it was and the other with a failed collective."""
    stopped, resumed, straight = tmp_path / "stopped.pt", tmp_path / "resumed.pt", tmp_path / "straight.pt"
    fault = functools.partial(signal_in_step, signum, at, signalled)
    ranks = run_ranks(2, scenario_flags(SCENARIO, [f"--save-model={stopped}"]), tmp_path, fault=fault)
    assert [o.code for o in ranks] == [status, status], [o.stderr for o in ranks]
    line = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    assert (ranks[0].stderr, ranks[1].stderr) == (f"dlrm_mlet.py: {line}\n", "")
    assert saving_lines(words, saved_at, position, stopped) in ranks[0].stdout
    assert load_checkpoint(stopped)["position"]["iteration"] == saved_at

    for argv in ([f"--load-model={stopped}", f"--save-model={resumed}"], [f"--save-model={straight}"]):
        assert [o.code for o in run_ranks(2, scenario_flags(SCENARIO, argv), tmp_path)] == [0, 0]
    differences = state_differences(load_checkpoint(straight), load_checkpoint(resumed))
    assert differences["params"] <= TOLERANCE and differences["optimizer_state"] <= TOLERANCE, differences
    assert load_checkpoint(resumed)["history"] == load_checkpoint(straight)["history"]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["torchrun", "rank 1"])
def test_sigterm_under_torchrun_saves_the_run_once_with_one_line(target: str, tmp_path) -> None:
    """torchrun passes its SIGTERM on to each process in turn; ``kill`` of rank 1 reaches it alone: either way the
    processes stop at one check, rank 0 writes the run and says ``terminated (SIGTERM)``, as torchrun's processes
    do (rank 0, stopped for rank 1's signal, does not name rank 1 as one that ended before it: it did not)."""
    path = tmp_path / "run.pt"
    agent = training_torchrun([*LONG_RUN, f"--save-model={path}"], str(tmp_path))
    try:
        assert agent.stdout is not None
        os.kill(agent.pid if target == "torchrun" else rank_pids(agent.pid)[1], signal.SIGTERM)
        rest = read_to_end(agent.stdout, 60)
        assert rest is not None, "the run did not end within 60 s of the signal"
    finally:
        agent.kill()
        kill_marked(str(tmp_path))
    said = [line for line in rest.splitlines() if line.startswith(("dlrm_mlet.py", "SIGTERM", "saved"))]
    assert len(said) == 3 and said[2] == "dlrm_mlet.py: terminated (SIGTERM)", rest[-3000:]
    whom = "(?: to rank [01])?" if target == "torchrun" else " to rank 1"
    stop = re.fullmatch(rf"SIGTERM{whom} at iteration (\d+) \(epoch 0, batch \1 of 1000000\): .*", said[0])
    assert stop is not None and said[1] == f"saved {path}; continue the run with --load-model={path}", said
    iteration = int(stop[1])
    assert iteration % EVERY == 0 and load_checkpoint(path)["position"]["iteration"] == iteration
