"""Effective rank and rare-vs-frequent metrics of full-scale runs, from the model in memory.

``scripts/analyze_rank.py`` reads checkpoints and rebuilds their data; at
Kaggle's size a checkpoint is 1-4 GB and the data lives only on the GPU of a
:mod:`mlet.repro.full_scale` piece, so the piece analyses the first seed's
paper-rate runs right after training, with the same functions
(:mod:`mlet.repro.analysis`), and stores one entry per run
(``RUN_DIR/rank/OPT/NAME.json``, the format of ``rank.json``'s entries).
:func:`write_reports` then writes ``rank.md``, ``rank.json`` and ``rank.png`` per
optimizer as ``analyze_rank.py`` does (``python scripts/full_scale.py --report``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from dlrm_model import DLRM
from mlet.core.batch import Batch, SparseFeatures
from mlet.core.errors import UserError
from mlet.data.device_click import DeviceRows
from mlet.repro.analysis import frequency_metrics, parse_edges, rarest_id_counts, table_spectra
from mlet.repro.experiments import RunSpec, lr_text
from mlet.repro.rank_analysis import has_non_finite_weights, markdown, plot
from mlet.training.metrics import ctr_metrics, predict
from mlet_layers import EmbeddingTables

RANK_DIR = "rank"
EVAL_BATCH = 1 << 16


def checked_edges(text: str) -> list[int]:
    """``--frequency-edges`` as integers (a :class:`UserError` naming the flag)."""
    try:
        return parse_edges(text)
    except ValueError as error:
        raise UserError(f"--frequency-edges: {error}") from None


def analyze_model(spec: RunSpec, model: DLRM, rows: DeviceRows, device: torch.device, edges: Sequence[int]) -> dict:
    """A ``rank.json`` entry of a trained model: spectra of its inference tables (MLET collapsed), over all rows
    and over the rows seen at least ``edges[-1]`` times in training; test AUC by the rarest id's training count."""
    inference = model.collapse() if model.config.mlet_hidden else model
    tables = inference.tables
    assert isinstance(tables, EmbeddingTables), "the full-scale grid trains plain and MLET tables only"
    counts = [c.cpu().numpy() for c in rows.train_counts]
    weights = [tables.table_weight(t) for t in range(tables.num_tables)]
    test = slice(rows.train_end, rows.test_end)
    entry = {
        "checkpoint": f"{spec.name} (in memory; not saved)",
        "label": f"{spec.config.title} ({spec.optimizer}, lr {lr_text(spec.lr)}, seed {spec.seed})",
        "dim": model.config.dim,
        "mlet_hidden": model.config.mlet_hidden,
        "diverged": has_non_finite_weights(inference),
        "args": {"optimizer": spec.optimizer, "learning_rate": spec.lr, "numpy_rand_seed": spec.seed},
        "frequent_min_count": edges[-1],
        "tables": table_spectra(weights, [c >= edges[-1] for c in counts]),
    }
    probs, labels = predict(inference, eval_batches(rows, test), device)
    rarest = rarest_id_counts(rows.ids[test].cpu().numpy().astype(np.int64), counts)
    entry["overall"] = ctr_metrics(probs, labels)
    entry["frequency"] = frequency_metrics(probs, labels, rarest, edges)
    return entry


def eval_batches(rows: DeviceRows, test: slice) -> Iterator[Batch]:
    """The test split in order, in batches of :data:`EVAL_BATCH` (from the rows' own device)."""
    for lo in range(test.start, test.stop, EVAL_BATCH):
        part = slice(lo, min(lo + EVAL_BATCH, test.stop))
        yield Batch(rows.dense[part], SparseFeatures.from_ids(rows.ids[part]), rows.labels[part])


def entry_path(run_dir: Path, spec: RunSpec) -> Path:
    """Where a run's entry goes: ``RUN_DIR/rank/OPT/NAME.json``."""
    return Path(run_dir) / RANK_DIR / spec.optimizer / f"{spec.name}.json"


def write_entry(run_dir: Path, spec: RunSpec, entry: dict) -> None:
    """Store one run's entry (strict JSON: NaN as null)."""
    path = entry_path(run_dir, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nan_to_none(entry), indent=1) + "\n")


def nan_to_none(value):
    """``value`` with every NaN float replaced by None, recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return value


def none_to_nan(value):
    """Inverse of :func:`nan_to_none` for the metrics the reports format (``auc``, ``logloss``, ...)."""
    if isinstance(value, dict):
        return {k: (math.nan if v is None and k in METRIC_KEYS else none_to_nan(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [none_to_nan(v) for v in value]
    return value


METRIC_KEYS = {"auc", "logloss", "accuracy", "share"}


def write_reports(run_dir: Path, top_tables: int = 6) -> list[Path]:
    """``rank.md``, ``rank.json`` and ``rank.png`` for each optimizer folder under ``RUN_DIR/rank`` that holds
    entries; returns the folders written."""
    written = []
    for folder in sorted(p for p in (Path(run_dir) / RANK_DIR).glob("*") if p.is_dir()):
        entries = [none_to_nan(json.loads(p.read_text())) for p in sorted(folder.glob("*_s*.json"))]
        if not entries:
            continue
        entries.sort(key=lambda r: (r["mlet_hidden"] > 0, r["dim"], r["mlet_hidden"]))
        (folder / "rank.md").write_text(markdown(entries, top_tables))
        (folder / "rank.json").write_text(json.dumps(nan_to_none(entries), indent=1) + "\n")
        plot(entries, folder / "rank.png")
        written.append(folder)
    return written
