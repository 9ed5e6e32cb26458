"""The processes of a torchrun run end when torchrun itself is killed (``kill -9``), instead of training on."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import IO

import pytest
from helpers import ROOT, TINY, torchrun_command

import dlrm_mlet
from mlet.parallel import agent_watch

MARK = "DLRM_MLET_TEST_AGENT_WATCH"

LONG_RUN = [  # random data, far more batches than the test waits for
    "--data-generation=random",
    "--arch-embedding-size=50-60-70",
    "--arch-sparse-feature-size=4",
    "--mlet-hidden=8",
    "--arch-mlp-bot=13-8-4",
    "--arch-mlp-top=8-1",
    "--mini-batch-size=32",
    "--num-batches=1000000",
    "--print-freq=1",
    "--dist-backend=gloo",
]


@pytest.mark.slow
def test_a_run_whose_torchrun_is_killed_stops_with_one_line(tmp_path) -> None:
    """``kill -9`` of torchrun mid-training: its processes, in sessions of their own, went on to the end of the run
    (here: a million batches), holding the --save-model lock; now each stops within seconds, with rank 0 naming
    why (also where the other rank stopped first and rank 0's step failed), and leaves no lock file."""
    save = tmp_path / "a.pt"
    command = torchrun_command([*LONG_RUN, f"--save-model={save}"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), MARK: str(tmp_path)}
    agent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    try:
        assert agent.stdout is not None
        seen = []
        for line in agent.stdout:  # the ranks are training once the first step's line is out
            seen.append(line)
            if line.startswith("Finished training it"):
                break
        assert seen and seen[-1].startswith("Finished training it"), "".join(seen)[-3000:]
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        killed = time.monotonic()
        rest = read_to_end(agent.stdout, 30)  # every rank has closed the pipe: every rank has ended
        assert rest is not None, f"the ranks still ran {time.monotonic() - killed:.0f} s after torchrun's kill"
    finally:
        agent.kill()
        kill_marked(str(tmp_path))  # ranks left running (without the watch: for a million batches)
    assert f"rank 0: torchrun (pid {agent.pid}), which started this process, has ended" in rest, rest[-3000:]
    assert "Traceback" not in rest and "another process has probably failed" not in rest, rest[-3000:]
    assert not (tmp_path / ".a.pt.lock").exists()


def read_to_end(stream: IO[str], timeout_s: float) -> str | None:
    """What is left on ``stream`` up to its end, or None if it has not ended within ``timeout_s``."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stream.read()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return got[0] if got else None


def kill_marked(mark: str) -> None:
    """SIGKILL every process whose environment has ``MARK`` set to ``mark`` (this test's ranks)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if f"{MARK}={mark}".encode() in environ.read().split(b"\0"):
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:  # gone, or not ours to read
            continue


def test_a_collective_that_fails_once_torchrun_is_gone_says_that_torchrun_ended(monkeypatch, capsys) -> None:
    """The other rank's watch saw torchrun's end first and stopped it, so this rank's step failed before its own
    watch looked: it said 'another process has probably failed: see its message', and no process had one."""
    monkeypatch.setattr(agent_watch, "_watching", [os.getppid() + 1])  # an agent that is not the parent now
    monkeypatch.setattr(agent_watch, "_said", threading.Lock())

    def peer_gone(run) -> None:
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:4001")

    monkeypatch.setattr(dlrm_mlet, "execute", peer_gone)
    assert dlrm_mlet.main(TINY) == 143
    err = capsys.readouterr().err
    assert (
        err == f"dlrm_mlet.py: rank 0: torchrun (pid {os.getppid() + 1}), which started this process, has ended;"
        " stopping its processes\n"
    )
