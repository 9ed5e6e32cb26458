"""Run the paper's grid: baselines and MLET configs x optimizers x learning rates x seeds.

    .venv/bin/python scripts/sweep.py --run-dir runs/criteo_kaggle \\
        --baseline-dims 2 4 8 16 32 64 --mlet-dims 2 4 8 16 --mlet-hidden 16 32 64 128 \\
        --seeds 1 2 3 --optimizers sgd adagrad --jobs 2 \\
        -- --data-generation=dataset --data-set=kaggle --raw-data-file=train.txt --mini-batch-size=128

Everything after ``--`` is passed to every ``dlrm_mlet.py`` run (data, batch
size, epochs, top MLP, ...); the sweep sets the per-run flags itself
(``--arch-sparse-feature-size``, ``--arch-mlp-bot`` = ``--mlp-bot-prefix`` plus
d, ``--mlet-hidden``, ``--optimizer``, ``--learning-rate``,
``--numpy-rand-seed``, ``--test-freq``, ``--results-json``, ``--save-collapsed``).

Each run writes ``RUN_DIR/results/NAME.json`` (atomically, at its end) and
``RUN_DIR/logs/NAME.log``; a run whose JSON exists is skipped, so an
interrupted sweep continues where it stopped when started again with the same
command. ``RUN_DIR/sweep.json`` records the settings, the paper learning rates
(for ``summarize.py``), and each run's status and wall time.

Learning rates: every config runs the optimizer's initial grid (``--lrs``,
which includes its ``--paper-lr``); for the ``tuned`` protocol the grid then
widens by ``--widen-factor`` (at most ``--max-widen`` steps a side). The
protocols and the widening: docs/reproducing.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mlet.cli.configs import parse_dashed, run_config
from mlet.core.config import DataConfig
from mlet.core.errors import OneLineParser, UserError, check_output_folder, require_at_least, run_reporting_errors
from mlet.core.signals import exit_status
from mlet.data.sources import build_data
from mlet.repro.experiments import PROTOCOLS, RunSpec, grid_configs, round_lr
from mlet.repro.run_results import sweep_record
from mlet.repro.sweep_plan import (
    Settings,
    in_sweep_terms,
    initial_specs,
    pending,
    recorded_flags,
    run_argv,
    widened_specs,
)
from mlet.repro.sweep_runs import Manifest, Runner, run_specs, subprocess_runner

PROG = "sweep.py"
SWEEP_FLAGS = (
    "--arch-sparse-feature-size",
    "--arch-mlp-bot",
    "--mlet-hidden",
    "--qr-flag",
    "--qr-collisions",
    "--md-flag",
    "--md-temperature",
    "--quantize-emb-with-bit",
    "--optimizer",
    "--learning-rate",
    "--numpy-rand-seed",
    "--results-json",
    "--save-collapsed",
    "--save-model",
)
DEFAULT_LRS = {"sgd": (0.05, 0.2, 0.8), "adagrad": (0.0125, 0.05, 0.2), "adam": (0.00025, 0.001, 0.004)}
DEFAULT_PAPER_LR = {"sgd": 0.2, "adagrad": 0.05, "adam": 0.001}
CHECKPOINT_CHOICES = ("none", "paper", "all")


def sweep(
    settings: Settings, runner: Runner | None = None, test_freq: int | None = None, max_rounds: int = 50
) -> dict[str, int]:
    """Run the initial grid, then widening rounds until every tuned rate is interior; returns run counts.

    Runs whose JSON exists are skipped. ``runner`` defaults to
    :func:`subprocess_runner`.
    """
    runner = runner or subprocess_runner(settings.threads)
    manifest = Manifest(settings)
    totals = {"finished": 0, "failed": 0, "skipped": 0}
    specs = initial_specs(settings)
    try:
        run_rounds(specs, settings, runner, manifest, test_freq, max_rounds, totals)
    finally:  # also when interrupted: the session gets its end
        manifest.finish(totals)
    return totals


def run_rounds(
    specs: list[RunSpec],
    settings: Settings,
    runner: Runner,
    manifest: Manifest,
    test_freq: int | None,
    max_rounds: int,
    totals: dict,
) -> None:
    """The grid, then the widening rounds; adds to ``totals``."""
    failed: set[str] = set()  # not retried in this session
    for round_ in range(max_rounds):
        todo = [s for s in pending(specs, settings.run_dir) if s.name not in failed]
        if round_ == 0:
            totals["skipped"] = len(specs) - len(todo)
        if todo:
            desc = "grid" if round_ == 0 else f"widening {round_}"
            failed |= set(run_specs(todo, settings, runner, manifest, test_freq, desc, totals))
        specs = [s for s in widened_specs(settings) if s.name not in failed]
        if not specs:
            break


# -- command line -------------------------------------------------------------------------


def parse_rates(items: Sequence[str], flag: str, many: bool) -> dict[str, list[float]]:
    """``sgd=0.05,0.2,0.8 adagrad=0.05`` -> ``{"sgd": [0.05, 0.2, 0.8], ...}``; positive finite rates."""
    out: dict[str, list[float]] = {}
    for item in items:
        name, _, values = item.partition("=")
        try:
            rates = [float(v) for v in values.split(",")]
        except ValueError:
            raise UserError(f"{flag}: expected OPTIMIZER=RATE{',RATE...' if many else ''}, got '{item}'") from None
        if (
            not name
            or not rates
            or (not many and len(rates) != 1)
            or not all(r > 0 and math.isfinite(r) for r in rates)
        ):
            raise UserError(
                f"{flag}: expected OPTIMIZER=RATE{',RATE...' if many else ''} with positive rates, got '{item}'"
            )
        if name not in DEFAULT_LRS:
            raise UserError(
                f"{flag}: unknown optimizer '{name}' in '{item}' (choose from {', '.join(sorted(DEFAULT_LRS))})"
            )
        out[name] = rates
    return out


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The command line (``prog`` names the command in its errors: ``full_scale.py`` reuses it)."""
    p = OneLineParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, required=True, help="where results/, logs/, checkpoints/ and sweep.json go")
    p.add_argument("--baseline-dims", type=int, nargs="*", default=[2, 4, 8, 16, 32, 64])
    p.add_argument("--mlet-dims", type=int, nargs="*", default=[2, 4, 8, 16])
    p.add_argument(
        "--mlet-hidden",
        type=int,
        nargs="*",
        default=[16, 32, 64, 128],
        help="MLET K values (pairs with K < d are left out)",
    )
    p.add_argument("--qr-dims", type=int, nargs="*", default=[], help="quotient-remainder configs at these d")
    p.add_argument("--mlet-qr-dims", type=int, nargs="*", default=[], help="MLET + quotient-remainder at these d")
    p.add_argument("--qr-collisions", type=int, nargs="+", default=[4], help="remainder rows of the QR configs")
    p.add_argument("--md-dims", type=int, nargs="*", default=[], help="mixed-dimension configs at these base d")
    p.add_argument("--mlet-md-dims", type=int, nargs="*", default=[], help="MLET + mixed dimensions at these d")
    p.add_argument(
        "--md-temperatures", type=float, nargs="+", default=[0.3], help="--md-temperature values of the MD configs"
    )
    p.add_argument(
        "--quantize-bits",
        type=int,
        nargs="*",
        default=[],
        choices=(8, 4),
        help="also evaluate every run with row-wise int8 / int4 tables (--quantize-emb-with-bit)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--optimizers", nargs="+", default=["sgd", "adagrad"], choices=sorted(DEFAULT_LRS))
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    p.add_argument(
        "--lrs", nargs="*", default=[], metavar="OPT=LR,LR,...", help=f"initial tuned grids (default {DEFAULT_LRS})"
    )
    p.add_argument(
        "--paper-lr",
        nargs="*",
        default=[],
        metavar="OPT=LR",
        help=f"the paper protocol's shared rates (default {DEFAULT_PAPER_LR})",
    )
    p.add_argument("--widen-factor", type=float, default=4.0, help="step of the tuned grid's widening")
    p.add_argument("--max-widen", type=int, default=3, help="widening steps allowed on each side of the initial grid")
    p.add_argument(
        "--mlp-bot-prefix", default="13-512-256-64", help="bottom MLP without its last width (d is appended)"
    )
    p.add_argument(
        "--tests-per-epoch",
        type=int,
        default=8,
        help="test points per epoch for the AUC-vs-step curves (unless --test-freq is passed through)",
    )
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (OMP_NUM_THREADS)")
    p.add_argument(
        "--checkpoints",
        choices=CHECKPOINT_CHOICES,
        default="none",
        help="save collapsed checkpoints: none, the first seed's paper-rate runs, all",
    )
    p.add_argument(
        "--checkpoint-dims",
        type=int,
        nargs="+",
        default=None,
        help="save checkpoints only of configs of these widths d (full-size tables are large)",
    )
    p.add_argument("--dry-run", action="store_true", help="list the initial runs still to do, run nothing")
    p.add_argument("train_flags", nargs="*", help="after --: flags for every dlrm_mlet.py run")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Check the command line and make :class:`Settings`; bad input is a :class:`UserError` naming the flag."""
    for flag, values in (
        ("--baseline-dims", args.baseline_dims),
        ("--mlet-dims", args.mlet_dims),
        ("--mlet-hidden", args.mlet_hidden),
        ("--qr-dims", args.qr_dims),
        ("--mlet-qr-dims", args.mlet_qr_dims),
        ("--qr-collisions", args.qr_collisions),
        ("--md-dims", args.md_dims),
        ("--mlet-md-dims", args.mlet_md_dims),
    ):
        if any(v < 1 for v in values):
            raise UserError(f"{flag}: every value must be >= 1, got {values}")
    if not all(math.isfinite(t) and t >= 0 for t in args.md_temperatures):
        raise UserError(f"--md-temperatures: every value must be a finite number >= 0, got {args.md_temperatures}")
    require_at_least(
        (
            ("--jobs", args.jobs, 1),
            ("--threads", args.threads, 1),
            ("--tests-per-epoch", args.tests_per_epoch, 1),
            ("--max-widen", args.max_widen, 0),
        )
    )
    if args.widen_factor <= 1 and "tuned" in args.protocols:
        raise UserError(f"--widen-factor: must be > 1, got {args.widen_factor}")
    lrs = {k: list(v) for k, v in DEFAULT_LRS.items()} | parse_rates(args.lrs, "--lrs", many=True)
    paper = dict(DEFAULT_PAPER_LR) | {k: v[0] for k, v in parse_rates(args.paper_lr, "--paper-lr", many=False).items()}
    for opt in args.optimizers:
        if opt not in lrs or opt not in paper:
            raise UserError(f"--lrs/--paper-lr: no learning rates for optimizer {opt}")
    bad = [f for f in args.train_flags if f.split("=", 1)[0] in SWEEP_FLAGS]
    if bad:
        raise UserError(f"{bad[0].split('=', 1)[0]}: set by the sweep for each run; leave it out of the flags after --")
    check_output_folder("--run-dir", args.run_dir)
    parse_dashed("--mlp-bot-prefix", args.mlp_bot_prefix)
    methods = {
        "qr": (args.qr_dims, args.mlet_qr_dims, args.qr_collisions),
        "md": (args.md_dims, args.mlet_md_dims, args.md_temperatures),
    }
    configs = grid_configs(args.baseline_dims, args.mlet_dims, args.mlet_hidden, methods)
    if not configs:
        raise UserError("--baseline-dims/--mlet-dims: the grid is empty")
    return Settings(
        run_dir=args.run_dir,
        configs=configs,
        seeds=sorted(set(args.seeds)),
        optimizers=list(dict.fromkeys(args.optimizers)),
        lrs={k: sorted(round_lr(x) for x in v) for k, v in lrs.items()},
        paper_lrs={k: round_lr(v) for k, v in paper.items()},
        protocols=list(dict.fromkeys(args.protocols)),
        widen_factor=args.widen_factor,
        max_widen=args.max_widen,
        mlp_bot_prefix=args.mlp_bot_prefix,
        train_flags=list(args.train_flags),
        tests_per_epoch=args.tests_per_epoch,
        jobs=args.jobs,
        threads=args.threads,
        checkpoints=args.checkpoints,
        checkpoint_dims=args.checkpoint_dims,
        quantize_bits=list(dict.fromkeys(args.quantize_bits)),
    )


SETUP_KEYS: dict[str, list | None] = {"train_flags": None, "mlp_bot_prefix": None, "quantize_bits": []}
"""What every run of a sweep directory shares, with the value a sweep.json without the key stands for."""


def check_run_dir(settings: Settings, sources: dict[str, tuple[str, str]] | None = None) -> None:
    """Refuse a ``--run-dir`` whose earlier sweep trained with other flags: its finished runs would count as
    this sweep's. The refusal names the differences only (:func:`setup_changes`); ``sources`` maps a training
    flag a command adds itself to the option that adds it and the option that leaves it out
    (``{"--use-gpu": ("--device cuda", "--device cpu")}``)."""
    try:
        record = sweep_record(settings.run_dir)
    except UserError as error:
        raise UserError(f"--run-dir: {error}; give another --run-dir") from None
    if record is None:
        return
    changes = setup_changes(record["settings"], settings.to_dict(), sources or {})
    if changes:
        raise UserError(
            f"--run-dir {settings.run_dir}: its runs were trained otherwise: {'; '.join(changes)}; finished runs "
            "would be taken for this sweep's: give another --run-dir (or the same flags)"
        )


def warn_narrowed(settings: Settings) -> None:
    """One line on stderr where this grid leaves out seeds, configs or optimizers of the run directory's last
    one: ``sweep.json`` takes this grid, and ``summarize.py`` keeps to it, so their finished runs would drop out
    of the summary unseen."""
    record = sweep_record(settings.run_dir)
    if record is None:
        return
    old, new = record["settings"], settings.to_dict()
    gone = [
        f"{key} {', '.join(map(str, dropped))}"
        for key in ("seeds", "configs", "optimizers")
        if (dropped := [value for value in old.get(key, []) if value not in new[key]])
    ]
    if gone:
        print(
            f"{PROG}: warning: --run-dir {settings.run_dir}: this grid leaves out {' and '.join(gone)} of the last "
            "one; summarize.py follows this grid and leaves their runs out (give them again to keep them)",
            file=sys.stderr,
        )


def setup_changes(old: dict, new: dict, sources: dict[str, tuple[str, str]]) -> list[str]:
    """What differs between two sweeps' :data:`SETUP_KEYS` (``sweep.json`` settings), in the flags' terms:
    ``--mlp-bot-prefix 13-32 where it had 13-64``, ``this sweep adds --nepochs=2``, ``--device cuda where it had
    --device cpu`` (a training flag in ``sources``)."""
    changes = []
    for key, flag in (("mlp_bot_prefix", "--mlp-bot-prefix"), ("quantize_bits", "--quantize-bits")):
        before, after = old.get(key, SETUP_KEYS[key]), new[key]
        if before != after:
            changes.append(f"{flag} {option_text(after)} where it had {option_text(before)}")
    before, after = flag_values(recorded_flags(old)), flag_values(recorded_flags(new))
    for flag in dict.fromkeys([*before, *after]):
        if flag in sources and (flag in before) != (flag in after):
            present, absent = sources[flag]
            changes.append(f"{present} where it had {absent}" if flag in after else f"{absent} where it had {present}")
        elif flag not in before:
            changes.append(f"this sweep adds {flag_text(flag, after[flag])}")
        elif flag not in after:
            changes.append(f"this sweep leaves out {flag_text(flag, before[flag])}")
        elif before[flag] != after[flag]:
            changes.append(f"{flag_text(flag, after[flag])} where it had {flag_text(flag, before[flag])}")
    return changes


def flag_values(flags: Sequence[str]) -> dict[str, str | None]:
    """``["--nepochs=2", "--use-gpu"]`` -> ``{"--nepochs": "2", "--use-gpu": None}`` (a repeated flag: its last
    value, as argparse takes it)."""
    values: dict[str, str | None] = {}
    for text in flags:
        flag, equals, value = text.partition("=")
        values[flag] = value if equals else None
    return values


def flag_text(flag: str, value: str | None) -> str:
    """A training flag as typed: ``--nepochs=2``, ``--use-gpu``."""
    return flag if value is None else f"{flag}={value}"


def option_text(value: object) -> str:
    """A sweep option's value as typed: ``13-64``, ``8 4``, ``none`` (no values)."""
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    return str(value)


def check_tuning_data(data: DataConfig, settings: Settings) -> None:
    """The ``tuned`` protocol chooses rates on the validation split and reports the test split: both must
    exist and differ."""
    if "tuned" not in settings.protocols:
        return
    if data.dataset is None:
        raise UserError(
            f"--protocols tuned: needs a data set's validation split; --data-generation={data.generation} has none "
            "(use --protocols paper)"
        )
    if data.eval_split == "val":
        raise UserError(
            "--protocols tuned: chooses rates on the validation split, which --eval-split=val also reports; "
            "leave --eval-split at test"
        )


def prepare_data(settings: Settings, dry_run: bool = False) -> int | None:
    """Check the training flags once (as ``dlrm_mlet.py`` would), preprocess a data set once, and return
    ``--test-freq``.

    Preprocessing here, before any run starts, keeps parallel runs from
    building the same cache at the same time. None when ``--test-freq`` is
    among the training flags, and for a ``dry_run``, which checks the flags
    alone: it reads no data and writes nothing (not even the runs' output
    folders).
    """
    spec = RunSpec(
        settings.optimizers[0], settings.configs[0], settings.initial_lrs(settings.optimizers[0])[0], settings.seeds[0]
    )
    argv = run_argv(spec, settings, None)
    if dry_run:  # checking an output file makes its folder
        argv = [a for a in argv if not a.startswith(("--results-json=", "--save-collapsed="))]
    try:
        run = run_config(argv)
    except UserError as error:
        if dry_run and str(error).startswith("--raw-data-file"):  # listing needs no data
            print(f"{PROG}: {error} (a run would need it; the dry run lists the runs without it)")
            return None
        raise in_sweep_terms(error, settings, spec.config.dim) from None
    check_tuning_data(run.data, settings)
    if dry_run:
        return None
    train_samples = build_data(run.data).train.num_samples if run.data.dataset is not None else run.data.train_samples
    if any(f.split("=", 1)[0] == "--test-freq" for f in settings.train_flags):
        return None
    batches = math.ceil(train_samples / run.data.batch_size)
    if run.train.num_batches:
        batches = min(batches, run.train.num_batches)
    return max(1, math.ceil(batches / settings.tests_per_epoch))


RESUMABLE = "interrupted; finished runs are kept, the same command continues with the rest"
"""What ``sweep.py`` and ``full_scale.py`` say on Ctrl-C."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends with one line on stderr and exit code 2, failed runs with exit code 1, Ctrl-C
    with one line and exit code 130."""
    args = build_parser().parse_args(argv)
    return run_reporting_errors(PROG, lambda: run_command(args), interrupted=RESUMABLE)


def run_command(args: argparse.Namespace) -> int:
    """Check the flags, then run the sweep (or list its runs); 1 when a run failed."""
    settings = settings_from_args(args)
    check_run_dir(settings)
    warn_narrowed(settings)
    test_freq = prepare_data(settings, dry_run=args.dry_run)
    todo = pending(initial_specs(settings), settings.run_dir)
    print(
        f"{PROG}: {len(settings.configs)} configs x {len(settings.optimizers)} optimizers "
        f"x {len(settings.seeds)} seeds; {len(todo)} initial runs to do"
    )
    if args.dry_run:
        for spec in todo:
            print(spec.name)
        return 0
    start = time.perf_counter()
    totals = sweep(settings, test_freq=test_freq)
    print(
        f"{PROG}: {totals['finished']} runs finished, {totals['failed']} failed, {totals['skipped']} skipped "
        f"(done before) in {time.perf_counter() - start:.0f} s"
    )
    return 1 if totals["failed"] else 0


def cli() -> None:
    """The ``dlrm-mlet-sweep`` console command (``python scripts/sweep.py``)."""
    sys.exit(exit_status(PROG, main))
