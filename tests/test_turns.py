"""Under torchrun, rank 0 reads (on first use, preprocesses) the data set while the others wait for its turn
(mlet/parallel/turns.py): a wait of rank 0's for another run's build of the same processed data is waited for
past --dist-timeout, with one line saying why; a turn that takes longer than that for its own work stops the
waiting processes with one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch.distributed as dist
from helpers import BUILD_HELD, ROOT, free_port, kill_running, torchrun_environment, wait_for

from mlet.core import waits
from mlet.core.errors import UserError
from mlet.data.preprocessing.raw_generate import RawGenerator
from mlet.parallel.turns import Turn, turn_ranks

TIMEOUT_S = 8
HOLDER = (
    BUILD_HELD
    + """
raw, target = sys.argv[3:5]
cache.prepare(raw, target, "kaggle", "dlrm", progress=False, log=print)
"""
)


def start_rank(rank: int, port: int, raw: Path, processed: Path, out: Path) -> subprocess.Popen:
    """``dlrm_mlet.py`` on the data set ``raw`` (processed into ``processed``) as one of 2 processes, started by hand
    with torchrun's environment; its output to ``out``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **torchrun_environment(rank, 2, port)}
    flags = [
        *("--data-generation=dataset", "--data-set=kaggle", f"--raw-data-file={raw}"),
        *(f"--processed-data-file={processed}", "--arch-sparse-feature-size=4", "--arch-mlp-bot=13-8-4"),
        *("--arch-mlp-top=8-1", "--mini-batch-size=64", "--num-batches=2", "--progress=false"),
        f"--dist-timeout={TIMEOUT_S}",
    ]
    with open(out, "w") as handle:
        return subprocess.Popen(
            [sys.executable, "dlrm_mlet.py", *flags], cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT
        )


def test_ranks_wait_past_the_timeout_while_rank_zero_waits_for_another_runs_build(tmp_path) -> None:
    """The other rank waited in a collective and stopped at --dist-timeout, though nothing was wrong."""
    raw, target, building, go = tmp_path / "train.txt", tmp_path / "processed", tmp_path / "building", tmp_path / "go"
    RawGenerator("kaggle", 3000, seed=3, scale=0.001).write(raw)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(building), str(go), str(raw), str(target)], cwd=ROOT, env=env
    )
    port, outs = free_port(), [tmp_path / "rank0.txt", tmp_path / "rank1.txt"]
    ranks: list[subprocess.Popen | None] = [None, None]
    try:
        wait_for(lambda: building.exists() or holder.poll() is not None, "the other run's build")
        ranks = [start_rank(rank, port, raw, target, out) for rank, out in enumerate(outs)]
        said = f"waiting for rank 0, which waits for another run's build of {target} (pid {holder.pid} on"
        wait_for(lambda: said in outs[1].read_text() or any(r.poll() is not None for r in ranks), "rank 1's line")
        time.sleep(TIMEOUT_S + 2)  # the wait outlasts --dist-timeout
        go.touch()
        codes = [rank.wait(120) for rank in ranks if rank is not None]
        assert holder.wait(120) == 0
    finally:
        kill_running([holder, *ranks])
    lines = [out.read_text().splitlines() for out in outs]
    assert codes == [0, 0], lines
    assert lines[1] == [
        f"rank 1: waiting for rank 0, which waits for another run's build of {target} (pid {holder.pid} on "
        f"{socket.gethostname()}); --dist-timeout does not count this wait"
    ]
    assert lines[0][0].startswith(f"waiting for another run's build of {target} (pid {holder.pid} on ")
    assert f"using processed data in {target}" in lines[0][1] and "Testing at" in "\n".join(lines[0])


def test_a_turn_that_works_past_the_timeout_stops_the_waiting_process_with_one_line() -> None:
    turn = Turn(dist.HashStore(), "turns/0/0", [0], "reading the data set", timeout_s=1)
    start = time.monotonic()
    with pytest.raises(UserError) as stopped:
        turn.wait(rank=1)
    assert time.monotonic() - start >= 1
    assert str(stopped.value) == (
        "torch.distributed: rank 0 did not finish reading the data set within --dist-timeout (1 s); give a longer "
        "--dist-timeout"
    )


def test_the_timeout_counts_a_turns_own_work_after_its_wait_for_another_run(capsys) -> None:
    """1.5 s of waiting for another run, then 0.5 s of the turn's own work, under a timeout of 1 s."""
    turn = Turn(dist.HashStore(), "turns/0/0", [0, 2], "reading the data set", timeout_s=1)
    other = threading.Thread(target=turn.take, args=(lambda: None, 2))

    def rank_zero() -> None:
        waits.waiting_for("another run's build of DIR (pid 7 on host)")
        time.sleep(1.5)
        waits.done_waiting()
        time.sleep(0.5)

    taking = threading.Thread(target=turn.take, args=(rank_zero, 0))
    other.start()
    other.join()
    taking.start()
    try:
        turn.wait(rank=1)
    finally:
        taking.join()
    assert capsys.readouterr().err == (
        "rank 1: waiting for rank 0, which waits for another run's build of DIR (pid 7 on host); --dist-timeout does "
        "not count this wait\n"
    )


def test_turns_are_rank_zero_then_the_other_hosts_first_processes_then_the_rest() -> None:
    assert turn_ranks([True, False, True, False]) == ([0], [2], [1, 3])
    assert turn_ranks([True, False]) == ([0], [], [1])
