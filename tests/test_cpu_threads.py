"""The CPU thread count that makes way for other processes (mlet/training/cpu_threads.py): decisions, user
overrides, the off switch.

No timings here (they are flaky on a shared machine): the load readings are
injected, and the command-line tests check what was chosen, from the log.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, TINY, override_flags, run_cli

from mlet.training import cpu_threads
from mlet.training.cpu_threads import USER_VARIABLES, ThreadGovernor, busy_ticks, threads_for, user_setting

FOUR_BATCHES = override_flags(TINY, "--num-batches=4")
STAT = """cpu  900 0 90 9000 9 0 9 9 0 0
cpu0 100 1 10 1000 50 2 3 4 0 0
cpu1 200 0 20 2000 60 0 0 0 7 0
cpu2 400 0 40 4000 70 0 0 0 0 0
intr 12345
"""


@pytest.mark.parametrize(
    ("others", "cores", "most", "current", "threads"),
    [
        (0.0, 2, 2, 2, 2),  # alone: every core
        (0.4, 2, 2, 2, 2),
        (0.6, 2, 2, 2, 1),  # another process holds most of a core
        (1.0, 2, 2, 2, 1),  # beside a second copy of itself
        (2.0, 2, 2, 1, 1),  # never fewer than 1
        (0.4, 2, 2, 1, 1),  # a core is taken back only when three quarters free
        (0.2, 2, 2, 1, 2),
        (0.0, 16, 8, 8, 8),  # never more than it started with
        (5.2, 16, 16, 16, 11),
        (5.6, 16, 16, 8, 10),
    ],
)
def test_threads_are_the_cores_others_leave_free(
    others: float, cores: int, most: int, current: int, threads: int
) -> None:
    assert threads_for(others, cores, most, current) == threads


def test_busy_ticks_of_our_cores_leave_out_idle_and_io_wait() -> None:
    assert busy_ticks(STAT, {0}) == 100 + 1 + 10 + 2 + 3 + 4
    assert busy_ticks(STAT, {0, 1}) == 120 + 220  # guest time (cpu1's 7) is inside user time already
    assert busy_ticks(STAT, set()) == 0


def test_user_setting_names_the_first_threading_variable_set() -> None:
    assert user_setting({}) is None
    assert user_setting({"OMP_NUM_THREADS": ""}) is None
    assert user_setting({"HOME": "/", "OMP_WAIT_POLICY": "passive", "OMP_NUM_THREADS": "3"}) == "OMP_NUM_THREADS=3"
    assert user_setting({"GOMP_SPINCOUNT": "1000"}) == "GOMP_SPINCOUNT=1000"


class FakeMachine:
    """A 2-core machine's clock and CPU times, advanced by hand: ``run(seconds, ours, others)`` (in cores)."""

    def __init__(self) -> None:
        self.now, self.busy, self.own, self.reads = 0.0, 0, 0.0, 0

    def run(self, seconds: float, ours: float, others: float) -> None:
        self.now += seconds
        self.busy += round((ours + others) * seconds * os.sysconf("SC_CLK_TCK"))
        self.own += ours * seconds

    def stat(self) -> str:
        self.reads += 1
        return f"cpu0 {self.busy} 0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0 0 0\n"

    def governor(self, set_threads, log=lambda line: None) -> ThreadGovernor:
        return ThreadGovernor(
            2,
            {0, 1},
            set_threads,
            log,
            interval=0.5,
            clock=lambda: self.now,
            read_stat=self.stat,
            own_seconds=lambda: self.own,
        )


def test_governor_makes_way_for_other_processes_and_takes_the_cores_back() -> None:
    machine, counts, lines = FakeMachine(), [], []
    governor = machine.governor(counts.append, lines.append)
    governor.tick()  # the first reading
    machine.run(0.6, ours=1.0, others=1.0)  # a second copy started: half the 2 cores each
    governor.tick()
    assert counts == [1] and governor.threads == 1
    assert lines == ["cpu threads: 2 -> 1 (other processes keep 1.0 of 2 cores busy)"]
    machine.run(0.6, ours=1.0, others=1.0)  # still there: no change
    governor.tick()
    machine.run(0.6, ours=1.1, others=0.0)  # it ended
    governor.tick()
    assert counts == [1, 2]
    governor.close()  # at the starting count already: nothing to restore
    assert counts == [1, 2]


def test_governor_reads_the_load_only_every_interval_and_restores_the_count() -> None:
    machine, counts = FakeMachine(), []
    governor = machine.governor(counts.append)
    governor.tick()
    machine.run(0.2, ours=1.0, others=1.0)
    governor.tick()  # too soon: not read
    assert machine.reads == 1 and counts == []
    machine.run(0.4, ours=1.0, others=1.0)
    governor.tick()
    assert machine.reads == 2 and counts == [1]
    governor.close()
    assert counts == [1, 2] and governor.threads == 2


@pytest.mark.parametrize(
    ("enabled", "device", "threads", "environ", "reason"),
    [
        (True, "cpu", 2, {}, None),
        (False, "cpu", 2, {}, "--adapt-threads=false"),
        (True, "cuda", 2, {}, "a cuda run"),
        (True, "cpu", 4, {"OMP_NUM_THREADS": "4"}, "OMP_NUM_THREADS=4 is set"),
        (True, "cpu", 1, {}, "one thread"),
    ],
)
def test_when_the_count_stays_fixed(
    enabled: bool, device: str, threads: int, environ: dict, reason: str | None
) -> None:
    assert cpu_threads.fixed_because(enabled, device, threads, environ) == reason


def clear_user_variables(monkeypatch) -> None:
    for name in USER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.skipif(
    torch.get_num_threads() < 2 or not cpu_threads.STAT.exists(), reason="needs 2 torch threads and /proc/stat"
)
def test_adapting_changes_torch_threads_on_this_thread_and_restores_them(monkeypatch) -> None:
    clear_user_variables(monkeypatch)
    start, lines = torch.get_num_threads(), []
    machine = FakeMachine()
    with cpu_threads.adapting(True, "cpu", lines.append) as governor:
        assert governor is not None and lines[0].startswith(f"cpu threads: {start}, fewer while other processes use")
        governor.clock, governor.read_stat, governor.own_seconds = (
            (lambda: machine.now),
            machine.stat,
            (lambda: machine.own),
        )
        governor.cpus = {0, 1}
        governor.tick()
        machine.run(1.0, ours=0.5, others=1.0)
        governor.tick()
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == start


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs 2 torch threads")
def test_the_default_run_adapts_and_leaves_the_count_as_it_was(capsys, monkeypatch) -> None:
    clear_user_variables(monkeypatch)
    start = torch.get_num_threads()
    code, out, _ = run_cli(FOUR_BATCHES, capsys)
    assert code == 0 and f"cpu threads: {start}, fewer while other processes use" in out
    assert torch.get_num_threads() == start


def test_the_off_switch_keeps_the_count(capsys, monkeypatch) -> None:
    clear_user_variables(monkeypatch)
    code, out, _ = run_cli([*FOUR_BATCHES, "--adapt-threads=false"], capsys)
    assert code == 0 and f"cpu threads: {torch.get_num_threads()} (fixed: --adapt-threads=false)" in out


def test_a_users_threading_variable_is_respected(capsys, monkeypatch) -> None:
    clear_user_variables(monkeypatch)
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    code, out, _ = run_cli(FOUR_BATCHES, capsys)
    assert code == 0 and "(fixed: OMP_WAIT_POLICY=passive is set)" in out


def test_a_users_omp_num_threads_is_the_count_the_run_trains_with() -> None:
    """In a fresh process: torch reads OMP_NUM_THREADS when it loads, and the run keeps that count."""
    code = (
        "import sys, torch, dlrm_mlet; code = dlrm_mlet.main(sys.argv[1:]);"
        " print('threads after', torch.get_num_threads()); sys.exit(code)"
    )
    env = {k: v for k, v in os.environ.items() if k not in USER_VARIABLES} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, *FOUR_BATCHES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "cpu threads: 1 (fixed: OMP_NUM_THREADS=1 is set)" in done.stdout and "threads after 1" in done.stdout
