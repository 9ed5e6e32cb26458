"""One run of the full-scale grid, in the process that holds the rows: build, train, record.

A :class:`Piece` is what a run needs: the grid's settings, the generated rows on
their device and the rank analysis' bins. :func:`run_logged` trains one
:class:`~mlet.repro.experiments.RunSpec` on it and writes what a ``dlrm_mlet.py``
run writes (results JSON, log); :func:`measure_steps` times training steps.
:mod:`mlet.repro.full_scale_pool` runs these on one or several devices and
:mod:`mlet.repro.full_scale` decides which runs, in which order.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import dlrm_mlet
from dlrm_model import DLRM
from mlet.cli.configs import Run, run_config
from mlet.core.config import ModelConfig
from mlet.core.errors import UserError
from mlet.data.device_click import DeviceRows, device_bundle
from mlet.repro import full_scale_rank, sweep_plan
from mlet.repro.experiments import Config, RunSpec
from mlet.training.checkpoints import dashed
from mlet.training.processes import SingleProcess
from mlet.training.results import write_json
from mlet.training.trainer import Trainer

PROG = "full_scale.py"
# Why the in-process runner builds plain and MLET tables only (full_scale.py refuses the other methods' flags).
PAPER_QUESTION = (
    "the full-scale grid compares plain tables with MLET only (the paper's question); scripts/reproduce.sh's "
    "embedded default compares quotient-remainder, mixed-dimension and quantized tables"
)


@dataclass
class Piece:
    """What a run needs: the grid's settings, the rows on their device, the rarest-id bins of the rank analysis."""

    settings: sweep_plan.Settings
    rows: DeviceRows
    device: torch.device
    edges: list[int]
    scale: float = 1.0


def test_freq(settings: sweep_plan.Settings, rows: DeviceRows, batch_size: int) -> int:
    """Steps between test points: ``--tests-per-epoch`` per epoch, as ``sweep.py`` sets it."""
    return max(1, math.ceil(math.ceil(rows.train_end / batch_size) / settings.tests_per_epoch))


def run_flags(spec: RunSpec, settings: sweep_plan.Settings, extra: Sequence[str] = ()) -> list[str]:
    """The ``dlrm_mlet.py`` flags of a run, as ``sweep.py`` gives them (no checkpoint file: see the module)."""
    argv = [a for a in sweep_plan.run_argv(spec, settings, None) if not a.startswith("--save-collapsed=")]
    return [*argv, *extra]


def check_run_flags(settings: sweep_plan.Settings) -> None:
    """Check the runs' flags once, as ``dlrm_mlet.py`` would, before any data is generated: a bad flag after
    ``--`` (or one of this command's own put there) would otherwise fail every run of the piece."""
    spec = sweep_plan.initial_specs(settings)[0]
    argv = [a for a in run_flags(spec, settings) if not a.startswith("--results-json=")]  # it would make folders
    _, unknown = dlrm_mlet.build_parser().parse_known_args(argv)
    if unknown:
        raise UserError(
            f"{' '.join(unknown)}: not a dlrm_mlet.py flag (the flags after -- go to every run; {PROG}'s own go "
            "before --)"
        )
    try:
        run = run_config(argv)
    except UserError as error:
        raise sweep_plan.in_sweep_terms(error, settings, spec.config.dim) from None
    check_in_process(run, run.model)


def build_trainer(spec: RunSpec, piece: Piece, extra: Sequence[str] = ()) -> tuple[Run, Trainer]:
    """The run's checked flags and its trainer: data served from the piece's rows, the tables drawn as in
    ``dlrm_mlet.py``."""
    settings, device = piece.settings, piece.device
    probe = run_config(run_flags(spec, settings, extra))
    freq = test_freq(settings, piece.rows, probe.data.batch_size)
    run = run_config(run_flags(spec, settings, [f"--test-freq={freq}", *extra]))
    data = device_bundle(piece.rows, run.data.batch_size, run.data.test_batch_size, run.train.seed)
    config = replace(run.model, table_sizes=tuple(data.table_sizes))
    check_in_process(run, config)
    torch.manual_seed(run.train.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = run.tf32
        torch.backends.cudnn.allow_tf32 = run.tf32
    model = DLRM(config, seed=run.train.seed, device=device)
    flags = {
        **(run.flags or {}),
        "table_sizes": list(data.table_sizes),
        "arch_embedding_size": dashed(data.table_sizes),
    }
    return run, Trainer(run.train, data, model, SingleProcess(device), flags=flags)


def check_in_process(run: Run, config: ModelConfig) -> None:
    """A :class:`UserError` unless ``run`` trains plain or MLET tables and evaluates them as trained: the tables
    here are plain or MLET tables (never quotient-remainder or mixed-dimension ones, which need
    their own tables and, for mixed dimensions, the training counts) and nothing evaluates quantized tables."""
    if config.is_composite or config.qr_flag or config.md_dims or run.mixed_dimension is not None:
        flag = "--qr-flag" if config.qr_flag else "--md-flag"
        raise UserError(f"{flag}: {PAPER_QUESTION}")
    if run.quantize_bits:
        raise UserError(f"--quantize-emb-with-bit: {PAPER_QUESTION}")


def data_record(piece: Piece) -> dict:
    """What a results JSON records of the generated data (``full_scale``)."""
    rows = piece.rows
    return {
        "generator": "mlet.data.device_click.kaggle_rows",
        "rows": rows.rows,
        "scale": piece.scale,
        "data_seed": rows.seed,
        "model_table_sizes": rows.model_table_sizes,
        "split": {"train": rows.train_end, "test": rows.test_end - rows.train_end, "val": rows.rows - rows.test_end},
        "checksum": rows.checksum_text,
        "device_name": device_name(piece.device),
    }


def train_one(spec: RunSpec, piece: Piece) -> None:
    """Train one run, write its results JSON (and, for the first seed's paper-rate runs, its rank entry)."""
    run, trainer = build_trainer(spec, piece)
    dlrm_mlet.describe(trainer)
    trainer.train()
    final = trainer.history[-1] if trainer.history else trainer.test()
    payload = {**trainer.results(final, trainer.validate(final)), "full_scale": data_record(piece)}
    write_json(run.results_json, payload)
    if sweep_plan.wants_checkpoint(spec, piece.settings):
        entry = full_scale_rank.analyze_model(spec, trainer.model, piece.rows, piece.device, piece.edges)
        full_scale_rank.write_entry(piece.settings.run_dir, spec, entry)
    del trainer
    gc.collect()
    if piece.device.type == "cuda":
        torch.cuda.empty_cache()


def run_logged(spec: RunSpec, piece: Piece) -> int:
    """:func:`train_one` with its log in ``RUN_DIR/logs/NAME.log``; 0, or 1 after an error (noted in the log)."""
    log_path = Path(piece.settings.run_dir) / "logs" / f"{spec.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out, contextlib.redirect_stdout(out):
        print(f"# {spec.name}: in-process run of {PROG}; flags {' '.join(run_flags(spec, piece.settings))}")
        try:
            train_one(spec, piece)
        except (UserError, RuntimeError, ValueError) as error:
            print(f"{PROG}: error: {type(error).__name__}: {error}")
            return 1
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted")
            raise
    return 0


def device_name(device: torch.device) -> str:
    """The GPU's name, or ``cpu``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def measure_steps(piece: Piece, batches: Sequence[int], configs: Sequence[Config], steps: int) -> list[dict]:
    """Training steps per second at each batch size (data on the device, the run's precision), after a warm-up
    of ``steps // 4`` steps; the mean over ``steps`` steps."""
    rows = []
    optimizer = piece.settings.optimizers[0]
    for config in configs:
        for batch in batches:
            spec = RunSpec(optimizer, config, piece.settings.paper_lrs[optimizer], piece.settings.seeds[0])
            _, trainer = build_trainer(spec, piece, [f"--mini-batch-size={batch}"])
            timed = time_steps(trainer, steps)
            rows.append({"model": config.title, "batch": batch, **timed})
            print(
                f"{PROG}: step rate {config.title}, batch {batch}: {timed['ms_per_step']:.3f} ms/step, "
                f"{timed['samples_per_second'] / 1e6:.2f}M samples/s, an epoch of "
                f"{piece.rows.train_end:,} samples in {piece.rows.train_end / timed['samples_per_second']:.0f} s"
            )
            del trainer
            gc.collect()
    return rows


def time_steps(trainer: Trainer, steps: int) -> dict:
    """Time ``steps`` steps of ``trainer`` on its first training batches (after ``steps // 4`` warm-up steps)."""
    device = trainer.device
    batches = trainer.data.train.batches(0)
    warmup = max(1, steps // 4)
    for _ in range(warmup):
        trainer.step(next(batches))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, samples = time.perf_counter(), 0
    for _ in range(steps):
        batch = next(batches)
        trainer.step(batch)
        samples += batch.size
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"steps": steps, "ms_per_step": 1000 * seconds / steps, "samples_per_second": samples / seconds}
