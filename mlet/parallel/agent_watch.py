"""A process that torchrun started stops when torchrun's agent is gone.

torchrun starts each process in a session of its own, so a ``kill -9`` of
torchrun (or the OOM killer choosing it) reaches none of them: they went on
unseen, training to the end and writing the checkpoint and results, or
waiting up to ``--dist-timeout`` for a store that nobody hosts any more, and
held the ``--save-model`` and cache locks all the while. A daemon thread
notices that the parent has changed (the process was handed to init or a
subreaper) and sends this process SIGTERM, which ends it as torchrun's own
SIGTERM would: one line, no temporary file left, exit status 143. See
docs/distributed.md.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from mlet.core.launch import launched_local_rank, launched_rank

POLL_S = 0.5
_watching: list[int] = []  # the agent's pid, once this process watches it (one watch per process)
_said = threading.Lock()  # taken by the first to write the line: the watch, or a collective that failed meanwhile


def started_by_torchrun() -> bool:
    """Whether torchrun's agent (``torch.distributed.run``, or ``torch.distributed.launch``, which runs it) started
    this process: it sets ``TORCHELASTIC_RUN_ID`` in each. Processes started by hand with torchrun's variables
    have no agent to outlive (a ``nohup`` launch whose shell ended must go on)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def watch_agent(prog: str, agent: int) -> None:
    """Under torchrun, start (once) the thread that stops this process when its agent, the parent ``agent`` (the
    parent's pid when the process started; gone already if it differs now), has ended."""
    if not started_by_torchrun() or _watching:
        return
    _watching.append(agent)
    threading.Thread(target=stop_when_orphaned, args=(prog, agent), daemon=True, name="agent-watch").start()


def agent_gone() -> bool:
    """Whether the watched agent has ended: a collective that fails now failed as the other processes stopped."""
    return bool(_watching) and os.getppid() != _watching[0]


def say_agent_gone(prog: str) -> None:
    """The line that torchrun has ended, once a host (by its first process) and once a process."""
    if launched_local_rank() != 0 or not _said.acquire(blocking=False):
        return
    sys.stderr.write(
        f"{prog}: rank {launched_rank()}: torchrun (pid {_watching[0]}), which started this process, has ended;"
        " stopping its processes\n"
    )
    sys.stderr.flush()


def stop_when_orphaned(prog: str, agent: int, poll_s: float = POLL_S) -> None:
    """Wait until this process's parent is no longer ``agent``, then say so (:func:`say_agent_gone`) and send this
    process SIGTERM."""
    while os.getppid() == agent:
        time.sleep(poll_s)
    say_agent_gone(prog)
    os.kill(os.getpid(), signal.SIGTERM)
