"""Check that N processes train like one: same seed and global batch, same steps.

For each scenario, ``dlrm_mlet.py`` runs once in one process and once under
``torchrun`` with N processes, and the runs are compared: the loss of every
step, the final parameters and optimizer state (gathered checkpoints), and the
test AUC and log loss. The resume check saves half-way in one layout and
continues in the other (1 -> N and N -> 1 processes), against a straight run.

    .venv/bin/python bench/distributed_equivalence.py                  # CPU processes, gloo
    python3 bench/distributed_equivalence.py --use-gpu --nproc 2       # one GPU each, NCCL

Writes ``bench/results/distributed_equivalence_{cpu,gpu}.json`` and exits 1 if
any difference exceeds ``--tol``. ``tests/test_distributed.py`` runs the same
checks with forked processes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import print_table, save

from mlet.parallel.equivalence import SCENARIOS, TOLERANCE, compare_resume, compare_scenario, subprocess_runner, worst


def main() -> None:
    """Run every scenario and the resume check, print the differences, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per process, NCCL")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--tol", type=float, default=TOLERANCE)
    parser.add_argument("--timeout", type=int, default=300, help="seconds per run")
    args = parser.parse_args()
    run = subprocess_runner(args.use_gpu, args.timeout)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [compare_scenario(name, run, Path(tmp), args.nproc) for name in SCENARIOS]
        for row in rows:
            print(row, flush=True)
        rows += compare_resume(run, Path(tmp), args.nproc)
    for row in rows:
        row["ok"] = worst(row) <= args.tol
    columns = ["scenario", "loss", "params", "optimizer_state", "auc", "logloss", "ok"]
    print_table([{**{c: row.get(c, "") for c in columns}, "ok": "yes" if row["ok"] else "NO"} for row in rows], columns)
    device = "gpu" if args.use_gpu else "cpu"
    path = save(f"distributed_equivalence_{device}", {"tolerance": args.tol, "processes": args.nproc, "rows": rows})
    print(f"wrote {path}")
    sys.exit(0 if all(row["ok"] for row in rows) else 1)


if __name__ == "__main__":
    main()
