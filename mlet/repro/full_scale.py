"""The paper's grid at Criteo-Kaggle scale on one GPU: every run in one process, in resumable pieces.

    PYTHONPATH=. python3 scripts/full_scale.py --budget-s 480     # on the GPU machine; again to continue

Where ``scripts/sweep.py`` starts one ``dlrm_mlet.py`` per run on a raw text
file, a piece here generates the click model once on the device at Kaggle's
size (:mod:`mlet.data.device_click`: 45.8M rows, 15.4M table rows seen in
training), then trains run after run in-process with the rows kept there and
the tables initialised there, until its time budget would be overrun. Each run
writes the same results JSON as a ``dlrm_mlet.py`` run (``RUN_DIR/results/``,
read by ``scripts/summarize.py``) and its log (``RUN_DIR/logs/``); the first
seed's runs at the paper rates also write their effective ranks and
rare-vs-frequent metrics (``RUN_DIR/rank/OPT/NAME.json``, computed from the
model in memory: a full-size checkpoint would be 1-4 GB). Starting the same
command again skips the finished runs.

The grid, the protocols, the widening and the done-run test are
``sweep.py``'s (:mod:`mlet.repro.sweep`, the same flags); the order differs:
the runs that decide the headline come first (first seed, paper rates,
baselines and the narrowest MLET config), then the rest of the paper rates,
the tuned grids (widened on the first seed as soon as its runs are in, then on
every seed), and the other seeds last. See docs/reproducing.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import dlrm_mlet
from dlrm_model import DLRM
from mlet.core.config import ModelConfig
from mlet.core.errors import OneLineParser, UserError, require_at_least, run_reporting_errors
from mlet.data.device_click import KAGGLE_ROWS, DeviceRows, device_bundle, kaggle_rows
from mlet.repro import full_scale_rank, summary, sweep, sweep_plan
from mlet.repro.experiments import Config, RunSpec, sweep_record
from mlet.training.checkpoints import dashed
from mlet.training.processes import SingleProcess
from mlet.training.trainer import Trainer, write_json
from mlet_layers import EmbeddingTables

PROG = "full_scale.py"
DEFAULT_RUN_DIR = Path("bench/results/repro_full_scale")
# The grid of the issue, with the embedded default's learning-rate grids (so the two compare side by side).
DEFAULT_GRID = [
    "--baseline-dims", "4", "8", "16", "32", "64", "--mlet-dims", "4", "8", "16", "--mlet-hidden", "64",
    "--seeds", "1", "2", "--optimizers", "sgd", "adagrad",
    "--lrs", "sgd=0.2,0.8,3.2", "adagrad=0.0125,0.05,0.2", "--paper-lr", "sgd=0.2", "adagrad=0.05",
    "--mlp-bot-prefix", "13-512-256-64", "--tests-per-epoch", "4", "--checkpoints", "paper",
]  # fmt: skip
# Every run's training flags: the paper's DLRM (top 512-256-1), one batch size for all (docs/reproducing.md).
DEFAULT_TRAIN = [
    "--data-generation=synthetic", "--arch-mlp-top=512-256-1", "--mini-batch-size=2048",
    "--test-mini-batch-size=65536", "--progress=false", "--print-time",
]  # fmt: skip


@dataclass
class Piece:
    """One call's work: the grid's settings, the rows on the device, and the time allowed for training."""

    settings: sweep_plan.Settings
    rows: DeviceRows
    device: torch.device
    budget_s: float
    edges: list[int]
    started: float
    accept_data_change: bool = False
    scale: float = 1.0


# Sweep flags the in-process runner does not honour (refused, not ignored), with their namespace names and why.
PAPER_QUESTION = (
    "the full-scale grid compares plain tables with MLET only (the paper's question); scripts/reproduce.sh's "
    "embedded default compares quotient-remainder, mixed-dimension and quantized tables"
)
ONE_AT_A_TIME = "the full-scale runs train one after another in this process, on the device; leave it out"
UNHONOURED = {
    "--qr-dims": ("qr_dims", PAPER_QUESTION),
    "--mlet-qr-dims": ("mlet_qr_dims", PAPER_QUESTION),
    "--qr-collisions": ("qr_collisions", PAPER_QUESTION),
    "--md-dims": ("md_dims", PAPER_QUESTION),
    "--mlet-md-dims": ("mlet_md_dims", PAPER_QUESTION),
    "--md-temperatures": ("md_temperatures", PAPER_QUESTION),
    "--quantize-bits": ("quantize_bits", PAPER_QUESTION),
    "--jobs": ("jobs", ONE_AT_A_TIME),
    "--threads": ("threads", ONE_AT_A_TIME),
}
# What a piece records of its data flags in sweep.json (and a results JSON in its full_scale block).
DATA_FLAGS = {"rows": "--rows", "scale": "--scale", "data_seed": "--data-seed"}


# -- which runs, in which order -------------------------------------------------------------


def priority(spec: RunSpec, settings: sweep_plan.Settings) -> tuple:
    """Sort key: first seed first; paper rates before tuned ones; optimizers in their order; baselines and the
    narrowest MLET config before the other MLET configs; then config and rate."""
    narrowest = min((c for c in settings.configs if c.is_mlet), default=None)
    decisive = not spec.config.is_mlet or spec.config == narrowest
    at_paper = spec.lr == settings.paper_lrs[spec.optimizer]
    return (
        settings.seeds.index(spec.seed) if spec.seed in settings.seeds else len(settings.seeds),
        not at_paper,
        settings.optimizers.index(spec.optimizer),
        not decisive,
        spec.config,
        spec.lr,
    )


def wanted(settings: sweep_plan.Settings) -> list[RunSpec]:
    """The runs still to do, in :func:`priority` order: the initial grid, the widening the first seed's runs
    already call for, and the widening (or missing seeds) of every seed (:func:`sweep_plan.widened_specs`)."""
    first = replace(settings, seeds=settings.seeds[:1])
    specs = [*sweep_plan.initial_specs(settings), *sweep_plan.widened_specs(first), *sweep_plan.widened_specs(settings)]
    todo = [s for s in dict.fromkeys(specs) if not sweep_plan.finished(s, settings.run_dir)]
    return sorted(todo, key=lambda s: priority(s, settings))


# -- one run ------------------------------------------------------------------------------------


def test_freq(settings: sweep_plan.Settings, rows: DeviceRows, batch_size: int) -> int:
    """Steps between test points: ``--tests-per-epoch`` per epoch, as ``sweep.py`` sets it."""
    return max(1, math.ceil(math.ceil(rows.train_end / batch_size) / settings.tests_per_epoch))


def run_flags(spec: RunSpec, settings: sweep_plan.Settings, extra: Sequence[str] = ()) -> list[str]:
    """The ``dlrm_mlet.py`` flags of a run, as ``sweep.py`` gives them (no checkpoint file: see the module)."""
    argv = [a for a in sweep_plan.run_argv(spec, settings, None) if not a.startswith("--save-collapsed=")]
    return [*argv, *extra]


def build_trainer(spec: RunSpec, piece: Piece, extra: Sequence[str] = ()) -> tuple[dlrm_mlet.Run, Trainer]:
    """The run's checked flags and its trainer: data served from the piece's rows, tables initialised on the
    device (CPU generators for a CPU device)."""
    settings, device = piece.settings, piece.device
    probe = dlrm_mlet.run_config(run_flags(spec, settings, extra))
    freq = test_freq(settings, piece.rows, probe.data.batch_size)
    run = dlrm_mlet.run_config(run_flags(spec, settings, [f"--test-freq={freq}", *extra]))
    data = device_bundle(piece.rows, run.data.batch_size, run.data.test_batch_size, run.train.seed)
    config = replace(run.model, table_sizes=tuple(data.table_sizes))
    check_in_process(run, config)
    torch.manual_seed(run.train.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = run.tf32
        torch.backends.cudnn.allow_tf32 = run.tf32
    tables = EmbeddingTables.from_config(config, seed=None, device=device)
    tables.reset_parameters(run.train.seed, on_device=device.type == "cuda")
    model = DLRM(config, seed=run.train.seed, device=device, tables=tables)
    flags = {
        **(run.flags or {}),
        "table_sizes": list(data.table_sizes),
        "arch_embedding_size": dashed(data.table_sizes),
    }
    return run, Trainer(run.train, data, model, SingleProcess(device), flags=flags)


def check_in_process(run: dlrm_mlet.Run, config: ModelConfig) -> None:
    """A :class:`UserError` unless ``run`` trains plain or MLET tables and evaluates them as trained: the tables
    here are built as :class:`EmbeddingTables` (never quotient-remainder or mixed-dimension ones, which need
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
    dlrm_mlet.describe(trainer.model, trainer.data)
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


# -- a piece ------------------------------------------------------------------------------------


def run_piece(piece: Piece) -> dict:
    """Run the wanted runs in :func:`priority` order while the next one fits in the budget; returns counts."""
    settings = piece.settings
    check_data(settings.run_dir, piece.rows.checksum_text, piece.accept_data_change)
    manifest = sweep.Manifest(settings)
    manifest.session.update(device=device_name(piece.device), data_seconds=round(piece.rows.seconds, 1))
    manifest.session.update(rows=piece.rows.rows, scale=piece.scale, data_seed=piece.rows.seed)
    manifest.session["data_checksum"] = piece.rows.checksum_text
    counts: dict = {"finished": 0, "failed": 0, "left": 0}
    failed: set[str] = set()
    longest = 0.0
    try:
        while True:
            todo = [s for s in wanted(settings) if s.name not in failed]
            elapsed = time.perf_counter() - piece.started
            if not todo or elapsed + 1.2 * longest > piece.budget_s:
                counts["left"] = len(todo)
                break
            spec = todo[0]
            start = time.perf_counter()
            code = run_logged(spec, piece)
            seconds = time.perf_counter() - start
            longest = max(longest, seconds)
            status = sweep.run_status(spec, code, settings.run_dir)
            manifest.record(spec, status, seconds)
            done = status.startswith("finished")
            counts["finished" if done else "failed"] += 1
            if not done:
                failed.add(spec.name)
            print(f"{PROG}: {spec.name}: {status} in {seconds:.1f} s ({elapsed + seconds:.0f} s of the piece)")
    except KeyboardInterrupt:  # the runs not finished are still to do (the one interrupted among them)
        counts.update(left=len([s for s in wanted(settings) if s.name not in failed]), interrupted=True)
        raise
    finally:
        manifest.finish(counts)
    return counts


def earlier_data(run_dir: Path) -> dict:
    """The data flags (``rows``, ``scale``, ``data_seed``) of the run directory's earlier pieces: the latest
    piece record in ``sweep.json`` that has them, else the ``full_scale`` block of a results JSON (directories
    from before the pieces recorded them: rows and data seed); empty for a new directory."""
    record = sweep_record(run_dir) or {}
    for session in reversed(record.get("sessions", [])):
        if all(key in session for key in DATA_FLAGS):
            return {key: session[key] for key in DATA_FLAGS}
    for path in sorted((Path(run_dir) / "results").glob("*.json")):
        try:
            block = json.loads(path.read_text()).get("full_scale") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if block:
            return {key: block[key] for key in DATA_FLAGS if key in block}
    return {}


def check_data_flags(run_dir: Path, flags: dict) -> None:
    """Refuse, before generating anything, a piece whose ``--rows``, ``--scale`` or ``--data-seed`` differ from
    the earlier pieces' in ``run_dir`` (``flags``: :data:`DATA_FLAGS`' keys): its runs would not compare."""
    for key, old in earlier_data(run_dir).items():
        if old != flags[key]:
            flag = DATA_FLAGS[key]
            raise UserError(
                f"{flag}: the runs in --run-dir {run_dir} were trained on data generated with {flag} {old}, this "
                f"piece gives {flag} {flags[key]}; give {flag} {old}, or another --run-dir"
            )


def check_data(run_dir: Path, checksum: str, accept: bool) -> None:
    """Refuse to add runs on other rows than the earlier pieces' (their ``data_checksum`` in ``sweep.json``),
    unless ``accept`` (``--accept-data-change``)."""
    record = sweep_record(run_dir) or {}
    earlier = {s["data_checksum"] for s in record.get("sessions", []) if s.get("data_checksum")}
    if earlier - {checksum} and not accept:
        raise UserError(
            f"--run-dir {run_dir}: its runs were trained on data with checksum {sorted(earlier)[0]!r}, this piece "
            f"generated {checksum!r} (another GPU kind, torch version or generator); give another --run-dir, "
            "or --accept-data-change to mix them"
        )


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


# -- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """This command's own flags; the rest go to ``sweep.py``'s parser (after :data:`DEFAULT_GRID`)."""
    p = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="results/, logs/, rank/, sweep.json")
    p.add_argument("--rows", type=int, default=KAGGLE_ROWS, help="rows generated (train, test and validation)")
    p.add_argument("--scale", type=float, default=1.0, help="table cardinalities as a share of Kaggle's")
    p.add_argument("--data-seed", type=int, default=1, help="seed of the click model and its samples")
    p.add_argument("--device", default="cuda", help="cuda[:N] (the GPU) or cpu (small tests)")
    p.add_argument("--budget-s", type=float, default=480.0, help="no run starts that would end past this")
    p.add_argument("--frequency-edges", default="10,100,1000", help="bins of the rarest-id training count")
    p.add_argument("--measure-batches", type=int, nargs="*", default=[], help="time training steps at these batches")
    p.add_argument("--measure-steps", type=int, default=400, help="timed steps per batch size")
    p.add_argument("--step-rates-json", type=Path, default=None, help="where the step rates go (JSON)")
    p.add_argument(
        "--accept-data-change",
        action="store_true",
        help="continue a run directory whose earlier pieces generated other rows (other data checksum)",
    )
    p.add_argument("--dry-run", action="store_true", help="list the runs still to do, in order; train nothing")
    p.add_argument(
        "--report",
        action="store_true",
        help="no training: write summary.md and the plots (summarize.py) and rank/OPT/rank.md from RUN_DIR",
    )
    return p


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, sweep_plan.Settings | None]:
    """This command's flags (``device`` made a :class:`torch.device`) and the sweep's settings (None for
    ``--report``, which reads the run directory alone); a :class:`UserError` names a bad flag."""
    argv = list(sys.argv[1:] if argv is None else argv)
    dashes = argv.index("--") if "--" in argv else len(argv)
    args, rest = build_parser().parse_known_args(argv[:dashes])
    require_at_least((("--rows", args.rows, 7), ("--measure-steps", args.measure_steps, 1)))
    if not 0 < args.scale <= 1:
        raise UserError(f"--scale: must be in (0, 1], got {args.scale}")
    if args.budget_s <= 0:
        raise UserError(f"--budget-s: must be > 0, got {args.budget_s}")
    if args.report:
        return args, None
    args.device = parse_device(args.device)
    train = [*DEFAULT_TRAIN, *(["--use-gpu"] if args.device.type == "cuda" else []), *argv[dashes + 1 :]]
    parser = sweep.build_parser(prog=PROG)
    sweep_args = parser.parse_args([*DEFAULT_GRID, "--run-dir", str(args.run_dir), *rest, "--", *train])
    for flag, (dest, why) in UNHONOURED.items():
        if getattr(sweep_args, dest) != parser.get_default(dest):
            raise UserError(f"{flag}: {why}")
    settings = sweep.settings_from_args(sweep_args)
    sweep.check_run_dir(settings)
    check_data_flags(args.run_dir, {"rows": args.rows, "scale": args.scale, "data_seed": args.data_seed})
    return args, settings


def parse_device(text: str) -> torch.device:
    """``--device``: ``cpu``, or ``cuda``/``cuda:N`` of a GPU this machine has."""
    try:
        device = torch.device(text)
    except RuntimeError:
        device = torch.device("meta")  # refused below, with the rest
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device: expected cpu or cuda[:N], got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {text}: no CUDA device is available (use --device cpu for a small test)")
    if device.index is not None and device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends with one line on stderr and exit code 2, failed runs with exit code 1, Ctrl-C
    with one line and exit code 130 (the piece's record in ``sweep.json`` says so)."""
    return run_reporting_errors(PROG, lambda: run_command(argv), interrupted=sweep.RESUMABLE)


def run_command(argv: Sequence[str] | None) -> int:
    """Check the flags, then the report, the list of runs, or a piece (step rates first when asked)."""
    args, settings = parse(argv)
    edges = full_scale_rank.checked_edges(args.frequency_edges)
    if settings is None:
        return report(args.run_dir)
    if args.dry_run:
        todo = wanted(settings)
        print(f"{PROG}: {len(todo)} runs to do (more may follow from widening)")
        for spec in todo:
            print(spec.name)
        return 0
    started = time.perf_counter()
    device = args.device
    rows = kaggle_rows(args.rows, args.data_seed, args.scale, device)
    print(f"{PROG}: data in {rows.seconds:.1f} s: {rows.describe()}")
    print(f"{PROG}: data checksum: {rows.checksum_text}")
    piece = Piece(settings, rows, device, args.budget_s, edges, started, args.accept_data_change, args.scale)
    if args.measure_batches:
        configs = [Config(16), min(c for c in settings.configs if c.is_mlet)]
        rates = measure_steps(piece, args.measure_batches, configs, args.measure_steps)
        if args.step_rates_json is not None:
            record = {"device": device_name(device), "tf32": False, "rows": rows.rows, "rates": rates}
            args.step_rates_json.parent.mkdir(parents=True, exist_ok=True)
            args.step_rates_json.write_text(json.dumps(record, indent=1) + "\n")
    counts = run_piece(piece)
    print(
        f"{PROG}: {counts['finished']} runs finished, {counts['failed']} failed, {counts['left']} still to do "
        f"(more may follow from widening); {time.perf_counter() - started:.0f} s in all"
    )
    return 1 if counts["failed"] else 0


def report(run_dir: Path) -> int:
    """The summary (as ``summarize.py RUN_DIR`` writes it) and the rank reports of the finished runs (on any
    machine); a :class:`UserError` names the run directory."""
    if not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir}: no such folder (--report reads the results of earlier pieces)")
    print(summary.summarize_sweep(run_dir, run_dir, summary.paper_lrs_of(run_dir, [])))
    for folder in full_scale_rank.write_reports(run_dir):
        print(f"{PROG}: wrote {folder / 'rank.md'}")
    return 0


def cli() -> None:
    """``python scripts/full_scale.py``."""
    sys.exit(main())
