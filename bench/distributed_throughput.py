"""Training throughput of 1 vs N processes at a Criteo-size configuration.

Kaggle's 26 real cardinalities (33.8M rows), d=16, bottom 13-512-256-64-16,
top 512-256-1, one id per bag, random data; MLET K=64 and the plain baseline.
Each row times ``Trainer.step`` (forward, all-to-all, backward, the MLP
gradients' all-reduce, the fused SGD table update) on pre-made batches already sharded and on the device, so
data loading is not measured. Samples/s count the global batch; N processes
share each global batch (the same hyperparameters, the same training
trajectory). On GPUs every process count is timed with and without the
CUDA-graph step; the speedup is against the faster one-process figure.

    python3 bench/distributed_throughput.py --use-gpu --procs 1 2         # GPUs, NCCL
    .venv/bin/python bench/distributed_throughput.py --procs 1 2 --scale 0.01 --batches 1024 --steps 6   # CPU smoke run

Without torchrun's environment the script is the driver: it launches itself
under ``torchrun --nproc_per_node=N`` for each N, collects the rows, and
writes ``bench/results/distributed_throughput_{gpu,cpu}.json``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from common import print_table, save, self_launching, torchrun_rows
from reference_dlrm import scaled_cardinalities
from torch.profiler import ProfilerActivity, profile

from mlet.cli import configs
from mlet.core.config import OPTIMIZERS
from mlet.data.sources import build_data
from mlet.parallel import (
    distributed,
    process_group,
)
from mlet.training.train_step import GraphedTrainStep
from mlet.training.trainer import Trainer


def model_flags(args: argparse.Namespace, hidden: int, batch: int, graph: bool = False) -> list[str]:
    """dlrm_mlet.py flags of one configuration."""
    sizes = "-".join(map(str, scaled_cardinalities(args.scale)))
    return [
        "--data-generation=random",
        f"--arch-embedding-size={sizes}",
        f"--arch-sparse-feature-size={args.dim}",
        f"--arch-mlp-bot=13-512-256-64-{args.dim}",
        "--arch-mlp-top=512-256-1",
        f"--mlet-hidden={hidden}",
        f"--mini-batch-size={batch}",
        f"--data-size={batch * args.distinct_batches}",
        f"--test-data-size={batch}",
        "--num-indices-per-lookup=1",
        "--num-indices-per-lookup-fixed",
        f"--optimizer={args.optimizer}",
        "--learning-rate=0.1",
        "--progress=false",
        f"--cuda-graph={graph}",
        *(["--use-gpu"] if args.use_gpu else []),
        *args.flags.split(),
    ]


def slowest(seconds: float) -> float:
    """The largest of every rank's ``seconds`` (the step time of the run), over the gloo default group."""
    if not (dist.is_available() and dist.is_initialized()):
        return seconds
    value = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value)


def time_config(args: argparse.Namespace, parallel, hidden: int, batch: int, graph: bool) -> dict:
    """Seconds per training step of one configuration (median of rounds, slowest rank)."""
    run = configs.run_config(model_flags(args, hidden, batch, graph))
    data = build_data(run.data)
    model = parallel.build_model(run.model, seed=0)
    trainer = Trainer(run.train, data, model, parallel)
    batches = [
        b.pin_memory().to(parallel.device, non_blocking=True) if args.use_gpu else b
        for b in itertools.islice(parallel.batches(data.train, 0), args.distinct_batches)
    ]
    sync = torch.cuda.synchronize if args.use_gpu else (lambda: None)
    for i in range(args.warmup):
        trainer.step(batches[i % len(batches)])
    rounds = []
    for _ in range(args.rounds):
        sync()
        if dist.is_initialized():
            dist.barrier()
        start = time.perf_counter()
        for i in range(args.steps):
            trainer.step(batches[i % len(batches)])
        sync()
        rounds.append(slowest((time.perf_counter() - start) / args.steps))
    seconds = statistics.median(rounds)
    if args.trace_dir:
        name = f"{trace_name(hidden, batch, graph)}.{parallel.world_size}p.rank{parallel.rank}.json"
        trace_steps(trainer, batches, sync, args.trace_dir / name)
    row = {
        "model": f"MLET K={hidden}" if hidden else "baseline",
        "d": args.dim,
        "processes": parallel.world_size,
        "step": "CUDA graph" if isinstance(trainer.train_step, GraphedTrainStep) else "eager",
        "global_batch": batch,
        "samples_per_s": batch / seconds,
        "ms_per_step": 1000 * seconds,
        "rounds_ms": [1000 * r for r in rounds],
        "max_memory_GiB": torch.cuda.max_memory_allocated() / 2**30 if args.use_gpu else None,
        "plan": parallel.record(),
    }
    del trainer, model, batches, data
    gc.collect()
    if args.use_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return row


def trace_name(hidden: int, batch: int, graph: bool) -> str:
    """The trace files' stem of one configuration."""
    return f"{'mlet' if hidden else 'baseline'}_{batch}_{'graph' if graph else 'eager'}"


def trace_steps(trainer: Trainer, batches: list, sync, path: Path, steps: int = 10) -> None:
    """Write a Chrome trace (CPU and GPU activity) of ``steps`` more steps to ``path``; read it with
    ``bench/stream_timeline.py``."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    sync()
    with profile(activities=activities) as prof:
        for i in range(steps):
            trainer.step(batches[i % len(batches)])
        sync()
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))


def worker(args: argparse.Namespace) -> None:
    """Under torchrun: time every configuration; rank 0 writes the rows to ``--out``."""
    base = configs.run_config(model_flags(args, args.hidden[0], args.batches[0], graph=args.use_gpu))
    with distributed.session(base.use_gpu, base.dist_backend, base.dist_timeout, base.train.optimizer) as parallel:
        rows = []
        graphs = [True, False] if args.use_gpu and args.eager else [args.use_gpu]
        for hidden, batch, graph in itertools.product(args.hidden, args.batches, graphs):
            rows.append(time_config(args, parallel, hidden, batch, graph))
            if parallel.is_main:
                print(json.dumps(rows[-1]), flush=True)
        if parallel.is_main:
            Path(args.out).write_text(json.dumps(rows))
    process_group.exit_process(0)


def driver(args: argparse.Namespace, argv: list[str]) -> None:
    """Launch the workers for each process count, then tabulate and write the results."""
    rows = [row for nproc in args.procs for row in torchrun_rows(__file__, nproc, argv)]
    single: dict[tuple, float] = {}
    for r in rows:
        if r["processes"] == 1:
            key = (r["model"], r["global_batch"])
            single[key] = max(single.get(key, 0.0), r["samples_per_s"])
    for row in rows:
        base = single.get((row["model"], row["global_batch"]))
        row["speedup_vs_best_1"] = row["samples_per_s"] / base if base else None
    print_table(
        rows, ["model", "processes", "step", "global_batch", "samples_per_s", "ms_per_step", "speedup_vs_best_1"]
    )
    name = args.results or f"distributed_throughput_{'gpu' if args.use_gpu else 'cpu'}"
    extra = {
        "flags": args.flags,
        "table_rows": sum(scaled_cardinalities(args.scale)),
        "scale": args.scale,
        "optimizer": args.optimizer,
    }
    print(f"wrote {save(name, {**extra, 'rows': rows})}")


def main() -> None:
    """Driver without torchrun's environment, worker under it."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--use-gpu", action="store_true", help="one GPU per process, NCCL")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    p.add_argument("--batches", type=int, nargs="+", default=[8192, 32768, 131072], help="global batch sizes")
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 0], help="MLET K (0: baseline)")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--scale", type=float, default=1.0, help="scale Kaggle's cardinalities (1.0: real, 33.8M rows)")
    p.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS)
    p.add_argument("--steps", type=int, default=30, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--distinct-batches", type=int, default=4, help="batches made up front and cycled")
    p.add_argument("--flags", default="", help="more dlrm_mlet.py flags for every run, e.g. '--bf16 --compile'")
    p.add_argument(
        "--eager", action=argparse.BooleanOptionalAction, default=True, help="on GPUs, also time the eager step"
    )
    p.add_argument("--results", default="", help="name of the results JSON (default distributed_throughput_{gpu,cpu})")
    p.add_argument("--trace-dir", type=Path, default=None, help="write a Chrome trace of 10 steps per run and rank")
    self_launching(p, worker, driver)


if __name__ == "__main__":
    main()
