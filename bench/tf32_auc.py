"""The AUC cost of TF32 (``--tf32``): the same training runs in float32 and in TF32 on one GPU.

Trains on the synthetic click model (26 tables, a scaled-down Criteo-Kaggle
profile) with the default GPU path, once with float32 matrix products and once
with TF32, for a baseline and an MLET model, and reports test AUC, log loss
and samples/s side by side.

    python3 bench/tf32_auc.py [--samples 2000000]

Writes bench/results/tf32_auc.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import print_table, save

import dlrm_mlet

SIZES = "1460-583-10131-2202-305-24-12517-633-3-93-5683-8351-3194-27-14992-5461-10-5652-2173-4-7046-18-15-286-105-142"
MODELS = {
    "baseline d=16": ["--arch-sparse-feature-size=16", "--arch-mlp-bot=13-512-256-64-16"],
    "MLET d=4 K=64": ["--arch-sparse-feature-size=4", "--arch-mlp-bot=13-512-256-64-4", "--mlet-hidden=64"],
}


def train(model_flags: list[str], tf32: bool, samples: int, out: Path) -> dict:
    """One training run; its results JSON."""
    argv = [
        "--data-generation=synthetic",
        f"--arch-embedding-size={SIZES}",
        "--arch-mlp-top=512-256-1",
        f"--data-size={samples}",
        "--test-data-size=200000",
        "--mini-batch-size=2048",
        "--learning-rate=1.0",
        "--use-gpu",
        f"--tf32={tf32}",
        "--progress=false",
        f"--results-json={out}",
        *model_flags,
    ]
    if dlrm_mlet.main(argv) != 0:
        raise SystemExit(f"training failed: {argv}")
    return json.loads(out.read_text())


def main() -> None:
    """Run both precisions for both models; print and save the comparison."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2_000_000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in MODELS.items():
            results = {
                tf32: train(flags, tf32, args.samples, Path(tmp, f"{len(rows)}_{tf32}.json")) for tf32 in (False, True)
            }
            fp32, tf = results[False], results[True]
            rows.append(
                {
                    "model": name,
                    "auc_fp32": fp32["final"]["auc"],
                    "auc_tf32": tf["final"]["auc"],
                    "auc_change": tf["final"]["auc"] - fp32["final"]["auc"],
                    "logloss_fp32": fp32["final"]["logloss"],
                    "logloss_tf32": tf["final"]["logloss"],
                    "samples_per_s_fp32": fp32["train_samples_per_second"],
                    "samples_per_s_tf32": tf["train_samples_per_second"],
                }
            )
    print_table(rows, list(rows[0]))
    print(f"wrote {save('tf32_auc', {'samples': args.samples, 'rows': rows})}")


if __name__ == "__main__":
    main()
