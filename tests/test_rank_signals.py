"""A signal to one process of a torchrun run alone (``kill PID`` of one rank: an admin, a job system): the user
learns which process stopped and why, in one line; a signal to the whole run keeps its one line."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time

import pytest
from helpers import (
    LONG_RUN,
    ROOT,
    TINY,
    kill_marked,
    rank_pids,
    read_to_end,
    run_snippet,
    training_torchrun,
    wait_for,
)

from mlet.core import signals
from mlet.parallel import endings, joining

CAUSE = "the run cannot go on without it"
SUMMARY_STATUS = re.compile(r"exitcode\s*: (-?\d+) \(pid: (\d+)\)")  # torchrun's summary of the failed processes


BUSY_AFTER_STEP_TWO = """
import sys, time
sys.path.insert(0, sys.argv.pop(1))
import dlrm_mlet
step = dlrm_mlet.Trainer.step
def busy(self, batch):  # outside any collective: a long step's computing, a test, a checkpoint
    if self.iteration >= 2:
        time.sleep(3)
    return step(self, batch)
dlrm_mlet.Trainer.step = busy
sys.argv[0] = "dlrm_mlet.py"
dlrm_mlet.cli()
"""
"""A stand-in for ``dlrm_mlet.py`` (its first argument: the repository) whose processes spend 3 s outside any
collective before each step from the third on."""


def signalled(
    tmp_path, signum: int, rank: int | None, busy: bool = False, processes: int = 2
) -> tuple[list[str], dict[int, int], dict[int, int]]:
    """Signal ``rank`` alone (``None``: torchrun, which passes it on to every rank) of a training torchrun run
    (``busy``: signalled a second into :data:`BUSY_AFTER_STEP_TWO`'s wait); the ranks' lines, ``{rank: pid}`` and
    ``{pid: exit status}`` from torchrun's summary (of a run of ``processes``).

    Unless ``busy``, torchrun looks at its processes every 2 s rather than every 0.1 s, so that the other rank's
    next collective fails before torchrun's SIGTERM comes, even on a loaded machine: these runs are about the line
    of a failed collective (the busy one about a SIGTERM that comes first)."""
    script = tmp_path / "busy.py"
    script.write_text(BUSY_AFTER_STEP_TWO)
    flags = [str(ROOT), *LONG_RUN] if busy else LONG_RUN
    agent = training_torchrun(
        flags,
        str(tmp_path),
        env={} if busy else {"PET_MONITOR_INTERVAL": "2"},
        script=script if busy else ROOT / "dlrm_mlet.py",
        processes=processes,
    )
    try:
        assert agent.stdout is not None
        pids = rank_pids(agent.pid)
        if busy:  # the first step's line is out: the others come after each step
            assert agent.stdout.readline().startswith("Finished training it 2/")
            time.sleep(1)
        os.kill(agent.pid if rank is None else pids[rank], signum)
        rest = read_to_end(agent.stdout, 60)
        assert rest is not None, "the run did not end within 60 s of the signal"
    finally:
        agent.kill()
        kill_marked(str(tmp_path))
    lines = [line for line in rest.splitlines() if line.startswith("dlrm_mlet.py")]
    assert "Exception ignored" not in rest and 'dlrm_mlet.py", line' not in rest, rest[-3000:]
    return lines, pids, {int(pid): int(code) for code, pid in SUMMARY_STATUS.findall(rest)}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "how", "status"),
    [
        (signal.SIGTERM, "was terminated (SIGTERM)", 143),
        (signal.SIGINT, "was interrupted (SIGINT)", 130),
        (signal.SIGHUP, "was terminated (SIGHUP)", 129),
    ],
    ids=["sigterm", "sigint", "sighup"],
)
def test_a_signal_to_one_rank_alone_is_named_in_rank_zeros_line(tmp_path, signum, how, status) -> None:
    """``kill`` of rank 1 alone: it ended silently (only rank 0 speaks of signals), and rank 0's line said that
    another process had probably failed, 'see its message', which nobody had written. Now rank 0 names the rank,
    its pid and host, and the signal."""
    lines, pids, statuses = signalled(tmp_path, signum, rank=1)
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"dlrm_mlet.py: error: rank 0: torch.distributed: rank 1 (pid {pids[1]} on {socket.gethostname()}) {how}; "
        f"{CAUSE} ("
    ), lines
    assert statuses == {pids[1]: status, pids[0]: 1}


@pytest.mark.slow
def test_of_three_processes_one_line_names_the_one_signalled(tmp_path) -> None:
    """SIGTERM to rank 1 of 3: ranks 0 and 2 each wrote the line naming it. Now the first to write it does."""
    lines, pids, statuses = signalled(tmp_path, signal.SIGTERM, rank=1, processes=3)
    assert len(lines) == 1, lines
    assert re.fullmatch(
        rf"dlrm_mlet\.py: error: rank [02]: torch\.distributed: rank 1 \(pid {pids[1]} on"
        rf" {re.escape(socket.gethostname())}\) was terminated \(SIGTERM\); {CAUSE} \(.+\)",
        lines[0],
    ), lines
    assert statuses[pids[1]] == 143 and {statuses[pids[0]], statuses[pids[2]]} <= {1}


@pytest.mark.slow
def test_a_rank_busy_outside_collectives_when_torchrun_stops_it_names_the_rank_that_ended(tmp_path) -> None:
    """SIGTERM to rank 1 alone while both ranks are busy outside collectives: torchrun's SIGTERM, a tenth of a
    second after rank 1 ended, reached rank 0 before a failed collective would, and rank 0 said ``terminated
    (SIGTERM)`` as if the whole run had been signalled. Now its SIGTERM's arrival, after rank 1 recorded its end,
    tells it apart."""
    lines, pids, statuses = signalled(tmp_path, signal.SIGTERM, rank=1, busy=True)
    assert lines == [
        f"dlrm_mlet.py: error: rank 0: torch.distributed: rank 1 (pid {pids[1]} on {socket.gethostname()}) was "
        f"terminated (SIGTERM); {CAUSE} (then this process got SIGTERM)"
    ]
    assert statuses == {pids[1]: 143, pids[0]: 1}


@pytest.mark.slow
def test_a_rank_killed_alone_gives_a_line_that_points_to_no_message(tmp_path) -> None:
    """``kill -9`` of rank 1: nothing is recorded, and rank 0's line no longer sends the user to its message."""
    lines, pids, statuses = signalled(tmp_path, signal.SIGKILL, rank=1)
    assert len(lines) == 1 and lines[0].startswith("dlrm_mlet.py: error: rank 0: torch.distributed: "), lines
    assert lines[0].endswith(
        "(another process ended without a message: killed, e.g. by kill -9 or for lack of memory?)"
    ), lines
    assert statuses == {pids[1]: -9, pids[0]: 1}


@pytest.mark.slow
def test_a_signal_to_rank_zero_alone_gives_its_line_alone(tmp_path) -> None:
    """SIGTERM to rank 0 alone: it says its line, as for every signal; rank 1, whose collective failed, added a
    second one pointing to 'its message'. Now rank 1 finds rank 0's record and leaves the line to it."""
    lines, pids, statuses = signalled(tmp_path, signal.SIGTERM, rank=0)
    assert lines == ["dlrm_mlet.py: terminated (SIGTERM)"]
    assert statuses[pids[0]] == 143


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
def test_a_signal_to_torchrun_gives_one_line(tmp_path, signum) -> None:
    """torchrun passes its signal on to every rank: each records its end, and the run still ends with rank 0's one
    line. A SIGHUP, which torchrun passes on too, ended every rank at once without a word. (torchrun, signalled,
    prints no summary of its processes' statuses.)"""
    lines, _, _ = signalled(tmp_path, signum, rank=None)
    assert lines == [f"dlrm_mlet.py: terminated ({signum.name})"]


class SilentStore:
    """A store whose host no longer answers: every call waits."""

    def check(self, *args: object) -> bool:
        time.sleep(30)
        return False

    set = get = add = check


def test_a_store_that_does_not_answer_delays_the_end_by_a_second_at_most(monkeypatch) -> None:
    """A process on its way out gives the store :data:`endings.WAIT_S`; then nothing is known of the others, and
    it writes its line (which another process may also write) rather than none."""
    monkeypatch.setattr(joining, "_joined", [SilentStore()])
    monkeypatch.setenv("WORLD_SIZE", "2")
    start = time.monotonic()
    endings.record("was terminated (SIGTERM)")
    assert endings.others() == endings.NOTHING_KNOWN
    assert endings.first_to_speak()
    assert time.monotonic() - start < 3 * endings.WAIT_S + 1


def test_arrival_times_keep_when_a_signal_first_came(monkeypatch) -> None:
    """The wakeup descriptor's reader keeps the time a signal came (the first time), in the main thread only, as
    the kernel stamped it: with the main thread busy in Python (the reader waits for the interpreter's lock for up
    to a switch interval, here made long), the reader's own clock said it came half a second late."""
    monkeypatch.setattr(signals, "_arrived", {})
    interval = sys.getswitchinterval()
    with signals.handling({signal.SIGUSR1: lambda signum, frame: None}), signals.arrival_times(True):
        sys.setswitchinterval(2.0)
        try:
            sent = time.time()
            os.kill(os.getpid(), signal.SIGUSR1)
            while time.time() < sent + 0.5:  # busy in Python, holding the interpreter's lock
                pass
        finally:
            sys.setswitchinterval(interval)
        wait_for(lambda: signals.arrived(signal.SIGUSR1) is not None, "the signal's arrival", timeout=10)
        first = signals.arrived(signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.1)
    assert first is not None and sent - 0.001 <= first < sent + 0.2, first - sent  # the stamp: to the microsecond
    assert signals.arrived(signal.SIGUSR1) == first
    with signals.arrival_times(False):  # not wanted: nothing kept
        assert signals.arrived(signal.SIGUSR2) is None


SIGTERM_AS_THE_FAILURE_IS_READ = """
import os, signal, sys
import dlrm_mlet
from mlet.parallel import process_group
os.environ.update(WORLD_SIZE="2", RANK="0")  # rank 0 of two, its group not joined: only its way out is tried
process_group.start = lambda timeout_s: None
def peer_gone(run):
    raise RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:4001")
dlrm_mlet.execute = peer_gone
is_failure = process_group.is_communication_failure
def sigterm_meanwhile(error):  # torchrun's SIGTERM, while the failed step is looked at (a loaded machine)
    os.kill(os.getpid(), signal.SIGTERM)
    return is_failure(error)
process_group.is_communication_failure = sigterm_meanwhile
sys.argv[0] = "dlrm_mlet.py"
dlrm_mlet.cli()
"""


def test_torchruns_sigterm_while_a_failed_collective_is_looked_at_leaves_its_line() -> None:
    """torchrun's SIGTERM as rank 0 reads its failed collective's error: raised there, it ended the process with
    ``terminated (SIGTERM)`` and 143 in place of the collective's line (seen under load); now it waits."""
    done = run_snippet(SIGTERM_AS_THE_FAILURE_IS_READ, TINY, timeout=120)
    assert done.stderr == (
        "dlrm_mlet.py: error: rank 0: torch.distributed: Connection closed by peer [127.0.0.1]:4001 (another process"
        " has stopped: see its message, if it left one)\n"
    )
    assert done.returncode == 1
