"""Training throughput on CPU: dlrm-mlet vs an upstream-style reference, same process.

For each (tables, d, batch) configuration it times training steps (forward,
backward, SGD) of four models on the same in-memory random batches:
the reference baseline and reference MLET (one EmbeddingBag / Linear per
table in a Python loop, as upstream DLRM and the MLET authors' fork), and
dlrm-mlet's baseline and MLET. Rounds are interleaved and medians reported.

    .venv/bin/python bench/cpu_throughput.py                    # Kaggle config, real cardinalities
    .venv/bin/python bench/cpu_throughput.py --scale 0.01 --quick

Writes bench/results/cpu_throughput.json.
"""

from __future__ import annotations

import argparse
import gc

import torch
from common import harness_sgd_step, median_of_rounds, print_table, save, time_steps
from reference_dlrm import ReferenceDLRM, random_one_hot, scaled_cardinalities

from dlrm_model import DLRM, ModelConfig
from mlet.core.batch import Batch, SparseFeatures


def reference_step(model: ReferenceDLRM, batches: list, lr: float):
    """A closure doing one upstream-style training step on batch ``i % len(batches)``."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCELoss()
    prepared = []
    for dense, ids, labels in batches:
        batch = ids.shape[0]
        offsets = [torch.arange(batch) for _ in range(ids.shape[1])]
        indices = [ids[:, t].contiguous() for t in range(ids.shape[1])]
        prepared.append((dense, offsets, indices, labels))

    def step(i: int) -> None:
        dense, offsets, indices, labels = prepared[i % len(prepared)]
        loss = loss_fn(model(dense, offsets, indices), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def ours_step(model: DLRM, batches: list, lr: float):
    """A closure doing one dlrm-mlet training step on batch ``i % len(batches)``, as ``dlrm_mlet.py``
    does by default (``--embedding-update=fused``: table rows updated inside the backward)."""
    train_step = harness_sgd_step(model, lr)
    prepared = [Batch(dense, SparseFeatures.from_ids(ids), labels) for dense, ids, labels in batches]

    def step(i: int) -> None:
        train_step(prepared[i % len(prepared)])

    return step


def bench_config(sizes: list[int], dim: int, hidden: int, batch: int, args: argparse.Namespace) -> dict:
    """Time reference and ours for one configuration (MLET if ``hidden``)."""
    bottom = [13, 512, 256, 64, dim]
    top = [512, 256, 1]
    batches = [random_one_hot(sizes, batch, 13, seed) for seed in range(4)]
    steps = max(5, args.samples // batch)
    torch.manual_seed(0)
    ref = ReferenceDLRM(sizes, dim, bottom, top, hidden)
    ours = DLRM(ModelConfig(tuple(sizes), dim, tuple(bottom), tuple(top), mlet_hidden=hidden), seed=0)
    ref_step, our_step = reference_step(ref, batches, 0.1), ours_step(ours, batches, 0.1)
    timers = {
        "reference": lambda: time_steps(ref_step, steps, warmup=3),
        "ours": lambda: time_steps(our_step, steps, warmup=3),
    }
    seconds = median_of_rounds(timers, args.rounds)
    return {
        "model": f"MLET K={hidden}" if hidden else "baseline",
        "d": dim,
        "batch": batch,
        "reference_samples_per_s": batch / seconds["reference"],
        "ours_samples_per_s": batch / seconds["ours"],
        "speedup": seconds["reference"] / seconds["ours"],
        "ours_ms_per_step": 1000 * seconds["ours"],
    }


def main() -> None:
    """Run the grid, print the table, write JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="scale Kaggle's cardinalities (1.0: real, 33.8M rows)")
    p.add_argument("--dims", type=int, nargs="+", default=[4, 16])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[128, 2048])
    p.add_argument("--samples", type=int, default=40_000, help="samples per timing round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    sizes = scaled_cardinalities(args.scale)
    rows = []
    for dim in args.dims:
        for batch in args.batches:
            for hidden in (0, args.hidden):
                rows.append(bench_config(sizes, dim, hidden, batch, args))
                gc.collect()  # free this configuration's models before the next
                print(rows[-1], flush=True)
    by_key = {(r["d"], r["batch"], r["model"]): r for r in rows}
    for r in rows:
        if r["model"] != "baseline":
            base = by_key[(r["d"], r["batch"], "baseline")]
            r["mlet_overhead_vs_our_baseline"] = base["ours_samples_per_s"] / r["ours_samples_per_s"]
            r["ref_mlet_overhead"] = base["reference_samples_per_s"] / r["reference_samples_per_s"]
    print_table(
        rows, ["model", "d", "batch", "reference_samples_per_s", "ours_samples_per_s", "speedup", "ours_ms_per_step"]
    )
    path = save("cpu_throughput", {"table_rows": sum(sizes), "scale": args.scale, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
