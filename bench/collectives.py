"""What a multi-GPU step's collectives cost on this machine: NCCL all-to-all and all-reduce at a DLRM step's sizes.

A multi-process step (docs/distributed.md) runs two all-to-alls of pooled
embeddings (forward, and their gradients back) and one all-reduce of the MLP
gradients. On one host their cost is mostly a fixed latency, which does not
shrink with the batch: it is what limits the speed-up of two GPUs at small
global batches. For each global batch this times, per collective, the
all-to-all of one step's embeddings (Kaggle's 26 tables shared by the N
processes, d=16, float32: each process sends its tables' vectors of the whole
batch, ``batch x 26/N x 16 x 4`` bytes) and the all-reduce of the MLPs' gradients
(bottom 13-512-256-64-16, top 367-512-256-1: 476k float32), beside a copy of
the same bytes within one GPU (``vs_local_copy``: how many times slower the
collective is than moving its bytes locally), in the same run.

    python3 bench/collectives.py [--procs 2] [--batches 2048 8192 32768 131072]

Without torchrun's environment the script launches itself under
``torchrun --nproc_per_node=N`` and rank 0 writes bench/results/collectives_gpu.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from common import print_table, save, self_launching, torchrun_rows

TABLES, DIM = 26, 16
MLP_GRADIENT_VALUES = 475_985  # bottom 13-512-256-64-16 + top 367-512-256-1, weights and biases


def microseconds(fn: Callable[[], object], repeats: int = 50) -> float:
    """Mean time of ``fn`` over ``repeats`` calls after warm-up calls, every rank in step (CUDA events)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    dist.barrier()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return 1000 * start.elapsed_time(end) / repeats


def row(collective: str, batch: int | None, data: torch.Tensor, run: Callable[[], object]) -> dict:
    """One collective's time on ``data`` beside a local copy of the same bytes."""
    copy = torch.empty_like(data)
    us = microseconds(run)
    local = microseconds(lambda: copy.copy_(data))
    return {
        "collective": collective,
        "global_batch": batch,
        "MiB": data.numel() * data.element_size() / 2**20,  # what one process sends (all-to-all) or sums
        "us": us,
        "local_copy_us": local,
        "vs_local_copy": us / local,
    }


def rows(batches: list[int]) -> list[dict]:
    """Time every collective of every batch (run by each rank; rank 0's times are reported)."""
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    results = []
    for batch in batches:
        world = dist.get_world_size()
        values = batch * TABLES * DIM // world  # one process's tables' share
        send = torch.randn(values - values % world, device=device)
        run = functools.partial(dist.all_to_all_single, torch.empty_like(send), send)
        results.append(row("all_to_all (embeddings)", batch, send, run))
    gradients = torch.randn(MLP_GRADIENT_VALUES, device=device)
    results.append(row("all_reduce (MLP gradients)", None, gradients, functools.partial(dist.all_reduce, gradients)))
    return results


def worker(args: argparse.Namespace) -> None:
    """Under torchrun: time the collectives; rank 0 writes them to ``--out``."""
    dist.init_process_group("nccl")
    results = rows(args.batches)
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(results))
    dist.destroy_process_group()


def driver(args: argparse.Namespace, argv: list[str]) -> None:
    """Launch the ranks, then print and save rank 0's table."""
    results = torchrun_rows(__file__, args.procs, argv)
    print_table(results, ["collective", "global_batch", "MiB", "us", "local_copy_us", "vs_local_copy"])
    print(f"wrote {save('collectives_gpu', {'processes': args.procs, 'rows': results})}")


def main() -> None:
    """Driver without torchrun's environment, worker under it."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, default=2, help="processes, one GPU each")
    p.add_argument("--batches", type=int, nargs="+", default=[2048, 8192, 32768, 131072], help="global batches")
    self_launching(p, worker, driver)


if __name__ == "__main__":
    main()
