"""Ranks of a multi-process run started by hand, without torchrun: each forked from a server that has torch loaded
(so they cost no interpreter start), given torchrun's environment (``RANK``, ``WORLD_SIZE``, ...), then running
``dlrm_mlet.main``."""

from __future__ import annotations

import faulthandler
import io
import json
import multiprocessing
import os
import traceback
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import torch
from helpers import free_port, torchrun_environment

import dlrm_mlet
from mlet.parallel.equivalence import Outcome

RUN_TIMEOUT_S = 120
Fault = Callable[[int], None]
# Ranks are forked from a clean single-threaded server that has the heavy modules loaded: fast to
# start, and free of locks that this process's threads (prefetching, OpenMP) might hold at a fork.
RANKS = multiprocessing.get_context("forkserver")
RANKS.set_forkserver_preload(
    ["torch", "torch._dynamo", "torch.distributed", "torch.nn.parallel", "numpy", "sklearn.metrics", "tqdm"]
)


# -- running ranks -------------------------------------------------------------
def rank_main(rank: int, world: int, port: int, argv: list[str], out: str, fault: Fault | None) -> None:
    """One forked rank: torchrun's environment, then the command line, output captured to ``out``."""
    os.environ.update(torchrun_environment(rank, world, port))
    torch.set_num_threads(1)
    stacks = open(f"{out}.stacks", "w")  # noqa: SIM115 (open until the process ends)
    faulthandler.dump_traceback_later(RUN_TIMEOUT_S - 15, file=stacks)  # where a hung rank waits
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            if fault:
                fault(rank)
            code = dlrm_mlet.main(argv)
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
        except BaseException:
            traceback.print_exc()
            code = 99
    Path(out).write_text(json.dumps({"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}))


def run_ranks(world: int, argv: list[str], tmp: Path, fault: Fault | None = None) -> list[Outcome]:
    """Run the command line in ``world`` forked processes; each rank's outcome."""
    port, outs = free_port(), [tmp / f"rank{r}-{os.getpid()}-{free_port()}.json" for r in range(world)]
    procs = [RANKS.Process(target=rank_main, args=(r, world, port, argv, str(outs[r]), fault)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(RUN_TIMEOUT_S)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} still running after {RUN_TIMEOUT_S} s:\n" + "\n".join(
        Path(f"{outs[r]}.stacks").read_text() for r in hung
    )
    results = [json.loads(out.read_text()) for out in outs]
    return [Outcome(r["code"], r["stdout"], r["stderr"]) for r in results]


def in_process(argv: list[str]) -> Outcome:
    """The command line in this process (a single-process run)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = dlrm_mlet.main(argv)
    return Outcome(code, stdout.getvalue(), stderr.getvalue())
