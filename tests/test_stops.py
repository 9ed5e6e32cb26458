"""Ctrl-C and SIGTERM to a run of several processes with --save-model: the processes stop together at one step,
the run saved there (mlet/training/stops.py), whichever of them got the signal; the run resumed from that
checkpoint is the run never stopped."""

from __future__ import annotations

import functools
import os
import re
import signal

import pytest
import torch
from helpers import LONG_RUN, kill_marked, rank_pids, read_to_end, training_torchrun
from ranks import run_ranks

import dlrm_mlet
from mlet.parallel.equivalence import TOLERANCE, scenario_flags, state_differences
from mlet.training import stops
from mlet.training.checkpoints import load_checkpoint
from mlet.training.stops import FIRST_CHECK as FIRST
from mlet.training.stops import Stops

SCENARIO = "mlet-adagrad-3-tables"  # 15 steps an epoch, 2 epochs


def signal_in_step(signum: int, at: int, signalled: int, rare_checks: bool, rank: int) -> None:
    """Fault: rank ``signalled`` alone gets ``signum`` during the step that makes iteration ``at``; with
    ``rare_checks``, no check after the first but the last."""
    if rare_checks:
        stops.CHECK_S = 1e9
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
    ("signum", "at", "signalled", "rare_checks", "saved_at", "position", "words", "status"),
    [
        # one rank alone; the next check, the first
        (signal.SIGTERM, 5, 1, False, FIRST, "epoch 1, batch 1", "SIGTERM to rank 1", 143),
        # after the last check: at the end (the position after the last epoch)
        (signal.SIGINT, FIRST + 4, 0, True, 30, "epoch 2, batch 0", "Ctrl-C to rank 0", 130),
    ],
    ids=["sigterm-to-rank-1", "ctrl-c-after-the-last-check"],
)
def test_a_signal_to_one_rank_stops_all_at_one_step_and_the_saved_run_resumes_exactly(
    signum: int,
    at: int,
    signalled: int,
    rare_checks: bool,
    saved_at: int,
    position: str,
    words: str,
    status: int,
    tmp_path,
) -> None:
    """Without this, a signal during training lost the run (the checkpoint is written at the end) or, to one rank
    alone, stopped that rank wherever it was and the other with a failed collective."""
    stopped, resumed, straight = tmp_path / "stopped.pt", tmp_path / "resumed.pt", tmp_path / "straight.pt"
    fault = functools.partial(signal_in_step, signum, at, signalled, rare_checks)
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
    assert load_checkpoint(path)["position"]["iteration"] == int(stop[1])


class TwoProcesses:
    """A stand-in for the processes of a run, seen from rank 0 of 2: the other got no signal and asks for
    ``other_steps`` steps to the next check."""

    world_size, rank, device = 2, 0, torch.device("cpu")

    def __init__(self, other_steps: int) -> None:
        self.other_steps = other_steps

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        return value + torch.tensor([0, 0, 0, self.other_steps])


@pytest.mark.parametrize(
    ("other_steps", "checked"),
    [
        (10, [(FIRST, FIRST + 10), (FIRST + 10, FIRST + 20), (FIRST + 20, "stop")]),  # the other is slower
        (1000, [(FIRST, FIRST + 27), (FIRST + 27, "stop")]),  # this one is: 16 steps timed in 0.15 s, 0.25 s
    ],
)
def test_the_processes_check_about_every_quarter_second_at_the_slower_ones_pace(
    other_steps: int, checked: list, monkeypatch
) -> None:
    """A fixed step count between checks answered a signal after seconds where steps are slow (a large model, a
    CPU), against torchrun's 30 s before its kill; now the steps to each next check are agreed at each check: the
    fewest that a process asks for, a quarter of a second at its pace. A signal at iteration 30 stops at the next."""
    clock = [100.0]
    monkeypatch.setattr(stops.time, "perf_counter", lambda: clock[0])
    checks = Stops(TwoProcesses(other_steps), wanted=True)  # type: ignore[arg-type]
    seen: list[tuple[int, int | str | None]] = []
    for iteration in range(1, 60):
        if iteration == 30:
            checks.boundaries.kept = signal.SIGTERM
        if checks.step_ended(iteration):
            seen.append((iteration, "stop"))
            break
        if checks.last_check[0] == iteration:
            seen.append((iteration, checks.next_check))
        clock[0] += 0.01  # 10 ms a step
    assert seen == checked
