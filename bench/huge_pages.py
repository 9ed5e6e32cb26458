"""Transparent huge pages for the embedding tables on CPU: with against without, same process.

``host_memory.empty_table`` advises ``MADV_HUGEPAGE`` for every table it
allocates (``DLRM_MLET_HUGE_PAGES=0`` turns that off). Two measurements, each
interleaving the two kinds of memory (A B A B ...) and reporting medians:

* row traffic: gather (``index_select``) and row update (``scatter_add_``)
  of one batch-2048 step's 53,248 random rows from a table of ``--rows``
  rows at widths d=16 (a baseline row) and K=64 (an MLET row);
* training steps of dlrm-mlet's baseline and MLET K=64 (the paper's Criteo
  DLRM at ``--scale`` of Kaggle's cardinalities), each built twice: tables
  on huge pages and on ordinary 4 KiB pages.

    .venv/bin/python bench/huge_pages.py            # real cardinalities: ~11 GB per model pair

Writes bench/results/huge_pages.json.
"""

from __future__ import annotations

import argparse
import gc
import os

import torch
from common import median_of_rounds, print_table, save, time_steps
from mlet_overhead import batches, config, train_timer
from reference_dlrm import scaled_cardinalities

from dlrm_model import DLRM
from mlet.kernels import host_memory

KINDS = {"huge": "1", "small": "0"}  # DLRM_MLET_HUGE_PAGES value per kind of page


def allocated_with(kind: str, build):
    """``build()`` with huge pages switched on (``huge``) or off (``small``) for its allocations."""
    previous = os.environ.get(host_memory.ENV_SWITCH)
    os.environ[host_memory.ENV_SWITCH] = KINDS[kind]
    try:
        return build()
    finally:
        if previous is None:
            del os.environ[host_memory.ENV_SWITCH]
        else:
            os.environ[host_memory.ENV_SWITCH] = previous


def row_traffic(rows: int, width: int, occurrences: int, reps: int, rounds: int) -> dict:
    """Milliseconds for gathering and updating ``occurrences`` random rows, on each kind of page."""
    tables = {}
    for kind in KINDS:
        tables[kind] = allocated_with(kind, lambda: host_memory.empty_table((rows, width)))
        tables[kind].uniform_(-0.01, 0.01)
    ids = torch.randint(0, rows, (occurrences,))
    grads = torch.randn(occurrences, width)
    expanded = ids.unsqueeze(1).expand(-1, width)
    timers = {}
    for kind, table in tables.items():
        timers[f"gather_{kind}"] = lambda table=table: time_steps(lambda i: table.index_select(0, ids), reps, warmup=1)
        timers[f"update_{kind}"] = lambda table=table: time_steps(
            lambda i: table.scatter_add_(0, expanded, grads), reps, warmup=1
        )
    ms = {name: 1000 * s for name, s in median_of_rounds(timers, rounds).items()}
    row = {
        "what": f"{occurrences} rows of {width} floats",
        "table_rows": rows,
        "huge_page_mib": host_memory.huge_page_bytes(tables["huge"]) >> 20,
    }
    for op in ("gather", "update"):
        row[f"{op}_ms_small"], row[f"{op}_ms_huge"] = ms[f"{op}_small"], ms[f"{op}_huge"]
        row[f"{op}_small_over_huge"] = ms[f"{op}_small"] / ms[f"{op}_huge"]
    return row


def training_steps(sizes: list[int], dim: int, hidden: int, batch: int, samples: int, rounds: int) -> dict:
    """Milliseconds per training step of one model with its tables on each kind of page."""
    data = batches(sizes, batch)
    models = {kind: allocated_with(kind, lambda: DLRM(config(sizes, dim, hidden), seed=0)) for kind in KINDS}
    steps = max(5, samples // batch)
    timers = {kind: train_timer(model, data, steps) for kind, model in models.items()}
    ms = {kind: 1000 * s for kind, s in median_of_rounds(timers, rounds).items()}
    return {
        "what": f"{'MLET K=' + str(hidden) if hidden else 'baseline'} d={dim} step, batch {batch}",
        "table_rows": sum(sizes),
        "huge_page_mib": host_memory.huge_page_bytes(models["huge"].tables.weight) >> 20,
        "step_ms_small": ms["small"],
        "step_ms_huge": ms["huge"],
        "step_small_over_huge": ms["small"] / ms["huge"],
    }


def main() -> None:
    """Run both measurements, print them, write JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="Kaggle cardinalities times this (1.0: 33.8M rows)")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--samples", type=int, default=16384, help="samples per timing round of the training steps")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sizes = scaled_cardinalities(args.scale)
    print(f"THP mode: {host_memory.transparent_huge_pages_mode()}", flush=True)
    occurrences = args.batch * len(sizes)
    traffic = []
    for width in (args.dim, args.hidden):
        traffic.append(row_traffic(sum(sizes), width, occurrences, reps=5, rounds=args.rounds))
        gc.collect()
        print(traffic[-1], flush=True)
    steps = []
    for hidden in (0, args.hidden):
        steps.append(training_steps(sizes, args.dim, hidden, args.batch, args.samples, args.rounds))
        gc.collect()
        print(steps[-1], flush=True)
    print_table(
        traffic,
        [
            "what",
            "gather_ms_small",
            "gather_ms_huge",
            "gather_small_over_huge",
            "update_ms_small",
            "update_ms_huge",
            "update_small_over_huge",
        ],
    )
    print_table(steps, ["what", "step_ms_small", "step_ms_huge", "step_small_over_huge"])
    steps[1]["mlet_over_baseline_small"] = steps[1]["step_ms_small"] / steps[0]["step_ms_small"]
    steps[1]["mlet_over_baseline_huge"] = steps[1]["step_ms_huge"] / steps[0]["step_ms_huge"]
    path = save(
        "huge_pages",
        {
            "thp_mode": host_memory.transparent_huge_pages_mode(),
            "scale": args.scale,
            "row_traffic": traffic,
            "training_steps": steps,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
