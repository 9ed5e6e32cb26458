"""Training input pipeline: shuffled batches from the processed memory maps vs. the model's step time (not a test).

    .venv/bin/python bench/input_pipeline.py [--processed DIR] [--file /tmp/bench/kaggle5M.txt]

Reads the training split of a processed Kaggle-format data set (preprocessing
``--file`` first if ``--processed`` holds nothing) exactly as training does
(:class:`mlet.data.sources.ArraySource`: a seeded permutation per epoch, each batch's
rows gathered in increasing order from the memory maps, ids limited, bags
built, ids checked against the vocabulary), alone and through the prefetch thread, at batch 2048 and 128;
in the same run the batches without the id check (the cost of refusing a damaged ``cat.npy``), and the
check alone on each batch's ids. In the
same run it times the training step (forward, backward, SGD) of the Kaggle
model of the issue's example (d=4, MLET K=64, bottom 13-512-256-64-4, top
512-256-1, tables sized by the data). The target: batches at least 5x faster
than steps at batch 2048. Prints a table and writes ``bench/results/input_pipeline.json``.
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import ROOT, save, table

from dlrm_model import DLRM
from mlet.cli import configs
from mlet.core.pipeline import prefetch
from mlet.data.sources import ArraySource, build_data
from mlet.training.trainer import Trainer

MODEL = [
    "--arch-sparse-feature-size=4",
    "--mlet-hidden=64",
    "--arch-mlp-bot=13-512-256-64-4",
    "--arch-mlp-top=512-256-1",
    "--learning-rate=0.1",
]


def per_batch(batches, count: int) -> float:
    """Seconds per batch over ``count`` batches of an iterator (after the first, which also draws the epoch's
    permutation)."""
    next(batches)
    start = time.perf_counter()
    n = sum(1 for _ in itertools.islice(batches, count))
    return (time.perf_counter() - start) / n


def id_check_cost(source: ArraySource, batches: int) -> tuple[float, float]:
    """Seconds per batch of ``source`` without its id check (best of 3 epochs), and of the check alone on each
    of ``batches`` batches' ids."""
    bounds, source.id_bounds = source.id_bounds, None
    try:
        unchecked = min(per_batch(source.batches(epoch), batches) for epoch in (8, 9, 10))
        order = source.order(11)
        selections = [source.rows_of(order, i) for i in range(min(batches, len(source)))]
        gathered = [(source.ids_of(rows), rows) for rows in selections]
    finally:
        source.id_bounds = bounds
    assert bounds is not None, "a processed data set's source checks its ids"
    start = time.perf_counter()
    for ids, rows in gathered:
        bounds.check(ids, rows)
    return unchecked, (time.perf_counter() - start) / len(gathered)


def measure(processed: str, raw: str, batch_size: int, batches: int, steps: int) -> dict:
    """Data and model timings at one batch size."""
    run = configs.run_config(
        [
            "--data-generation=dataset",
            f"--raw-data-file={raw}",
            f"--processed-data-file={processed}",
            f"--mini-batch-size={batch_size}",
            "--progress=false",
            *MODEL,
        ]
    )
    data = build_data(run.data)
    first_touch = per_batch(data.train.batches(0), batches)  # maps the pages of the memory maps
    direct = min(
        per_batch(data.train.batches(epoch), batches) for epoch in (1, 2, 3)
    )  # best of 3: the machine is shared
    through_thread = min(per_batch(prefetch(data.train.batches(epoch)), batches) for epoch in (4, 5, 6))
    unchecked, check = id_check_cost(data.train, batches)
    model = DLRM(replace(run.model, table_sizes=tuple(data.table_sizes)), seed=0)
    trainer = Trainer(run.train, data, model)
    ready = list(itertools.islice(data.train.batches(7), steps + 2))
    trainer.step(ready[0])
    trainer.step(ready[1])
    times = []
    for batch in ready[2:]:
        start = time.perf_counter()
        trainer.step(batch)
        times.append(time.perf_counter() - start)
    step = sorted(times)[len(times) // 2]  # median step
    return {
        "batch_size": batch_size,
        "data_ms_per_batch": direct * 1e3,
        "data_ms_per_batch_first_touch": first_touch * 1e3,
        "data_batches_per_second": 1 / direct,
        "prefetched_ms_per_batch": through_thread * 1e3,
        "unchecked_data_ms_per_batch": unchecked * 1e3,
        "id_check_us_per_batch": check * 1e6,
        "id_check_share_of_data": check / direct,
        "step_ms": step * 1e3,
        "ratio_step_over_data": step / direct,
        "table_rows": sum(data.table_sizes),
        "train_rows": data.train.num_samples,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--file",
        type=str,
        default="/tmp/bench/kaggle5M.txt",
        help="raw Kaggle-format file (made by bench/preprocess_throughput.py)",
    )
    parser.add_argument("--processed", type=str, default="/tmp/bench/kaggle5M.processed")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if not Path(args.file).exists():
        raise SystemExit(f"{args.file}: missing; run bench/preprocess_throughput.py first (it generates it)")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [measure(args.processed, args.file, 2048, 200, 20), measure(args.processed, args.file, 128, 1000, 100)]
    print(
        f"\ntraining input from {args.processed} vs. training step (d=4, MLET K=64), "
        f"torch threads {torch.get_num_threads()}:"
    )
    rows = [
        [
            r["batch_size"],
            f"{r['data_ms_per_batch_first_touch']:.2f}",
            f"{r['data_ms_per_batch']:.2f}",
            f"{r['data_batches_per_second']:,.0f}",
            f"{r['prefetched_ms_per_batch']:.2f}",
            f"{r['unchecked_data_ms_per_batch']:.2f}",
            f"{r['id_check_us_per_batch']:.0f} ({r['id_check_share_of_data']:.1%})",
            f"{r['step_ms']:.1f}",
            f"{r['ratio_step_over_data']:.1f}x",
        ]
        for r in results
    ]
    saved = save(
        "input_pipeline",
        {"processed": args.processed, "model": MODEL, "target": "step / data >= 5 at batch 2048", "results": results},
    )
    print(
        table(
            rows,
            [
                "batch",
                "first-touch ms",
                "data ms/batch",
                "batches/s",
                "via prefetch ms",
                "unchecked ms",
                "id check us (of data)",
                "step ms",
                "step / data",
            ],
        )
    )
    print(f"\nwrote {saved.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
