"""What the other processes of a run say when one fails: one line each, nothing after it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import ROOT, free_port, torchrun_environment

from mlet.parallel.equivalence import scenario_flags

RANK = """
import os, signal, sys, threading
import dlrm_mlet
from test_distributed import failing_step_on_rank_one
failing_step_on_rank_one(int(os.environ["RANK"]))  # fails in its fifth step
if os.environ["RANK"] == "0":  # torchrun's SIGTERM comes as the failed step's batch prefetcher is closed
    join = threading.Thread.join
    def join_after_sigterm(self, timeout=None):
        if self.name == "batch-prefetch":
            os.kill(os.getpid(), signal.SIGTERM)
        return join(self, timeout)
    threading.Thread.join = join_after_sigterm
sys.argv[0] = "dlrm_mlet.py"
dlrm_mlet.cli()
"""


@pytest.mark.slow
def test_torchruns_sigterm_after_a_ranks_error_line_ends_it_without_a_traceback() -> None:
    """Rank 1 fails; rank 0 says that a collective failed and, while it frees the failed step (which closes its
    batch prefetcher), gets torchrun's SIGTERM: it ended with a second message, ``Exception ignored in: <generator
    object prefetch ...>`` and a traceback; now the line alone, exit status 1."""
    port = free_port()
    flags = scenario_flags("mlet-sgd-4-tables", ["--dist-timeout=30"])
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={
                **os.environ,
                **torchrun_environment(rank, 2, port),
                "OMP_NUM_THREADS": "1",
                "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}",
            },
        )
        for rank in range(2)
    ]
    try:
        outcomes = [rank.communicate(timeout=120) for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    assert outcomes[1][1] == "dlrm_mlet.py: error: rank 1: simulated failure in a training step\n"
    lines = outcomes[0][1].splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlrm_mlet.py: error: rank 0: torch.distributed: "), lines
    assert ranks[0].returncode == 1
