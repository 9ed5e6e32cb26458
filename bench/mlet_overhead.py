"""MLET's costs: training time against a baseline of the same d, inference speed collapsed vs two-layer, peak memory.

The paper reports MLET training at about 1.25x the baseline's time. Model: the
paper's Criteo DLRM (bottom 13-512-256-64-d, top 512-256-1, 26 tables with
Kaggle's cardinalities times ``--scale``), MLET K=64, SGD with the fused
embedding update (as ``dlrm_mlet.py`` trains), random one-hot batches in memory.

* training samples/s, baseline and MLET at the same d, batch 128 and 2048,
  interleaved rounds, medians; the overhead is MLET's time over the baseline's;
* at ``--cli-dims`` x ``--cli-batches`` (d=16, batch 2048), beside those
  step-only figures and in the same rounds' fashion: steps on the batches
  ``--data-generation=random`` makes by default (bags of 1-10 ids), and the
  command line itself, ``dlrm_mlet.py --data-generation=random`` in a fresh
  process with ``--cli-steps`` batches, read from its results JSON
  (``train_samples_per_second``, what users see), with one-hot bags
  (``--num-indices-per-lookup=1 --num-indices-per-lookup-fixed``) and with
  the default bags; same thread count (``OMP_NUM_THREADS``);
* inference samples/s (forward, no gradient) of the collapsed model (plain
  ``n x d`` tables, what is served) and of the two-layer model;
* peak RSS, each in a fresh process: training (model, SGD, steps) of the
  baseline and of MLET, and inference of the collapsed and of the two-layer
  model, at ``--memory-scale``; each process resets its peak after the
  imports and batches, so the peak is that of the model and its steps;
* the GPU figures (H100, default ``graph`` path) from
  ``bench/results/gpu_final_h100.json`` (measured by ``bench/gpu_throughput.py``; not re-measured here).

    .venv/bin/python bench/mlet_overhead.py                 # 1 torch thread (see NOTES.md: shared 2-core machine)
    .venv/bin/python bench/mlet_overhead.py --threads 2

Writes bench/results/mlet_overhead.json and bench/results/mlet_overhead.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from common import RESULTS, ROOT, harness_sgd_step, median_of_rounds, run_child, save, table, time_steps
from reference_dlrm import random_one_hot, scaled_cardinalities

from dlrm_model import DLRM, ModelConfig
from mlet.core.batch import Batch, SparseFeatures
from mlet.data.synthetic import RandomBatches

GPU_RESULTS = RESULTS / "gpu_final_h100.json"


def config(sizes: list[int], dim: int, hidden: int) -> ModelConfig:
    """The paper's Criteo DLRM at width ``dim`` (MLET if ``hidden``)."""
    return ModelConfig(tuple(sizes), dim, (13, 512, 256, 64, dim), (512, 256, 1), mlet_hidden=hidden)


def batches(sizes: list[int], batch: int, count: int = 4) -> list[Batch]:
    """``count`` random one-hot batches."""
    out = []
    for seed in range(count):
        dense, ids, labels = random_one_hot(sizes, batch, 13, seed)
        out.append(Batch(dense, SparseFeatures.from_ids(ids), labels))
    return out


def random_bags(sizes: list[int], batch: int, count: int = 4) -> list[Batch]:
    """``count`` batches as ``--data-generation=random`` makes them by default (1-10 ids per bag)."""
    maker = RandomBatches(count * batch, batch, sizes, 13, indices_per_lookup=10, fixed=False, seed=123)
    return [Batch(*maker.make_batch(i)) for i in range(count)]


def cli_timer(sizes: list[int], dim: int, hidden: int, batch: int, one_hot: bool, args: argparse.Namespace):
    """A timer of the command line: ``dlrm_mlet.py --data-generation=random`` with these tables and widths in
    a fresh process (``--threads`` OpenMP threads); returns seconds per batch from its
    ``train_samples_per_second`` (training only: set-up and the test pass are not in it)."""
    bags = ["--num-indices-per-lookup=1", "--num-indices-per-lookup-fixed"] if one_hot else []

    def run() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            results = Path(tmp) / "run.json"
            argv = [
                "--data-generation=random",
                f"--arch-embedding-size={'-'.join(map(str, sizes))}",
                f"--arch-sparse-feature-size={dim}",
                f"--arch-mlp-bot=13-512-256-64-{dim}",
                "--arch-mlp-top=512-256-1",
                f"--mini-batch-size={batch}",
                f"--num-batches={args.cli_steps}",
                f"--mlet-hidden={hidden}",
                f"--test-data-size={batch}",
                "--progress=false",
                f"--results-json={results}",
                *bags,
            ]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            subprocess.run(
                [sys.executable, str(ROOT / "dlrm_mlet.py"), *argv], check=True, env=env, capture_output=True
            )
            return batch / json.loads(results.read_text())["train_samples_per_second"]

    return run


def train_timer(model: DLRM, data: list[Batch], steps: int):
    """A timer of ``steps`` training steps (fused SGD, as the harness trains); returns seconds per step."""
    step = harness_sgd_step(model, 0.05)
    return lambda: time_steps(lambda i: step(data[i % len(data)]), steps, warmup=2)


def inference_timer(model: DLRM, data: list[Batch], steps: int):
    """A timer of ``steps`` forward passes without gradients; returns seconds per batch."""
    model.eval()

    def forward(i: int) -> None:
        with torch.no_grad():
            model(data[i % len(data)].dense, data[i % len(data)].sparse)

    return lambda: time_steps(forward, steps, warmup=2)


def timed_pair_row(dim: int, batch: int, timers: dict, rounds: int, ratio: tuple[str, str, str]) -> dict:
    """Interleaved medians of two timers (seconds per batch) as one row: each one's samples/s and
    ``ratio = (name, numerator, denominator)``, the quotient of two of their times; printed as it lands."""
    seconds = median_of_rounds(timers, rounds)
    name, numerator, denominator = ratio
    row = {"d": dim, "batch": batch, **{f"{key}_samples_per_s": batch / s for key, s in seconds.items()}}
    row[name] = seconds[numerator] / seconds[denominator]
    print(row, flush=True)
    return row


def step_pair(sizes: list[int], dim: int, hidden: int, data: list[Batch], steps: int) -> dict:
    """Step timers of the baseline and MLET at width ``dim`` on ``data``."""
    return {
        "baseline": train_timer(DLRM(config(sizes, dim, 0), seed=0), data, steps),
        "mlet": train_timer(DLRM(config(sizes, dim, hidden), seed=0), data, steps),
    }


def timer_pairs(sizes: list[int], dim: int, hidden: int, batch: int, args: argparse.Namespace) -> Iterator:
    """``(what is timed, baseline and MLET timers)`` at (d, batch), made one pair at a time: steps on one-hot
    batches; at the command line's configurations also steps on its default bags and the command line itself
    (one-hot and default bags)."""
    steps = max(3, args.samples // batch)
    yield "steps, one-hot batches", step_pair(sizes, dim, hidden, batches(sizes, batch), steps)
    if dim not in args.cli_dims or batch not in args.cli_batches:
        return
    yield "steps, default random bags (1-10 ids)", step_pair(sizes, dim, hidden, random_bags(sizes, batch), steps)
    for one_hot, what in [(True, "one-hot"), (False, "default bags")]:
        timers = {
            name: cli_timer(sizes, dim, k, batch, one_hot, args) for name, k in [("baseline", 0), ("mlet", hidden)]
        }
        yield f"command line, {what}", timers


def training_rows(
    sizes: list[int], dims: list[int], hidden: int, batch_sizes: list[int], args: argparse.Namespace
) -> list[dict]:
    """Training samples/s of baseline and MLET at each (d, batch) and of each :func:`timer_pairs`, and MLET's
    time ratio."""
    rows = []
    for dim in dims:
        for batch in batch_sizes:
            for what, timers in timer_pairs(sizes, dim, hidden, batch, args):
                row = timed_pair_row(dim, batch, timers, args.rounds, ("mlet_time_ratio", "mlet", "baseline"))
                rows.append({"timed": what, **row})
                del timers
                gc.collect()
    return rows


def inference_rows(
    sizes: list[int], dims: list[int], hidden: int, batch_sizes: list[int], args: argparse.Namespace
) -> list[dict]:
    """Inference samples/s of the collapsed model and of the two-layer model it came from."""
    rows = []
    for dim in dims:
        two_layer = DLRM(config(sizes, dim, hidden), seed=0)
        collapsed = two_layer.collapse()
        for batch in batch_sizes:
            data = batches(sizes, batch)
            steps = max(3, args.samples // batch)
            timers = {
                "collapsed": inference_timer(collapsed, data, steps),
                "two_layer": inference_timer(two_layer, data, steps),
            }
            rows.append(
                timed_pair_row(dim, batch, timers, args.rounds, ("collapsed_speedup", "two_layer", "collapsed"))
            )
        del two_layer, collapsed
        gc.collect()
    return rows


MEMORY_CHILD = """
import json, sys, torch
torch.set_num_threads({threads})
from mlet_overhead import batches, config
from common import harness_sgd_step
from dlrm_model import DLRM
from reference_dlrm import scaled_cardinalities
def status(field):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field + ":"))
sizes = scaled_cardinalities({scale})
data = batches(sizes, {batch}, count=2)
mode, cfg = "{mode}", config(sizes, {dim}, {hidden})
setup = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS: the peak of what follows, not of the imports
if mode == "train":
    model = DLRM(cfg, seed=0)
    step = harness_sgd_step(model, 0.05)
    for i in range({steps}):
        step(data[i % 2])
elif mode in ("collapsed", "two_layer"):
    model = DLRM(cfg.collapsed() if mode == "collapsed" else cfg, seed=0).eval()
    with torch.no_grad():
        for i in range({steps}):
            model(data[i % 2].dense, data[i % 2].sparse)
params = 0 if mode == "floor" else sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({{"parameter_bytes": params, "setup_rss": setup, "peak_rss": status("VmHWM")}}))
"""


def memory_rows(dim: int, hidden: int, batch: int, args: argparse.Namespace) -> list[dict]:
    """Peak RSS of training and inference processes (baseline, MLET, collapsed, two-layer), and of one doing neither.

    Each child resets its peak (``/proc/self/clear_refs``) after the imports
    and the batches, so ``peak_rss_bytes`` is the peak of building the model
    and running the steps, and ``above_setup_bytes`` what that added.
    """
    cases = [("floor", 0), ("train", 0), ("train", hidden), ("collapsed", hidden), ("two_layer", hidden)]
    rows = []
    for mode, k in cases:
        code = MEMORY_CHILD.format(
            threads=args.threads,
            scale=args.memory_scale,
            batch=batch,
            mode=mode,
            dim=dim,
            hidden=k,
            steps=args.memory_steps,
        )
        info, wall, process_peak = run_child(code)
        name = {
            "floor": "no model (imports + batches)",
            "train": f"training, {'MLET K=' + str(k) if k else 'baseline'}",
        }.get(mode, f"inference, {mode.replace('_', '-')}")
        rows.append(
            {
                "process": name,
                "d": dim,
                "parameter_bytes": info["parameter_bytes"],
                "setup_rss_bytes": info["setup_rss"],
                "peak_rss_bytes": info["peak_rss"],
                "above_setup_bytes": info["peak_rss"] - info["setup_rss"],
                "process_peak_rss_bytes": process_peak,
                "wall_s": wall,
            }
        )
        print(rows[-1], flush=True)
    return rows


def gpu_rows() -> tuple[list[dict], dict]:
    """The default GPU path's (``graph``) MLET/baseline time ratios from the committed H100 results."""
    if not GPU_RESULTS.exists():
        return [], {}
    data = json.loads(GPU_RESULTS.read_text())
    graph = [r for r in data["rows"] if r.get("variant") == "graph"]
    base = {(r["d"], r["batch"]): r for r in graph if r["model"] == "baseline"}
    rows = [
        {
            "d": r["d"],
            "batch": r["batch"],
            "baseline_samples_per_s": base[(r["d"], r["batch"])]["samples_per_s"],
            "mlet_samples_per_s": r["samples_per_s"],
            "mlet_time_ratio": r["mlet_time_ratio"],
        }
        for r in graph
        if r["model"] != "baseline" and (r["d"], r["batch"]) in base
    ]
    return rows, {k: data.get(k) for k in ("date", "command", "machine", "table_rows")}


def mib(n: float) -> str:
    """Bytes in MiB."""
    return f"{n / 2**20:,.0f}"


def overhead_table(rows: list[dict]) -> str:
    """Markdown table of baseline vs MLET training rows (CPU here, or the GPU results, which time steps)."""
    cells = [
        [
            r["d"],
            r["batch"],
            r.get("timed", "steps"),
            round(r["baseline_samples_per_s"]),
            round(r["mlet_samples_per_s"]),
            f"{r['mlet_time_ratio']:.2f}x",
        ]
        for r in rows
    ]
    return table(cells, ["d", "batch", "timed", "baseline samples/s", "MLET samples/s", "MLET time / baseline time"])


def markdown(payload: dict) -> str:
    """The summary file."""
    m = payload["machine"]
    a = payload["settings"]
    load_average = ", ".join(f"{x:.1f}" for x in m.get("load_average", []))
    lines = [
        "# MLET overhead: training time, inference speed, memory",
        "",
        f"- date: {payload['date']}; command: `{payload['command']}`",
        f"- machine: {m.get('cpu')} ({m.get('cpus')} CPUs, {m.get('memory_mib', 0) / 1024:.0f} GiB), "
        f"load average {load_average};"
        f" torch {m.get('torch')}, {a['threads']} torch thread(s)",
        f"- model: 26 tables, Kaggle cardinalities x {a['scale']} ({payload['table_rows']:,} rows), "
        f"bottom 13-512-256-64-d, top 512-256-1, MLET K={a['hidden']},"
        f" SGD with the fused embedding update; random one-hot batches; "
        f"medians of {a['rounds']} interleaved rounds of about {a['samples']:,} samples",
        "",
        "## Training: MLET vs baseline at the same d (the paper: about 1.25x)",
        "",
        "`steps`: training steps on batches in memory. `command line`: `dlrm_mlet.py --data-generation=random` "
        f"in a fresh process ({a.get('cli_steps')} batches, {a['threads']} OpenMP thread(s)), its "
        "`train_samples_per_second`; `one-hot` adds `--num-indices-per-lookup=1 --num-indices-per-lookup-fixed`, "
        "`default bags` is what the command line makes without them (1-10 ids per bag).",
        "",
        overhead_table(payload["training"]),
    ]
    if payload["gpu"]:
        g = payload["gpu_source"]
        gpu_name = (g.get("machine") or {}).get("gpu")
        lines += [
            "",
            f"On one GPU ({gpu_name}, the default `graph` path; from `bench/results/gpu_final_h100.json`,"
            f" {g.get('date')}, real Kaggle cardinalities ({g.get('table_rows'):,} rows); not re-measured here):",
            "",
            overhead_table(payload["gpu"]),
        ]
    lines += [
        "",
        "## Inference: the collapsed model vs the two-layer model",
        "",
        table(
            [
                [
                    r["d"],
                    r["batch"],
                    round(r["collapsed_samples_per_s"]),
                    round(r["two_layer_samples_per_s"]),
                    f"{r['collapsed_speedup']:.2f}x",
                ]
                for r in payload["inference"]
            ],
            ["d", "batch", "collapsed samples/s", "two-layer samples/s", "collapsed speed-up"],
        ),
        "",
        f"## Peak memory (fresh process each; Kaggle cardinalities x {a['memory_scale']}, "
        f"batch {a['memory_batch']}, {a['memory_steps']} steps)",
        "",
        "Peak RSS after the imports and batches are set up (the peak is reset there), "
        "and what building the model and running the steps added to the RSS at that point.",
        "",
        table(
            [
                [r["process"], r["d"], mib(r["parameter_bytes"]), mib(r["peak_rss_bytes"]), mib(r["above_setup_bytes"])]
                for r in payload["memory"]
            ],
            ["process", "d", "parameters MiB", "peak RSS MiB", "added by model and steps MiB"],
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measure, print, write JSON and markdown."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=0.01, help="Kaggle cardinalities times this for the throughput runs")
    p.add_argument("--dims", type=int, nargs="+", default=[4, 16])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[128, 2048])
    p.add_argument("--samples", type=int, default=16384, help="samples per timing round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--memory-scale", type=float, default=0.1, help="Kaggle cardinalities times this for the memory runs"
    )
    p.add_argument("--memory-batch", type=int, default=2048)
    p.add_argument("--memory-steps", type=int, default=5)
    p.add_argument("--cli-dims", type=int, nargs="*", default=[16], help="d of the command-line rows")
    p.add_argument("--cli-batches", type=int, nargs="*", default=[2048], help="batches of the command-line rows")
    p.add_argument("--cli-steps", type=int, default=60, help="training batches of each command-line run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sizes = scaled_cardinalities(args.scale)
    training = training_rows(sizes, args.dims, args.hidden, args.batches, args)
    inference = inference_rows(sizes, args.dims, args.hidden, args.batches, args)
    memory = memory_rows(args.dims[0], args.hidden, args.memory_batch, args)
    gpu, gpu_source = gpu_rows()
    settings = {
        k: getattr(args, k)
        for k in (
            "scale",
            "dims",
            "hidden",
            "batches",
            "samples",
            "rounds",
            "threads",
            "memory_scale",
            "memory_batch",
            "memory_steps",
            "cli_dims",
            "cli_batches",
            "cli_steps",
        )
    }
    payload = {
        "settings": settings,
        "table_rows": sum(sizes),
        "training": training,
        "inference": inference,
        "memory": memory,
        "gpu": gpu,
        "gpu_source": gpu_source,
    }
    path = save("mlet_overhead", payload)
    full = json.loads(path.read_text())
    (RESULTS / "mlet_overhead.md").write_text(markdown(full))
    print(markdown(full))
    print(f"wrote {path} and {RESULTS / 'mlet_overhead.md'}")


if __name__ == "__main__":
    main()
