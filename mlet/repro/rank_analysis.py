"""Effective rank of trained tables and AUC on rare vs frequent ids, for checkpoints of dlrm_mlet.py.

    .venv/bin/python scripts/analyze_rank.py runs/criteo_kaggle/checkpoints/sgd_*.pt --out runs/criteo_kaggle/rank/sgd

For each checkpoint (training or inference; MLET tables are collapsed to
``W1 @ W2`` first) it computes, per table, the singular values and the
effective rank (Roy and Vetterli 2007; see :mod:`analysis`), and, on the test
split of the checkpoint's own data (rebuilt from the flags stored in it),
AUC and log loss of test samples binned by the training count of their rarest
id. Writes ``rank.md`` (tables), ``rank.json`` (everything, singular values
included) and ``rank.png`` (effective rank per table; singular value spectra of
the largest table) into ``--out``. A checkpoint whose weights diverged (a NaN or
infinity) is reported as such, with no spectrum for its non-finite tables,
and the others are analysed as usual.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dlrm_model import DLRM
from mlet.cli.configs import data_config
from mlet.core.config import DataConfig, ModelConfig
from mlet.core.errors import UserError, check_output_folder, require_at_least, run_reporting_errors
from mlet.core.pipeline import prefetch
from mlet.core.signals import exit_status
from mlet.data.flags import recorded_dataset_config
from mlet.data.preprocessing.cache import processed_directory, read_meta
from mlet.data.sources import ArraySource, build_data
from mlet.repro.analysis import (
    data_key,
    frequency_metrics,
    parse_edges,
    rarest_id_counts,
    table_spectra,
    training_counts,
    transformed_ids,
)
from mlet.repro.run_results import in_run_dir
from mlet.repro.summary_plots import save_png
from mlet.training.checkpoints import load_checkpoint, model_from_checkpoint, refuse_quantized, trained_hidden
from mlet.training.metrics import ctr_metrics, predict
from mlet_layers import EmbeddingTables

PROG = "analyze_rank.py"
DIVERGED = "diverged (non-finite weights)"


def checkpoint_label(ckpt: dict, path: Path) -> str:
    """``MLET d=4 K=64`` or ``baseline d=16``, plus the optimizer and rate it was trained with."""
    d, k = ckpt["model_config"]["dim"], trained_hidden(ckpt)
    args = ckpt.get("args") or {}
    kind = f"MLET d={d} K={k}" if k else f"baseline d={d}"
    return (
        f"{kind} ({args.get('optimizer', '?')}, lr {args.get('learning_rate', '?')}, "
        f"seed {args.get('numpy_rand_seed', '?')})"
    )


def told_apart(results: Sequence[dict]) -> None:
    """Add the file name to the labels that two or more checkpoints share (the same flags: a copy of a run, or its
    two-layer and collapsed files), so that each row of rank.md says which file it is."""
    counts = Counter(r["label"] for r in results)
    for r in results:
        if counts[r["label"]] > 1:
            r["label"] += f" [{Path(r['checkpoint']).name}]"


def has_non_finite_weights(model: DLRM) -> bool:
    """Whether any parameter of ``model`` holds a NaN or infinity (training diverged)."""
    return not all(bool(torch.isfinite(p).all()) for p in model.parameters())


def inference_model(ckpt: dict) -> DLRM:
    """The checkpoint's model with MLET tables collapsed (what inference uses)."""
    model = model_from_checkpoint(ckpt)
    return model.collapse() if model.config.mlet_hidden else model


def recorded_data_config(flags: dict, model: ModelConfig) -> DataConfig:
    """The data a checkpoint was trained on, from its recorded flags and model (test split, no progress bars)."""
    args = argparse.Namespace(**{**flags, "eval_split": "test", "progress": False})
    dataset = recorded_dataset_config(flags) if flags["data_generation"] == "dataset" else None
    return data_config(args, model, dataset)


class FrequencyData:
    """Test data and training id counts of the checkpoints' data, built once per distinct data."""

    def __init__(self) -> None:
        self.cache: dict[tuple, tuple[ArraySource, np.ndarray, list[np.ndarray]]] = {}

    def get(self, ckpt: dict, path: Path) -> tuple[ArraySource, np.ndarray, list[np.ndarray]]:
        """The test source, each test sample's rarest-id training count, and each table's training id counts."""
        saved = ckpt.get("args")
        if not saved or "data_generation" not in saved:
            raise UserError(
                f"{path}: the checkpoint holds no training flags, so its data cannot be rebuilt (use --no-frequency)"
            )
        key = data_key(saved)
        if key not in self.cache:
            if saved["data_generation"] == "random":
                raise UserError(f"{path}: trained on random data (no id frequencies to speak of); use --no-frequency")
            flags = available_data(saved, path)
            try:
                data = build_data(recorded_data_config(flags, ModelConfig.from_dict(ckpt["model_config"])))
            except UserError as error:  # its words are the training flags': say whose
                raise UserError(
                    f"{path}: its training data (as the checkpoint records them): {error}; or use --no-frequency"
                ) from None
            train, test = data.train, data.test
            assert isinstance(train, ArraySource) and isinstance(test, ArraySource), (
                "synthetic and data-set samples are arrays"
            )
            counts = training_counts(train, data.table_sizes)
            rarest = rarest_id_counts(transformed_ids(test, slice(0, test.num_samples)), counts)
            self.cache[key] = (test, rarest, counts)
        return self.cache[key]


def available_data(flags: dict, path: Path) -> dict:
    """A checkpoint's recorded training flags, pointed at the data there are: a data set's raw file that moved
    away leaves its processed cache, which is used alone (as a run given only ``--processed-data-file`` does);
    without either, a :class:`UserError` naming the checkpoint and the missing file."""
    raw = flags.get("raw_data_file")
    if flags["data_generation"] != "dataset" or not raw or flags.get("data_set") == "terabyte" or Path(raw).exists():
        return flags  # Terabyte's is a prefix of day files: its own checks name them
    flags = in_moved_sweep(flags, path)
    raw = flags["raw_data_file"]
    if Path(raw).exists():
        return flags
    processed = str(processed_directory(raw, flags.get("processed_data_file")))
    if read_meta(Path(processed)) is None:
        raise UserError(
            f"{path}: the raw data file this checkpoint was trained on, {raw}, is missing, and there are no processed "
            f"data in {processed}; put the file back to measure the rare/frequent ids, or use --no-frequency"
        )
    return {**flags, "raw_data_file": None, "processed_data_file": processed}


def in_moved_sweep(flags: dict, path: Path) -> dict:
    """A checkpoint's recorded training flags with its data files that lay inside the sweep directory it was saved
    in (the folder above its ``checkpoints/``, from ``--save-collapsed``) put at the same place in the one it lies
    in now: a sweep directory moved or copied elsewhere took its data along."""
    saved = flags.get("save_collapsed") or flags.get("save_model")
    if not isinstance(saved, str) or Path(saved).parent.name != "checkpoints" or path.parent.name != "checkpoints":
        return flags
    before, now = str(Path(saved).parent.parent), path.parent.parent
    moved = {}
    for key in ("raw_data_file", "processed_data_file"):
        value = flags.get(key)
        if isinstance(value, str) and (inside := in_run_dir(value, before)).startswith("./"):
            moved[key] = str(now / inside.removeprefix("./"))
    return {**flags, **moved}


def analyze(path: Path, edges: Sequence[int] | None, frequency: FrequencyData) -> dict:
    """Spectra and (unless ``edges`` is None) rare/frequent metrics of one checkpoint."""
    ckpt = load_checkpoint(path)
    refuse_quantized(ckpt, "the rank analysis", path)
    model = inference_model(ckpt)
    tables = model.tables
    if not isinstance(tables, EmbeddingTables):
        raise UserError(
            f"{path}: holds quotient-remainder or mixed-dimension tables; the spectra are of plain n x d tables"
        )
    weights = [tables.table_weight(t) for t in range(tables.num_tables)]
    result = {
        "checkpoint": str(path),
        "label": checkpoint_label(ckpt, path),
        "dim": model.config.dim,
        "mlet_hidden": trained_hidden(ckpt),
        "diverged": has_non_finite_weights(model),
        "args": {k: (ckpt.get("args") or {}).get(k) for k in ("optimizer", "learning_rate", "numpy_rand_seed")},
    }
    if edges is None:
        result["tables"] = table_spectra(weights)
        return result
    test, rarest, counts = frequency.get(ckpt, path)
    result["frequent_min_count"] = edges[-1]
    result["tables"] = table_spectra(weights, [c >= edges[-1] for c in counts])
    probs, labels = predict(model, prefetch(test.batches(0)), torch.device("cpu"))
    result["overall"] = ctr_metrics(probs, labels)
    result["frequency"] = frequency_metrics(probs, labels, rarest, edges)
    return result


def weighted_rank(result: dict, key: str = "effective_rank", rows: str = "rows") -> float:
    """Mean of ``key`` over tables, weighted by ``rows`` (tables where it is undefined left out; NaN if none or
    if a table diverged)."""
    if any(t.get("diverged") for t in result["tables"]):
        return math.nan
    tables = [t for t in result["tables"] if t.get(key) is not None and t.get(rows)]
    total = sum(t[rows] for t in tables)
    return sum(t[key] * t[rows] for t in tables) / total if total else float("nan")


def cell(value: float | None, spec: str = ".2f") -> str:
    """``value`` formatted with ``spec``; ``n/a`` when it is None or NaN (undefined, e.g. the AUC of an empty bin)."""
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def label_cell(result: dict) -> str:
    """The checkpoint's label, marked when its weights diverged."""
    return f"{result['label']}: {DIVERGED}" if result.get("diverged") else result["label"]


def table_cell(entry: dict) -> str:
    """One table's effective rank (all rows / frequent rows), or ``diverged``."""
    if entry.get("diverged"):
        return "diverged"
    frequent = entry.get("effective_rank_frequent")
    return cell(entry["effective_rank"]) + (f" / {cell(frequent)}" if frequent is not None else "")


def markdown(results: Sequence[dict], top_tables: int) -> str:
    """The ``rank.md`` tables."""
    lines = [
        "# Effective rank of the trained tables (inference form: MLET collapsed to W1 @ W2)",
        "",
        "Effective rank: exp of the entropy of the singular values normalised to sum 1 (Roy and Vetterli 2007); "
        "at most d.",
        "",
        "All rows: every row of the table; "
        "rows that training rarely or never touched keep much of their (full-rank) random initialisation."
        f" Frequent rows: only the rows seen at least {results[0].get('frequent_min_count', '-')} times in training, "
        "where the learned structure is.",
        "",
        "| checkpoint | d | mean erank, all rows (row-weighted) | as share of d "
        "| mean erank, frequent rows (row-weighted) | as share of d |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        w = weighted_rank(r)
        f = weighted_rank(r, "effective_rank_frequent", "frequent_rows")
        lines.append(
            f"| {label_cell(r)} | {r['dim']} | {cell(w)} | {cell(w / r['dim'])} | {cell(f)} | {cell(f / r['dim'])} |"
        )
    largest = sorted(results[0]["tables"], key=lambda t: -t["rows"])[:top_tables]
    lines += [
        "",
        f"Per table ({top_tables} largest; all rows / frequent rows):",
        "",
        "| checkpoint | " + " | ".join(f"t{t['table']} ({t['rows']:,} rows)" for t in largest) + " |",
    ]
    lines.append("|---|" + "---|" * len(largest))
    for r in results:
        lines.append(f"| {label_cell(r)} | " + " | ".join(table_cell(r["tables"][t["table"]]) for t in largest) + " |")
    if all("frequency" in r for r in results):
        bins = [b["bin"] for b in results[0]["frequency"]]
        shares = " / ".join(f"{b['bin']}: {cell(100 * b['share'], '.1f')} %" for b in results[0]["frequency"])
        lines += [
            "",
            "## Test AUC by the training count of a sample's rarest id",
            "",
            "Each test sample is binned by the minimum over its features of the training count of its id "
            f"(unseen: 0). Shares of the test set: {shares}.",
            "",
            "| checkpoint | AUC, all | "
            + " | ".join(f"AUC {b}" for b in bins)
            + " | log loss, all | "
            + " | ".join(f"log loss {b}" for b in bins)
            + " |",
            "|---|" + "---|" * (2 * len(bins) + 2),
        ]
        for r in results:
            aucs = " | ".join(cell(b["auc"], ".4f") for b in r["frequency"])
            losses = " | ".join(cell(b["logloss"], ".4f") for b in r["frequency"])
            overall = r["overall"]
            overall_auc, overall_loss = cell(overall["auc"], ".4f"), cell(overall["logloss"], ".4f")
            lines.append(f"| {label_cell(r)} | {overall_auc} | {aucs} | {overall_loss} | {losses} |")
    return "\n".join(lines) + "\n"


def plot(results: Sequence[dict], path: Path) -> None:
    """Left: effective rank per table (tables by size); right: normalised spectra of the largest table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    order = [t["table"] for t in sorted(results[0]["tables"], key=lambda t: -t["rows"])]
    largest = order[0]
    frequent = all(r["tables"][0].get("frequent_rows") is not None for r in results)
    key = "effective_rank_frequent" if frequent else "effective_rank"
    for r in results:
        style = {"linestyle": "--", "marker": "s"} if r["mlet_hidden"] else {"linestyle": "-", "marker": "o"}
        ranks = [r["tables"][t][key] for t in order]
        left.plot(
            range(len(order)), [np.nan if v is None else v for v in ranks], label=r["label"], markersize=3, **style
        )
        values = np.asarray(r["tables"][largest]["singular_values"] or [])  # None: diverged
        if len(values) and values[0] > 0:
            right.plot(np.arange(1, len(values) + 1), values / values[0], label=r["label"], markersize=3, **style)
    left.set_xlabel("table (largest first)")
    left.set_ylabel("effective rank")
    rows = f"rows seen >= {results[0]['frequent_min_count']} times" if frequent else "all rows"
    left.set_title(f"effective rank of each table ({rows})")
    right.set_xlabel("singular value index")
    right.set_ylabel("s_i / s_1")
    right.set_yscale("log")
    right.set_title(f"spectrum of table {largest} ({results[0]['tables'][largest]['rows']:,} rows)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    save_png(fig, path)


def warn_diverged(results: Sequence[dict]) -> None:
    """One line on stderr per checkpoint whose weights diverged, naming its tables left without a spectrum."""
    for r in results:
        if r["diverged"]:
            tables = [str(t["table"]) for t in r["tables"] if t["diverged"]]
            where = f"; no spectrum for table(s) {', '.join(tables)}" if tables else " (outside the tables)"
            print(f"{PROG}: warning: {r['checkpoint']}: {DIVERGED}{where}", file=sys.stderr)


def checked_edges(args: argparse.Namespace) -> list[int] | None:
    """Check the flags before any work; the frequency bin edges (None with ``--no-frequency``).
    A :class:`UserError` names a bad flag."""
    try:
        edges = None if args.no_frequency else parse_edges(args.frequency_edges)
    except ValueError as error:
        raise UserError(f"--frequency-edges: {error}") from None
    check_output_folder("--out", args.out)
    require_at_least((("--top-tables", args.top_tables, 0),))
    return edges


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends with one line on stderr and exit code 2, Ctrl-C with 130, SIGTERM with 143."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="directory for rank.md, rank.json and rank.png")
    p.add_argument(
        "--frequency-edges", default="10,100", help="bins of the rarest-id training count: 10,100 -> <10, 10-99, >=100"
    )
    p.add_argument("--no-frequency", action="store_true", help="only the spectra (no data needed)")
    p.add_argument("--top-tables", type=int, default=6, help="tables shown one by one in rank.md")
    args = p.parse_args(argv)
    return run_reporting_errors(PROG, lambda: analyze_checkpoints(args))


def analyze_checkpoints(args: argparse.Namespace) -> None:
    """Analyze the parsed command line's checkpoints, write rank.md, rank.json and rank.png, print the table."""
    edges = checked_edges(args)
    frequency = FrequencyData()
    checkpoints = tqdm(args.checkpoints, desc="checkpoints", unit="ckpt", disable=None)
    results = [analyze(path, edges, frequency) for path in checkpoints]
    results.sort(key=lambda r: (r["mlet_hidden"] > 0, r["dim"], r["mlet_hidden"]))
    told_apart(results)
    warn_diverged(results)
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(results, args.top_tables)
    (args.out / "rank.md").write_text(text)
    (args.out / "rank.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out / "rank.png")
    print(text)


def cli() -> None:
    """The ``dlrm-mlet-analyze-rank`` console command (``python scripts/analyze_rank.py``)."""
    sys.exit(exit_status(PROG, main))
