"""The AUC cost of the faster precisions: the same training runs in float32, TF32 (``--tf32``), bfloat16
(``--bf16``) and both (``--bf16 --tf32``: the float32 products outside autocast, MLET's projection among
them, in TF32) on one GPU, over several seeds.

Trains on a Criteo-Kaggle-format file of the synthetic click model (26
tables at 1% of Kaggle's cardinalities; written and preprocessed once, then
read by every run: the 7-day split, ~``--samples`` training samples) with the
default GPU path, for a baseline and an MLET model, and reports test AUC and
log loss per precision (mean over seeds), the change against float32 with its
spread, and samples/s side by side.

    python3 bench/precision_auc.py [--samples 2000000] [--seeds 1 2 3] [--precisions fp32 tf32 bf16 bf16_tf32]

Writes bench/results/precision_auc.json (bench/results/tf32_auc.json is the
earlier TF32-only run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import OUT_HELP, print_table, save

import data_utils
import dlrm_mlet

MODELS = {
    "baseline d=16": ["--arch-sparse-feature-size=16", "--arch-mlp-bot=13-512-256-64-16"],
    "MLET d=4 K=64": ["--arch-sparse-feature-size=4", "--arch-mlp-bot=13-512-256-64-4", "--mlet-hidden=64"],
}
PRECISION_FLAGS = {"fp32": [], "tf32": ["--tf32"], "bf16": ["--bf16"], "bf16_tf32": ["--bf16", "--tf32"]}


def write_data(samples: int, directory: Path) -> Path:
    """A Kaggle-format file of the click model with about ``samples`` training rows (6 of its 7 days)."""
    raw = directory / "train.txt"
    rows = samples * 7 // 6
    if data_utils.command_line(
        ["generate", "kaggle", "--rows", str(rows), "--seed", "1", "--scale", "0.01", "--out", str(raw)]
    ):
        raise SystemExit("generating the data failed")
    return raw


def train(model_flags: list[str], precision: str, seed: int, raw: Path, out: Path) -> dict:
    """One training run (the first one preprocesses ``raw``); its results JSON."""
    argv = [
        "--data-generation=dataset",
        "--data-set=kaggle",
        f"--raw-data-file={raw}",
        "--arch-mlp-top=512-256-1",
        "--test-data-size=200000",
        "--mini-batch-size=2048",
        "--learning-rate=1.0",
        f"--numpy-rand-seed={seed}",
        "--use-gpu",
        "--progress=false",
        f"--results-json={out}",
        *PRECISION_FLAGS[precision],
        *model_flags,
    ]
    if dlrm_mlet.main(argv) != 0:
        raise SystemExit(f"training failed: {argv}")
    return json.loads(out.read_text())


def compare(name: str, runs: dict[str, list[dict]]) -> list[dict]:
    """One row per precision: mean AUC and log loss over seeds, and the per-seed AUC change against float32."""
    rows = []
    for precision, results in runs.items():
        changes = [r["final"]["auc"] - f["final"]["auc"] for r, f in zip(results, runs["fp32"])]
        rows.append(
            {
                "model": name,
                "precision": precision,
                "auc": statistics.mean(r["final"]["auc"] for r in results),
                "auc_change_vs_fp32": statistics.mean(changes),
                "auc_change_stdev": statistics.stdev(changes) if len(changes) > 1 else 0.0,
                "logloss": statistics.mean(r["final"]["logloss"] for r in results),
                "samples_per_s": statistics.mean(r["train_samples_per_second"] for r in results),
                "aucs": [r["final"]["auc"] for r in results],
            }
        )
    return rows


def main() -> None:
    """Run every precision for both models and every seed; print and save the comparison."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2_000_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISION_FLAGS), default=list(PRECISION_FLAGS))
    parser.add_argument("--out", default="precision_auc", help=OUT_HELP)
    args = parser.parse_args()
    precisions = ["fp32", *(p for p in args.precisions if p != "fp32")]  # the reference always runs
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = write_data(args.samples, Path(tmp))
        for name, flags in MODELS.items():
            runs = {
                p: [train(flags, p, seed, raw, Path(tmp, f"{len(rows)}_{p}_{seed}.json")) for seed in args.seeds]
                for p in precisions
            }
            rows += compare(name, runs)
    columns = ["model", "precision", "auc", "auc_change_vs_fp32", "auc_change_stdev", "logloss", "samples_per_s"]
    print_table(rows, columns)
    print(f"wrote {save(args.out, {'samples': args.samples, 'seeds': args.seeds, 'rows': rows})}")


if __name__ == "__main__":
    main()
