"""Print a markdown table of dlrm_mlet.py results JSON files.

.venv/bin/python scripts/results_table.py runs/quickstart/*.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load_row(path: Path) -> dict:
    """One table row from one ``--results-json`` file."""
    result = json.loads(path.read_text())
    config = result["model_config"]
    params = result["parameters"]
    return {
        "run": path.stem,
        "tables": f"MLET K={config['mlet_hidden']}" if config["mlet_hidden"] else "baseline",
        "d": config["dim"],
        "auc": result["final"]["auc"],
        "logloss": result["final"]["logloss"],
        "accuracy": result["final"]["accuracy"],
        "inference_embedding_MiB": params["embedding_inference_bytes"] / 2**20,
        "training_embedding_MiB": params["embedding_training_bytes"] / 2**20,
        "train_samples_per_s": result["train_samples_per_second"],
    }


def markdown(rows: list[dict]) -> str:
    """Rows as a markdown table."""
    header = ["run", "tables", "d", "AUC", "log loss", "accuracy", "inference emb. MiB", "training emb. MiB", "train samples/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        auc = "n/a" if r["auc"] is None else f"{r['auc']:.4f}"
        lines.append(
            f"| {r['run']} | {r['tables']} | {r['d']} | {auc} | {r['logloss']:.4f} | {100 * r['accuracy']:.2f} % |"
            f" {r['inference_embedding_MiB']:.2f} | {r['training_embedding_MiB']:.2f} | {r['train_samples_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="results JSON files")
    args = parser.parse_args()
    print(markdown([load_row(p) for p in args.results]))


if __name__ == "__main__":
    main()
