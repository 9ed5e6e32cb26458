"""Multi-hot bags from the command line: bags of random length (upstream's ``random`` data without
``--num-indices-per-lookup-fixed``), replayed from one CUDA graph once padded to one length, against the
same run stepped eagerly (``--cuda-graph=false``: the baseline, what every such run did before the padding)
and against bags of fixed length (one shape, nothing to pad).

Each row is one ``dlrm_mlet.py --data-generation=random`` run in a child process; its rate is the results
JSON's steady samples/s (the median ``--print-time`` window) and, beside it, the whole training's (first to
last step, one-time costs included). ``vs_eager`` is a row's steady rate over the eager run of the same
model in the same invocation.

    python3 bench/multi_hot.py                     # a GPU: both models, batch 2048, 600 batches
    python3 bench/multi_hot.py --gpus 2            # the same under torchrun on two GPUs (tables sharded)
    python3 bench/multi_hot.py --models small --batches 40 --batch 256    # a quick look (CPU: eager only)

Writes bench/results/multi_hot.json (multi_hot_2gpu.json for ``--gpus 2``; or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import OUT_HELP, ROOT, print_table, save

MODELS = {
    # the shape of the small runs: 6 tables of 100k rows, d=16, bags of 1..10 ids
    "small": (
        [
            "--arch-embedding-size=" + "-".join(["100000"] * 6),
            "--arch-sparse-feature-size=16",
            "--arch-mlp-bot=13-512-256-64-16",
            "--arch-mlp-top=512-256-1",
        ],
        10,
    ),
    # upstream's bench/dlrm_s_benchmark.sh shape: 8 tables of 1M rows, d=64, bags of 1..100 ids
    "upstream": (
        [
            "--arch-embedding-size=" + "-".join(["1000000"] * 8),
            "--arch-sparse-feature-size=64",
            "--arch-mlp-bot=512-512-64",
            "--arch-mlp-top=1024-1024-1024-1",
        ],
        100,
    ),
}
VARIANTS = {
    "random, eager": (False, ["--cuda-graph=false"]),
    "random, graphed": (False, []),
    "fixed, graphed": (True, []),
}
NOTES = ("cuda graph:",)  # the log's own lines on padding and eager steps


def run(model: str, variant: str, batch: int, batches: int, gpus: int, out: Path) -> dict:
    """One run on ``gpus`` GPUs (0: the CPU; torchrun for more than one); its rates, one-time seconds and the
    log's CUDA-graph notes."""
    flags, bag = MODELS[model]
    fixed, extra = VARIANTS[variant]
    argv = [
        "--data-generation=random",
        *flags,
        f"--num-indices-per-lookup={bag}",
        f"--num-indices-per-lookup-fixed={str(fixed).lower()}",
        f"--mini-batch-size={batch}",
        f"--num-batches={batches}",
        "--nepochs=1",
        "--learning-rate=0.1",
        "--print-time",
        f"--print-freq={max(1, batches // 12)}",
        "--progress=false",
        f"--results-json={out}",
        *(["--use-gpu"] if gpus else []),
        *extra,
    ]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    done = subprocess.run(
        [*(launcher if gpus > 1 else [sys.executable]), "-m", "dlrm_mlet", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if done.returncode != 0:
        raise SystemExit(f"{model}, {variant}: dlrm_mlet.py failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(out.read_text())
    notes = [line for line in done.stdout.splitlines() if line.startswith(NOTES)]
    return {
        "model": model,
        "gpus": gpus,
        "bags": variant,
        "steady": result["steady_samples_per_second"],
        "whole": result["train_samples_per_second"],
        "one_time_s": result["one_time_seconds"],
        "notes": notes,
    }


def main() -> None:
    """Run every (model, variant), print the table and save it."""
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS, reverse=True))
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--batches", type=int, default=600)
    parser.add_argument("--gpus", type=int, default=1 if gpu else 0, help="GPUs of each run (0: the CPU)")
    parser.add_argument("--out", help=f"{OUT_HELP} (default multi_hot, multi_hot_2gpu for --gpus 2)")
    args = parser.parse_args()
    if args.gpus > torch.cuda.device_count():
        parser.error(f"--gpus {args.gpus}: this machine has {torch.cuda.device_count()}")
    out = args.out or ("multi_hot" if args.gpus <= 1 else f"multi_hot_{args.gpus}gpu")
    variants = list(VARIANTS) if args.gpus else ["random, eager"]  # no CUDA graph on a CPU
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for variant in variants:
                rows.append(run(model, variant, args.batch, args.batches, args.gpus, Path(tmp, "results.json")))
                print(rows[-1], flush=True)
    for row in rows:
        eager = next(r["steady"] for r in rows if r["model"] == row["model"] and r["bags"] == "random, eager")
        row["vs_eager"] = row["steady"] / eager
    shown = [
        {**row, "steady": f"{row['steady'] / 1e6:.2f}M/s", "whole": f"{row['whole'] / 1e6:.2f}M/s"} for row in rows
    ]
    print_table(shown, ["model", "gpus", "bags", "steady", "whole", "one_time_s", "vs_eager"])
    models = {m: MODELS[m] for m in args.models}
    payload = {"batch": args.batch, "batches": args.batches, "models": models, "rows": rows}
    print(f"wrote {save(out, payload)}")


if __name__ == "__main__":
    main()
