"""A process started with torchrun's environment whose peers do not come: one line after a short wait saying what
it waits for, then at --dist-timeout one line naming the flag (exit status 2), no torch messages; a peer that
comes late is joined as before."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, TINY, free_port, kill_running, torchrun_environment, wait_for

from mlet.core.errors import UserError
from mlet.parallel.joining import Rendezvous, duration

TIMEOUT_S = 6


def start_rank(rank: int, port: int, out: Path, timeout_s: int = TIMEOUT_S) -> subprocess.Popen:
    """``dlrm_mlet.py`` as one of 2 processes, started by hand with torchrun's environment; its output to ``out``."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        **torchrun_environment(rank, 2, port),
    }
    command = [sys.executable, "dlrm_mlet.py", *TINY, "--num-batches=2", f"--dist-timeout={timeout_s}"]
    with open(out, "w") as handle:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)


def expected_lines(rank: int, state: str) -> list[str]:
    """What a process of 2 whose peer never comes prints: the waiting line, then the timeout."""
    return [
        f"rank {rank}: waiting for the other processes of the group: {state}; --dist-timeout {TIMEOUT_S} s",
        f"dlrm_mlet.py: error: rank {rank}: torch.distributed: the other processes did not all join within "
        f"--dist-timeout ({TIMEOUT_S} s): {state}; start each of the 2 (RANK 0..1, this MASTER_ADDR and "
        "MASTER_PORT), or give a longer --dist-timeout",
    ]


@pytest.mark.parametrize("rank", [0, 1])
def test_a_process_whose_peer_never_comes_says_what_it_waits_for_then_stops_at_the_timeout(rank, tmp_path) -> None:
    """Rank 0 alone hosts the store and counts 1 of 2; rank 1 alone finds nothing at the address."""
    port, out = free_port(), tmp_path / "out.txt"
    alone = start_rank(rank, port, out)
    code = alone.wait(120)
    state = (
        f"1 of 2 joined at 127.0.0.1:{port}"
        if rank == 0
        else f"nothing answers at 127.0.0.1:{port} yet (rank 0 hosts the group's store there)"
    )
    assert (code, out.read_text().splitlines()) == (2, expected_lines(rank, state))


def test_a_peer_that_comes_after_the_waiting_line_is_joined(tmp_path) -> None:
    port, outs = free_port(), [tmp_path / "rank0.txt", tmp_path / "rank1.txt"]
    first = start_rank(0, port, outs[0], timeout_s=24)  # the line at half of it: the peer has 12 s to start and join
    second = None
    try:
        waits = f"rank 0: waiting for the other processes of the group: 1 of 2 joined at 127.0.0.1:{port}"
        wait_for(lambda: waits in outs[0].read_text() or first.poll() is not None, "rank 0's waiting line")
        second = start_rank(1, port, outs[1], timeout_s=24)
        codes = [first.wait(120), second.wait(120)]
    finally:
        kill_running([first, second])
    said = [out.read_text() for out in outs]
    assert codes == [0, 0], said
    assert said[0].count("waiting for the other processes") == 1 and "Testing at" in said[0]
    assert said[1] == ""  # it found rank 0 waiting: nothing to say


def test_durations_read_as_minutes_when_whole() -> None:
    assert [duration(s) for s in (1800, 90, 6, 60)] == ["30 min", "90 s", "6 s", "1 min"]


TORCHRUN_ENV = {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_each_torchrun_attempt_counts_and_groups_under_its_own_keys(monkeypatch) -> None:
    """torchrun's agent keeps its store across restarts: a restart's count and gloo group must not read what the
    previous attempt's processes left there (its addresses: 'Gloo connectFullMesh failed ... Connection refused')."""
    for name, value in {**TORCHRUN_ENV, "TORCHELASTIC_RESTART_COUNT": "3"}.items():
        monkeypatch.setenv(name, value)
    place = Rendezvous.from_environment(60)
    assert (place.key, place.group_prefix) == ("dlrm_mlet/joined/3", "default_pg/3")
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    assert (place.key, place.group_prefix) == ("dlrm_mlet/joined/0", "default_pg/0")


def test_the_waiting_line_names_who_hosts_the_store(monkeypatch) -> None:
    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    assert Rendezvous.from_environment(60).host == "rank 0"
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    assert Rendezvous.from_environment(60).host == "torchrun's agent"


def test_a_process_with_world_size_but_no_rank_is_one_line(monkeypatch) -> None:
    """Read as rank 0 it would clash with the real rank 0 over the store's port."""
    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RANK")
    with pytest.raises(UserError, match=r"^RANK: not set, though WORLD_SIZE is"):
        Rendezvous.from_environment(60)
