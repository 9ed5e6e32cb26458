"""What users run, end to end: ``dlrm_mlet.py`` on a processed Kaggle-format data set, beside the step alone.

A processed cache of ``--rows`` rows at Criteo-Kaggle's real 26 cardinalities
(33.8M table rows) is written directly in the format ``data_utils.py
preprocess`` makes (``--processed-data-file``; the 7-day split; every id of a
table seen at least once in training, the other samples Zipf-distributed by
id; dense counts and labels random, so the AUC means nothing here). Then, for
each batch size, input path (``--data-on-device=on|off``), precision and
process count, the command line trains one epoch and its results JSON gives
``train_samples_per_second`` (first to last training step: data loading,
model building and testing excluded, as users' logs count them). Beside it,
in the same run, the step alone (``bench/gpu_throughput.py``'s ``graph``
variants: batches already on the GPU), and the ratio of the two.

    python3 bench/cli_throughput.py --rows 20000000 --gpus 1                # one H200
    python3 bench/cli_throughput.py --rows 20000000 --gpus 1 2 --batches 8192 32768 --inputs device

Writes bench/results/cli_throughput.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import OUT_HELP, print_table, save, zipf_ids
from gpu_throughput import bench_one

from mlet.data.preprocessing.cache import FORMAT, SPLITS, VERSION
from mlet.data.preprocessing.layouts import KAGGLE_CATEGORICAL, KAGGLE_DENSE
from mlet.data.preprocessing.raw_generate import KAGGLE_CARDINALITIES

PRECISION_FLAGS = {
    "fp32": [],
    "tf32": ["--tf32"],
    "bf16": ["--bf16"],
    "tf32_compiled": ["--tf32", "--compile=default"],
    "bf16_compiled": ["--bf16", "--compile=default"],
    "bf16_tf32_compiled": ["--bf16", "--tf32", "--compile=default"],
}
STEP_VARIANT = {name: "graph" if name == "fp32" else f"graph_{name}" for name in PRECISION_FLAGS}


def table_column(n: int, train_rows: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """One table's raw ids for every row: each of its ``n`` values once among the training rows (where they fit),
    the rest Zipf; shuffled."""
    seen_once = rng.permutation(n)[: min(n, train_rows)] + 1
    ids = np.concatenate([seen_once, zipf_ids(n, total - len(seen_once), rng)])
    ids[:train_rows] = rng.permutation(ids[:train_rows])
    return ids


def renumbered(ids: np.ndarray, train_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids renumbered as preprocessing does (1 = most frequent in training, 0 = unseen there) and their counts."""
    counts = np.bincount(ids[:train_rows])
    order = np.argsort(-counts, kind="stable")
    order = order[counts[order] > 0]
    new_id = np.zeros(len(counts), np.int32)
    new_id[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return new_id[ids], counts[order].astype(np.int32)


def write_processed(directory: Path, rows: int, seed: int) -> dict:
    """A processed Kaggle-format cache of ``rows`` rows (dlrm 7-day split) in ``directory``; its meta."""
    rng = np.random.default_rng(seed)
    per_day, extra = divmod(rows, 7)
    days = [per_day + (d < extra) for d in range(7)]
    train_end = sum(days[:6])
    test_end = train_end + (days[6] + 1) // 2
    bounds = {"train": (0, train_end), "test": (train_end, test_end), "val": (test_end, rows)}
    directory.mkdir(parents=True, exist_ok=True)
    cat = {
        s: np.lib.format.open_memmap(directory / f"{s}.cat.npy", "w+", np.int32, (hi - lo, 26))
        for s, (lo, hi) in bounds.items()
    }
    keys, counts = [], []
    for t, n in enumerate(KAGGLE_CARDINALITIES):
        ids, table_counts = renumbered(table_column(n, train_end, rows, rng), train_end)
        for split, (lo, hi) in bounds.items():
            cat[split][:, t] = ids[lo:hi]
        keys.append(np.arange(len(table_counts), dtype=np.int64) + t * 2**32)
        counts.append(table_counts)
    for split, (lo, hi) in bounds.items():
        cat[split].flush()
        dense = np.log1p(rng.exponential(3.0, (hi - lo, 13))).astype(np.float32)
        np.save(directory / f"{split}.dense.npy", dense)
        np.save(directory / f"{split}.label.npy", (rng.random(hi - lo) < 0.25).astype(np.uint8))
    np.save(directory / "vocab_keys.npy", np.concatenate(keys))
    np.save(directory / "vocab_counts.npy", np.concatenate(counts))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "settings": {"data_set": "kaggle", "data_split": "dlrm", "split_seed": None},
        "source": {
            "path": "bench/cli_throughput.py (generated arrays)",
            "size": 0,
            "fingerprint": "",
            "layout": "kaggle-tsv",
        },
        "features": {"dense": list(KAGGLE_DENSE), "categorical": list(KAGGLE_CATEGORICAL)},
        "rows": {s: hi - lo for s, (lo, hi) in bounds.items()},
        "physical_rows": rows,
        "split": {"days": days, "train_end": train_end, "test_end": test_end},
        "vocabulary_sizes": [len(c) for c in counts],
        "bad_rows": {"total": 0, "by_kind": {}, "first_lines": {}},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    assert set(meta["rows"]) == set(SPLITS)
    return meta


def processed_data(directory: Path, rows: int) -> dict:
    """The processed data in ``directory``: written unless a run of this benchmark left ``rows`` rows there."""
    meta_file = directory / "meta.json"
    if meta_file.exists() and json.loads(meta_file.read_text())["physical_rows"] == rows:
        print(f"reusing the {rows:,} rows in {directory}", flush=True)
        return json.loads(meta_file.read_text())
    start = time.perf_counter()
    meta = write_processed(directory, rows, seed=1)
    print(
        f"wrote {rows:,} rows ({sum(meta['vocabulary_sizes']):,} ids) in {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    return meta


def cache_run_flags(directory: Path, dim: int, batch: int, test_samples: int) -> list[str]:
    """``dlrm_mlet.py`` flags of a run on the processed cache in ``directory`` (this benchmark's model at width
    ``dim``, batch ``batch``, tested on ``test_samples``), logging its time; the caller adds device and run flags."""
    return [
        "--data-generation=dataset",
        "--data-set=kaggle",
        f"--processed-data-file={directory}",
        f"--arch-sparse-feature-size={dim}",
        f"--arch-mlp-bot=13-512-256-64-{dim}",
        "--arch-mlp-top=512-256-1",
        f"--mini-batch-size={batch}",
        "--test-mini-batch-size=65536",
        f"--test-data-size={test_samples}",
        "--learning-rate=0.1",
        "--progress=false",
        "--print-time",
    ]


def cli_run(directory: Path, model: dict, batch: int, placement: str, precision: str, gpus: int, out: Path) -> dict:
    """One epoch of ``dlrm_mlet.py`` on ``gpus`` GPUs (torchrun for more than one); its results JSON and wall time."""
    flags = [
        *cache_run_flags(directory, model["dim"], batch, test_samples=262144),
        f"--mlet-hidden={model['hidden']}",
        "--use-gpu",
        f"--data-on-device={placement}",
        f"--results-json={out}",
        *PRECISION_FLAGS[precision],
    ]
    launcher = (
        [sys.executable]
        if gpus == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    )
    start = time.perf_counter()
    done = subprocess.run(
        [*launcher, "-m", "dlrm_mlet", *flags],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "4"},
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"dlrm_mlet.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    input_line = next((line for line in done.stdout.splitlines() if line.startswith("input: ")), "")
    return {**json.loads(out.read_text()), "wall_s": wall, "input_line": input_line, "log": done.stdout}


def step_only(model: dict, batch: int, precision: str) -> float | None:
    """Samples/s of the graphed step alone (random one-hot batches already on the GPU, uniform ids: on the H200
    the step took the same time on Zipf ids), Kaggle's cardinalities; None where it failed (its error is printed)."""
    options = argparse.Namespace(variants=[STEP_VARIANT[precision]], steps=100, rounds=3, ids="uniform")
    [row] = bench_one(list(KAGGLE_CARDINALITIES), model["dim"], model["hidden"], batch, options, torch.device("cuda"))
    gc.collect()
    torch.cuda.empty_cache()
    return row.get("samples_per_s")


def main() -> None:
    """Write the data set, time the step alone, then the command line for every configuration; print and save."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--dir", type=Path, default=None, help="processed data directory (default: a temporary one)")
    parser.add_argument("--batches", type=int, nargs="+", default=[8192, 2048])
    parser.add_argument("--inputs", nargs="+", choices=("device", "host"), default=["device", "host"])
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISION_FLAGS), default=["fp32", "tf32", "bf16"])
    parser.add_argument("--models", nargs="+", choices=("baseline", "mlet"), default=["baseline"])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1])
    parser.add_argument("--out", default="cli_throughput", help=OUT_HELP)
    args = parser.parse_args()
    models = {
        "baseline": {"name": "baseline d=16", "dim": 16, "hidden": 0},
        "mlet": {"name": "MLET d=16 K=64", "dim": 16, "hidden": 64},
    }
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.dir or Path(tmp, "processed")
        meta = processed_data(directory, args.rows)
        steps = {
            (m, b, p): step_only(models[m], b, p)
            for m in args.models
            for b in args.batches
            for p in args.precisions
            if 1 in args.gpus
        }
        rows: list[dict] = []
        payload = {"rows_in_data": args.rows, "table_rows": sum(meta["vocabulary_sizes"]), "rows": rows}
        for m in args.models:
            for batch in args.batches:
                for precision in args.precisions:
                    for placement in args.inputs:
                        for gpus in args.gpus:
                            setting = {"model": models[m], "batch": batch, "precision": precision, "gpus": gpus}
                            rows.append(measure(directory, setting, placement, steps.get((m, batch, precision)), tmp))
                            print(json.dumps(rows[-1]), flush=True)
                            save(args.out, payload)  # after every run: a cut-off benchmark keeps what it measured
    add_gpu_ratios(rows)
    columns = ["model", "batch", "precision", "input", "gpus", "cli_samples_per_s", "cli_steady_samples_per_s"]
    columns += ["step_only_samples_per_s", "cli_vs_step", "steady_vs_step", "one_time_s", "vs_1_gpu", "steady_vs_1_gpu"]
    print_table(rows, columns)
    print(f"wrote {save(args.out, payload)}")


def measure(directory: Path, setting: dict, placement: str, step: float | None, tmp: str) -> dict:
    """One command-line run's row: its rates beside the step alone (``step``), or the error it ended with."""
    model, batch, precision, gpus = setting["model"], setting["batch"], setting["precision"], setting["gpus"]
    row = {"model": model["name"], "batch": batch, "precision": precision, "input": placement, "gpus": gpus}
    try:
        result = cli_run(
            directory, model, batch, "on" if placement == "device" else "off", precision, gpus, Path(tmp, "r.json")
        )
    except RuntimeError as error:
        return {**row, "error": str(error)[-3000:]}
    cli, steady = result["train_samples_per_second"], result["steady_samples_per_second"]
    return {
        **row,
        "cli_samples_per_s": cli,
        "step_only_samples_per_s": step,
        "cli_steady_samples_per_s": steady,
        "cli_vs_step": cli / step if step and gpus == 1 else None,
        "steady_vs_step": steady / step if step and gpus == 1 else None,
        "one_time_s": result["one_time_seconds"],
        "train_samples": result["train_samples"],
        "wall_s": result["wall_s"],
        "input_line": result["input_line"],
        "log_tail": result["log"].splitlines()[-25:],
    }


def add_gpu_ratios(rows: list[dict]) -> None:
    """Each measured row's rates over the same configuration's on one GPU."""
    same = ("model", "batch", "precision", "input")
    for row in rows:
        one = next((r for r in rows if r["gpus"] == 1 and all(r[k] == row[k] for k in same)), None)
        measured = one is not None and "error" not in one and "error" not in row
        row["vs_1_gpu"] = row["cli_samples_per_s"] / one["cli_samples_per_s"] if measured else None
        row["steady_vs_1_gpu"] = row["cli_steady_samples_per_s"] / one["cli_steady_samples_per_s"] if measured else None


if __name__ == "__main__":
    main()
