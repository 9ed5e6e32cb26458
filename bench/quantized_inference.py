"""Inference with row-wise int8 / int4 tables against float32: speed and bytes, on CPU.

Model: the paper's Criteo DLRM (bottom 13-512-256-64-d, top 512-256-1, 26
tables with Kaggle's cardinalities times ``--scale``), plain tables of width d
(what a collapsed MLET or baseline model serves), random one-hot batches in
memory. For each d and batch size:

* the tables alone: the pooled lookups of a batch, float32 ``embedding_bag``
  against torch's ``quantized::embedding_bag_byte_rowwise_offsets`` /
  ``embedding_bag_4bit_rowwise_offsets`` on the packed rows;
* the whole forward (no gradient), samples/s;
* the tables' bytes: float32 ``n x d x 4``; int8 ``n x (d + 8)``; int4
  ``n x (ceil(d/2) + 4)`` (per-row scale and bias included).

Interleaved rounds, medians; the ratio is the quantized time over the float
model's measured in the same run.

    .venv/bin/python bench/quantized_inference.py                  # 1 torch thread, tables at 10% of Kaggle's
    .venv/bin/python bench/quantized_inference.py --threads 2 --scale 0.01

Writes bench/results/quantized_inference.json.
"""

from __future__ import annotations

import argparse

import torch
from common import median_of_rounds, print_table, save, time_steps
from reference_dlrm import random_one_hot, scaled_cardinalities

from dlrm_model import DLRM, ModelConfig
from mlet.core.batch import SparseFeatures
from mlet.serving.quantize import quantize_model

PRECISIONS = ("float32", "int8", "int4")


def models(sizes: list[int], dim: int) -> dict[str, DLRM]:
    """The float model (trained-looking table values) and its int8 and int4 copies."""
    config = ModelConfig(tuple(sizes), dim, (13, 512, 256, 64, dim), (512, 256, 1))
    model = DLRM(config, seed=0).eval()
    with torch.no_grad():
        model.tables.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(1))
    return {"float32": model, "int8": quantize_model(model, 8), "int4": quantize_model(model, 4)}


def timers(model: DLRM, data: list[tuple], steps: int) -> dict:
    """Seconds per batch of the tables' lookups and of the whole forward."""

    def lookups(i: int) -> None:
        model.tables(data[i % len(data)][1])

    def forward(i: int) -> None:
        dense, features = data[i % len(data)]
        model(dense, features)

    return {
        "tables": lambda: time_steps(lookups, steps, warmup=2),
        "forward": lambda: time_steps(forward, steps, warmup=2),
    }


def measure(sizes: list[int], dim: int, batch: int, steps: int, rounds: int) -> list[dict]:
    """One row per precision: times, samples/s, bytes, ratios to float32."""
    variants = models(sizes, dim)
    data = []
    for seed in range(4):
        dense, ids, _ = random_one_hot(sizes, batch, 13, seed)
        data.append((dense, SparseFeatures.from_ids(ids)))
    all_timers = {f"{name}/{part}": t for name, m in variants.items() for part, t in timers(m, data, steps).items()}
    with torch.no_grad():
        seconds = median_of_rounds(all_timers, rounds)
    rows = []
    for name, model in variants.items():
        tables, forward = seconds[f"{name}/tables"], seconds[f"{name}/forward"]
        rows.append(
            {
                "d": dim,
                "batch": batch,
                "tables": name,
                "table_bytes": model.tables.inference_bytes(),
                "bytes_vs_float": model.tables.inference_bytes() / variants["float32"].tables.inference_bytes(),
                "lookup_ms": 1000 * tables,
                "lookup_time_vs_float": tables / seconds["float32/tables"],
                "forward_samples_per_s": batch / forward,
                "forward_time_vs_float": forward / seconds["float32/forward"],
            }
        )
    return rows


def main() -> None:
    """Measure, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=0.1, help="table sizes as a share of Kaggle's")
    p.add_argument("--dims", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--batches", type=int, nargs="+", default=[128, 2048])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sizes = scaled_cardinalities(args.scale)
    rows = [r for d in args.dims for b in args.batches for r in measure(sizes, d, b, args.steps, args.rounds)]
    columns = list(rows[0])
    print(f"{sum(sizes):,} rows in 26 tables, {args.threads} torch thread(s)")
    print_table(rows, columns)
    path = save(
        "quantized_inference", {"scale": args.scale, "rows": sum(sizes), "threads": args.threads, "results": rows}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
