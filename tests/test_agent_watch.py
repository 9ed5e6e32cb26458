"""The processes of a torchrun run end when torchrun itself is killed (``kill -9``), instead of training on."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest
from helpers import LONG_RUN, TINY, kill_marked, read_to_end, training_torchrun

import dlrm_mlet
from mlet.parallel import agent_watch
from mlet.training.checkpoints import load_checkpoint

SIGTERM_IGNORED = {  # torchrun started with SIGTERM ignored and told to leave it so: its ranks start with it ignored
    "wrapper": ["bash", "-c", 'trap \'\' TERM; exec "$0" "$@"'],
    "env": {"PET_SIGNALS_TO_HANDLE": "SIGINT,SIGHUP,SIGQUIT"},
}


@pytest.mark.slow
@pytest.mark.parametrize("launch", [{"wrapper": [], "env": {}}, SIGTERM_IGNORED], ids=["sigterm", "sigterm-ignored"])
def test_a_run_whose_torchrun_is_killed_stops_with_one_line(tmp_path, launch) -> None:
    """``kill -9`` of torchrun mid-training: its processes, in sessions of their own, went on to the end of the run
    (here: a million batches), holding the --save-model lock; now each stops within seconds, with one line from
    rank 0 naming why (also where the other rank stopped first and rank 0's step failed), and leaves no lock file.
    Rank 0 added ``terminated (SIGTERM)`` under it; and ranks started with SIGTERM ignored went on, since the watch
    stopped them by a SIGTERM. With --save-model, the watch's SIGTERMs now stop the processes together, the run
    saved; ranks with SIGTERM ignored stop where the watch raises in them, unsaved."""
    agent = training_torchrun([*LONG_RUN, f"--save-model={tmp_path / 'a.pt'}"], str(tmp_path), **launch)
    try:
        assert agent.stdout is not None
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        killed = time.monotonic()
        rest = read_to_end(agent.stdout, 30)  # every rank has closed the pipe: every rank has ended
        assert rest is not None, f"the ranks still ran {time.monotonic() - killed:.0f} s after torchrun's kill"
    finally:
        agent.kill()
        kill_marked(str(tmp_path))  # ranks left running (without the watch: for a million batches)
    said = [line for line in rest.splitlines() if not line.startswith("Finished training it")]
    gone = (
        f"dlrm_mlet.py: rank 0: torchrun (pid {agent.pid}), which started this process, has ended; stopping its"
        " processes"
    )
    assert said.count(gone) == 1 and not (tmp_path / ".a.pt.lock").exists(), rest[-3000:]
    saving = [line for line in said if line != gone]
    if launch is SIGTERM_IGNORED:  # stopped where the watch found them
        assert saving == [], rest[-3000:]
        return
    # the watch's SIGTERMs: the processes stop together at a check, the run saved (mlet/training/stops.py)
    path = tmp_path / "a.pt"
    assert len(saving) == 2 and saving[1] == f"saved {path}; continue the run with --load-model={path}", said
    stop = re.fullmatch(r"SIGTERM(?: to rank [01])? at iteration (\d+) \(epoch 0, batch \1 of 1000000\): .*", saving[0])
    assert stop is not None and load_checkpoint(path)["position"]["iteration"] == int(stop[1]), said


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
