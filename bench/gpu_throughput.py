"""Training throughput on one GPU: dlrm-mlet's step variants vs an upstream-style reference.

Configuration: the Criteo-Kaggle DLRM (26 tables with the real Kaggle
cardinalities, 33.8M rows; bottom 13-512-256-64-d; top 512-256-1; SGD),
random one-hot batches. For each d and batch size it times, in one process:

* ``reference``  one nn.EmbeddingBag (+ one nn.Linear for MLET) per table in a
  Python loop, sparse gradients, torch SGD: what upstream DLRM and the MLET
  authors' fork do;
* ``autograd``   dlrm-mlet's fused tables with sparse gradients + torch SGD;
* ``fused``      the table update fused into the backward (eager);
* ``graph``      fused + the whole step replayed from a CUDA graph (the default path);
* ``graph_tf32`` the same with TF32 matrix products (``--tf32``; opt-in);
* ``graph_bf16`` the same with the MLPs and interaction in bfloat16 (``--bf16``; opt-in);
* ``graph_tf32_compiled``, ``graph_bf16_compiled``: those two with the MLPs
  under torch.compile (``--compile=default``; opt-in);
* ``graph_bf16_tf32_compiled``: ``--bf16 --tf32 --compile``: also the float32
  products outside autocast in TF32 (MLET's projection kernels among them). ``first_steps_s`` is
  the time of the first five steps (compilation, capture).

Data already on the GPU (4 rotating batches; ids uniform over each table's
rows, or with ``--ids zipf`` skewed as click logs are, popular rows repeating;
each row records the share of distinct lookups). ``--pipeline`` adds the real input
pipeline: ``dlrm_mlet.Trainer`` reading shuffled batches from memory-mapped
arrays, with the prefetch thread, pinned memory and asynchronous copies.
It also checks that the graph path's loss curve equals the autograd path's
(100 steps, same init and batches).

    python bench/gpu_throughput.py                       # full grid (device machine)
    python bench/gpu_throughput.py --quick --scale 0.001 # smoke test (CPU works: graph variants skipped)

Writes bench/results/gpu_throughput.json (or --out).
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import OUT_HELP, print_table, save, zipf_ids
from reference_dlrm import ReferenceDLRM, scaled_cardinalities

from dlrm_model import DLRM, ModelConfig
from mlet.cli import configs
from mlet.core.batch import Batch, SparseFeatures
from mlet.data.sources import ArraySource, DataBundle
from mlet.training.optimizers import build_optimizer
from mlet.training.processes import SingleProcess
from mlet.training.train_step import GraphedTrainStep, TrainStep
from mlet.training.trainer import Trainer

VARIANTS = (
    "reference",
    "autograd",
    "fused",
    "graph",
    "graph_tf32",
    "graph_bf16",
    "graph_tf32_compiled",
    "graph_bf16_compiled",
    "graph_bf16_tf32_compiled",
)


def make_batches(
    sizes: list[int], batch: int, count: int, device: torch.device, seed: int = 0, id_law: str = "uniform"
) -> list[Batch]:
    """``count`` random one-hot batches on ``device``; ``id_law``: ``uniform`` over each table's rows, or ``zipf``
    (popular rows repeat, as in click logs: ``common.zipf_ids``)."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        if id_law == "zipf":
            ids = torch.from_numpy(np.stack([zipf_ids(n, batch, rng) - 1 for n in sizes], axis=1))
        else:
            ids = torch.stack([torch.randint(0, n, (batch,), generator=gen) for n in sizes], dim=1)
        dense = torch.rand(batch, 13, generator=gen)
        labels = torch.randint(0, 2, (batch,), generator=gen).float()
        out.append(Batch(dense, SparseFeatures.from_ids(ids), labels).to(device))
    return out


def distinct_share(batches: list[Batch]) -> float:
    """Share of the batches' lookups that are distinct rows of their table (what MLET's step touches)."""
    distinct = sum(ids.unique().numel() for b in batches for ids in b.sparse.indices.view(b.sparse.num_tables, -1))
    return distinct / sum(b.sparse.indices.numel() for b in batches)


def sync(device: torch.device) -> None:
    """Wait for the device."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, batches: list[Batch], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step (after ``warmup`` steps)."""
    for i in range(warmup):
        step(batches[i % len(batches)])
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    sync(device)
    return (time.perf_counter() - start) / steps


def reference_step(sizes: list[int], dim: int, hidden: int, device: torch.device):
    """Upstream-style model + SGD as a ``step(batch)`` closure."""
    with device:  # allocate and initialise directly on the device
        model = ReferenceDLRM(sizes, dim, [13, 512, 256, 64, dim], [512, 256, 1], hidden)
    model.li, model.lj = model.li.to(device), model.lj.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = torch.nn.BCELoss()

    def step(batch: Batch) -> torch.Tensor:
        size = batch.size
        per_table = batch.sparse.indices.view(len(sizes), size)
        offsets = [torch.arange(size, device=device)] * len(sizes)
        loss = loss_fn(model(batch.dense, offsets, list(per_table)), batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def our_step(model: DLRM, variant: str) -> TrainStep:
    """dlrm-mlet's step for ``variant`` (one of :data:`VARIANTS` but the reference)."""
    fused = model.tables if variant != "autograd" else None
    opt = build_optimizer("sgd", 0.1, model.sparse_parameters(), model.dense_parameters(), fused)
    loss_fn = F.binary_cross_entropy_with_logits
    if variant.startswith("graph"):
        compile_mode = "default" if variant.endswith("_compiled") else "none"
        return GraphedTrainStep(model, loss_fn, opt, bf16="bf16" in variant, compile=compile_mode)
    return TrainStep(model, loss_fn, opt)


def bench_one(
    sizes: list[int], dim: int, hidden: int, batch: int, args: argparse.Namespace, device: torch.device
) -> list[dict]:
    """Time every variant for one (d, K, batch)."""
    batches = make_batches(sizes, batch, 4, device, id_law=args.ids)
    distinct = distinct_share(batches)
    config = ModelConfig(tuple(sizes), dim, (13, 512, 256, 64, dim), (512, 256, 1), mlet_hidden=hidden)
    rows = []
    for variant in args.variants:
        if variant.startswith("graph") and device.type != "cuda":
            continue
        row = {"model": f"MLET K={hidden}" if hidden else "baseline", "d": dim, "batch": batch, "variant": variant}
        row.update(ids=args.ids, distinct_lookups=distinct)
        try:
            row.update(time_variant(sizes, config, variant, batches, args, device))
        except Exception as error:  # any failure of a variant is reported, the others are still timed
            row["error"] = f"{type(error).__name__}: {str(error)[:2000]}"
        rows.append(row)
        print(rows[-1], flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32 = False
    return rows


def time_variant(
    sizes: list[int], config: ModelConfig, variant: str, batches: list[Batch], args, device: torch.device
) -> dict:
    """Seconds per step of one variant (median of ``args.rounds``), and how long its first five steps took."""
    torch.backends.cuda.matmul.allow_tf32 = "tf32" in variant
    if variant == "reference":
        step = reference_step(sizes, config.dim, config.mlet_hidden, device)
        steps = max(10, args.steps // 5)  # slow: fewer steps are as precise
    else:
        step = our_step(DLRM(config, seed=0, device=device), variant)
        steps = args.steps
    started = time.perf_counter()
    for i in range(5):
        step(batches[i % len(batches)])
    sync(device)
    first_steps = time.perf_counter() - started
    seconds = statistics.median(timed(step, batches, steps, warmup=5, device=device) for _ in range(args.rounds))
    batch = batches[0].size
    return {"ms_per_step": 1000 * seconds, "samples_per_s": batch / seconds, "first_steps_s": first_steps}


def loss_curve_check(sizes: list[int], dim: int, hidden: int, device: torch.device, steps: int = 100) -> float:
    """Max per-step loss difference, fast path vs autograd path, same init and batches."""
    batches = make_batches(sizes, 2048, 8, device, seed=1)
    config = ModelConfig(tuple(sizes), dim, (13, 512, 256, 64, dim), (512, 256, 1), mlet_hidden=hidden)
    base = DLRM(config, seed=3, device=device)
    fast_variant = "graph" if device.type == "cuda" else "fused"
    plain, fast = our_step(base, "autograd"), our_step(copy.deepcopy(base), fast_variant)
    diffs = [abs(plain(b).item() - fast(b).item()) for b in (batches[i % 8] for i in range(steps))]
    return max(diffs)


def pipeline_throughput(sizes: list[int], dim: int, hidden: int, batch: int, rows: int, device: torch.device) -> dict:
    """Samples/s of ``dlrm_mlet.Trainer`` fed from memory-mapped arrays (shuffled, prefetched, pinned)."""
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        paths = {"dense": Path(tmp, "dense.npy"), "ids": Path(tmp, "ids.npy"), "labels": Path(tmp, "labels.npy")}
        np.save(paths["dense"], rng.random((rows, 13), dtype=np.float32))
        np.save(paths["ids"], np.stack([rng.integers(0, n, rows, dtype=np.int32) for n in sizes], axis=1))
        np.save(paths["labels"], rng.integers(0, 2, rows).astype(np.float32))
        arrays = {k: np.load(p, mmap_mode="r") for k, p in paths.items()}
        train = ArraySource(arrays["dense"], arrays["ids"], arrays["labels"], batch, shuffle=True, seed=0)
        test = ArraySource(arrays["dense"][:batch], arrays["ids"][:batch], arrays["labels"][:batch], batch)
        data = DataBundle(train, test, sizes, 13, "memory-mapped random arrays")
        argv = [
            f"--arch-embedding-size={'-'.join(map(str, sizes))}",
            f"--arch-sparse-feature-size={dim}",
            f"--arch-mlp-bot=13-512-256-64-{dim}",
            "--arch-mlp-top=512-256-1",
            f"--mlet-hidden={hidden}",
            f"--mini-batch-size={batch}",
            "--learning-rate=0.1",
            "--progress=false",
            "--print-freq=1000000",
            *(["--use-gpu"] if device.type == "cuda" else []),
        ]
        run = configs.run_config(argv)
        model = DLRM(run.model, seed=0, device=device)
        trainer = Trainer(run.train, data, model, SingleProcess(device))
        start = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - start
    return {
        "model": f"MLET K={hidden}" if hidden else "baseline",
        "d": dim,
        "batch": batch,
        "variant": "pipeline",
        "ms_per_step": 1000 * trainer.train_time / max(trainer.iteration, 1),
        "samples_per_s": trainer.train_samples / trainer.train_time,
        "wall_s_incl_test": elapsed,
    }


def add_ratios(rows: list[dict]) -> None:
    """Each row's speed-up over the reference and MLET's cost over the baseline (same d, batch, variant)."""
    measured = [r for r in rows if "error" not in r]
    index = {(r["model"], r["d"], r["batch"], r["variant"]): r for r in measured}
    for r in measured:
        ref = index.get((r["model"], r["d"], r["batch"], "reference"))
        if ref:
            r["speedup_vs_reference"] = r["samples_per_s"] / ref["samples_per_s"]
        if r["model"] != "baseline":
            base = index.get(("baseline", r["d"], r["batch"], r["variant"]))
            if base:
                r["mlet_time_ratio"] = base["samples_per_s"] / r["samples_per_s"]


def main() -> None:
    """Run the grid; print a table; write JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="scale the Kaggle cardinalities (1.0: 33.8M rows)")
    p.add_argument("--dims", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--ids", choices=("uniform", "zipf"), default="uniform", help="how the batches' ids are drawn")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pipeline", action="store_true", help="also time the real input pipeline (d=16)")
    p.add_argument("--pipeline-rows", type=int, default=4_000_000)
    p.add_argument("--quick", action="store_true", help="d=16, batch 2048, few steps")
    p.add_argument("--out", type=str, default="gpu_throughput", help=OUT_HELP)
    args = p.parse_args()
    if args.quick:
        args.dims, args.batches, args.steps, args.rounds = [16], [2048], 10, 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = scaled_cardinalities(args.scale)
    rows: list[dict] = []
    for dim in args.dims:
        for batch in args.batches:
            for hidden in (0, args.hidden):
                rows += bench_one(sizes, dim, hidden, batch, args, device)
                save(args.out, {"table_rows": sum(sizes), "rows": rows})  # a cut-off run keeps what it measured
    if args.pipeline:
        for hidden in (0, args.hidden):
            for batch in args.batches:
                rows.append(pipeline_throughput(sizes, 16, hidden, batch, args.pipeline_rows, device))
                print(rows[-1], flush=True)
    add_ratios(rows)
    checks = {
        f"loss_curve_max_diff_{'mlet' if h else 'baseline'}_d16": loss_curve_check(sizes, 16, h, device)
        for h in (0, args.hidden)
    }
    print(checks)
    print_table(rows, ["model", "d", "batch", "variant", "ms_per_step", "samples_per_s"])
    path = save(args.out, {"table_rows": sum(sizes), "checks": checks, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
