"""The paper's grid at Criteo-Kaggle scale on the GPU, in resumable pieces (on one device or several at once).

    PYTHONPATH=. python3 scripts/full_scale.py --budget-s 480     # on the GPU machine; again to continue

Where ``scripts/sweep.py`` starts one ``dlrm_mlet.py`` per run on a raw text
file, a piece here generates the click model once on the device at Kaggle's
size (:mod:`mlet.data.device_click`: 45.8M rows, 15.4M table rows seen in
training), then trains run after run with the rows kept there and the tables
initialised there, until its time budget would be overrun: in this process for
one ``--device``, in one worker process per entry for a list
(:mod:`mlet.repro.full_scale_pool`). Each run
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
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from mlet.core.errors import OneLineParser, UserError, require_at_least, run_reporting_errors
from mlet.core.signals import exit_status, signals_held
from mlet.data.device_click import KAGGLE_ROWS
from mlet.repro import full_scale_rank, summary, sweep, sweep_plan, sweep_runs
from mlet.repro.experiments import Config, RunSpec
from mlet.repro.full_scale_pool import DataFlags, InProcess, Plan, Workers, use_device
from mlet.repro.full_scale_run import PAPER_QUESTION, PROG, Piece, check_run_flags, device_name, measure_steps
from mlet.repro.run_results import sweep_record

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


# Sweep flags the in-process runner does not honour (refused, not ignored), with their namespace names and why.
ONE_AT_A_TIME = "the full-scale runs train one at a time per --device entry; name a device twice for two workers"
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
    already call for, and the widening (or missing seeds) of every seed (:func:`sweep_plan.widened_specs`).

    A config widens only once its first seed has finished every initial rate: runs end out of order when
    several workers train at once, and a grid read half-done would widen toward an edge it has not tried."""
    first = replace(settings, seeds=settings.seeds[:1])
    initial = [s for s in sweep_plan.initial_specs(settings) if not sweep_plan.finished(s, settings.run_dir)]
    undecided = {(s.optimizer, s.config) for s in initial if s.seed == settings.seeds[0]}
    widened = [
        s
        for s in [*sweep_plan.widened_specs(first), *sweep_plan.widened_specs(settings)]
        if (s.optimizer, s.config) not in undecided and not sweep_plan.finished(s, settings.run_dir)
    ]
    return sorted(dict.fromkeys([*initial, *widened]), key=lambda s: priority(s, settings))


# -- a piece ------------------------------------------------------------------------------------


def run_piece(settings: sweep_plan.Settings, runner: InProcess | Workers, budget_s: float, started: float) -> dict:
    """Start the wanted runs in :func:`priority` order on the runner's idle workers while the next one would end
    within the budget (judged by the longest run so far); returns counts (finished, failed, left)."""
    manifest = sweep_runs.Manifest(settings)
    data = runner.data
    manifest.session.update(device=data.devices, data_seconds=round(data.seconds, 1))
    manifest.session.update(rows=data.rows, scale=data.scale, data_seed=data.seed)
    manifest.session["data_checksum"] = data.checksum
    counts: dict = {"finished": 0, "failed": 0, "left": 0}
    failed: set[str] = set()
    running: dict[str, tuple[RunSpec, float]] = {}  # the runs in flight, with when they started
    longest = 0.0
    try:
        while True:
            todo = [s for s in wanted(settings) if s.name not in failed | running.keys()]
            while todo and runner.idle() and time.perf_counter() - started + 1.2 * longest <= budget_s:
                spec = todo.pop(0)
                sweep_runs.note_damaged(spec, settings.run_dir)
                runner.start(spec)
                running[spec.name] = spec, time.perf_counter()
            if not running:
                counts["left"] = len(todo)
                break
            ended = runner.wait()
            running.pop(ended.spec.name, None)
            longest = max(longest, ended.seconds)
            status = sweep_runs.run_status(ended.spec, ended.code, settings.run_dir)
            manifest.record(ended.spec, status, ended.seconds)
            done = status.startswith("finished")
            counts["finished" if done else "failed"] += 1
            if not done:
                failed.add(ended.spec.name)
            elapsed = time.perf_counter() - started
            print(f"{PROG}: {ended.spec.name}: {status} in {ended.seconds:.1f} s ({elapsed:.0f} s of the piece)")
    except KeyboardInterrupt:  # the runs not finished are still to do (the ones interrupted among them)
        with signals_held():  # a second Ctrl-C while the workers stop (up to 10 s) comes once the runs are recorded
            runner.close()  # the runs in flight end first: one whose results are written by then is finished
            counts["finished"] += record_interrupted(running.values(), settings.run_dir, manifest)
            counts.update(left=len([s for s in wanted(settings) if s.name not in failed]), interrupted=True)
        raise
    finally:
        manifest.finish(counts)
    return counts


def record_interrupted(in_flight: Iterable[tuple[RunSpec, float]], run_dir: Path, manifest: sweep_runs.Manifest) -> int:
    """Record the runs in flight at Ctrl-C (``(spec, start time)``, their workers stopped) in ``sweep.json`` as
    ``scripts/sweep.py`` records its own: ``interrupted``, or ``finished`` when their results were written;
    returns how many finished."""
    finished = 0
    for spec, start in in_flight:
        status = sweep_runs.run_status(spec, None, run_dir, interrupted=True)
        manifest.record(spec, status, time.perf_counter() - start)
        finished += status.startswith("finished")
    return finished


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


# -- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """This command's own flags; the rest go to ``sweep.py``'s parser (after :data:`DEFAULT_GRID`)."""
    p = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="results/, logs/, rank/, sweep.json")
    p.add_argument("--rows", type=int, default=KAGGLE_ROWS, help="rows generated (train, test and validation)")
    p.add_argument("--scale", type=float, default=1.0, help="table cardinalities as a share of Kaggle's")
    p.add_argument("--data-seed", type=int, default=1, help="seed of the click model and its samples")
    p.add_argument(
        "--device",
        default="cuda",
        help="cuda[:N] (the GPU) or cpu (small tests); a comma-separated list trains on each at once, one worker "
        "process per entry (cuda:0,cuda:1; a GPU named twice gets two workers)",
    )
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
    """This command's flags (``devices``: ``--device`` as a list of :class:`torch.device`) and the sweep's
    settings (None for ``--report``, which reads the run directory alone); a :class:`UserError` names a bad
    flag."""
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
    args.devices = parse_devices(args.device, present=not args.dry_run)  # a dry run lists; it needs no GPU
    if args.step_rates_json is not None and not args.measure_batches:
        raise UserError("--step-rates-json: holds the rates --measure-batches times; give --measure-batches too")
    if args.measure_batches and len(args.devices) > 1:
        raise UserError("--measure-batches: the step rates are timed on one device; give one --device")
    cuda = args.devices[0].type == "cuda"
    train = [*DEFAULT_TRAIN, *(["--use-gpu"] if cuda else []), *argv[dashes + 1 :]]
    parser = sweep.build_parser(prog=PROG)
    sweep_args = parser.parse_args([*DEFAULT_GRID, "--run-dir", str(args.run_dir), *rest, "--", *train])
    for flag, (dest, why) in UNHONOURED.items():
        if getattr(sweep_args, dest) != parser.get_default(dest):
            raise UserError(f"{flag}: {why}")
    settings = sweep.settings_from_args(sweep_args)
    on_gpu, on_cpu = (args.device, "cpu") if cuda else ("cuda", args.device)  # --use-gpu is --device's
    sweep.check_run_dir(settings, sources={"--use-gpu": (f"--device {on_gpu}", f"--device {on_cpu}")})
    sweep.warn_narrowed(settings)
    if not args.dry_run:  # a dry run only lists the runs (of a GPU grid, on any machine)
        check_run_flags(settings)
    check_data_flags(args.run_dir, {"rows": args.rows, "scale": args.scale, "data_seed": args.data_seed})
    return args, settings


def parse_devices(text: str, present: bool = True) -> list[torch.device]:
    """``--device``: one device, or a comma-separated list (one worker each; all CPU or all CUDA); ``present``:
    each must exist on this machine."""
    devices = [parse_device(part, present) for part in text.split(",")]
    if len({d.type for d in devices}) > 1:
        raise UserError(f"--device {text}: give CUDA devices only, or the CPU only")
    return devices


def parse_device(text: str, present: bool = True) -> torch.device:
    """``--device``: ``cpu``, or ``cuda``/``cuda:N`` (``present``: of a GPU this machine has)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        device = torch.device("meta")  # refused below, with the rest
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device: expected cpu or cuda[:N], got {text!r}")
    if not present or device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise UserError(f"--device {text}: no CUDA device is available (use --device cpu for a small test)")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends with one line on stderr and exit code 2, failed runs with exit code 1, Ctrl-C
    and SIGTERM with one line and exit code 130 or 143 (the piece's record in ``sweep.json`` says so; no worker is
    left: SIGTERM's default would end this process alone, not its workers)."""
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
    with only_piece(settings.run_dir):
        return train_piece(args, settings, edges)


@contextlib.contextmanager
def only_piece(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` while this piece runs (a lock on the folder): a second piece there at once is refused, as
    it would train the same runs and each would overwrite the other's sessions in ``sweep.json``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"--run-dir {run_dir}: another piece is training in it; wait for it to end (two at once would train "
                "the same runs; one piece trains on several devices with a --device list)"
            ) from None
        yield
    finally:
        os.close(folder)  # releases the lock


def train_piece(args: argparse.Namespace, settings: sweep_plan.Settings, edges: list[int]) -> int:
    """Generate the rows (step rates first when asked), train a piece; 1 when a run failed."""
    started = time.perf_counter()
    runner = start_runner(args, settings, edges)
    try:
        data = runner.data
        print(f"{PROG}: data in {data.seconds:.1f} s on {data.devices}: {data.description}")
        print(f"{PROG}: data checksum: {data.checksum}")
        check_data(settings.run_dir, data.checksum, args.accept_data_change)
        if args.measure_batches and isinstance(runner, InProcess):
            write_step_rates(args, runner.piece, settings)
        counts = run_piece(settings, runner, args.budget_s, started)
    finally:
        runner.close()
    print(
        f"{PROG}: {counts['finished']} runs finished, {counts['failed']} failed, {counts['left']} still to do "
        f"(more may follow from widening); {time.perf_counter() - started:.0f} s in all"
    )
    return 1 if counts["failed"] else 0


def start_runner(args: argparse.Namespace, settings: sweep_plan.Settings, edges: list[int]) -> InProcess | Workers:
    """The rows generated here and the runs trained here for one ``--device``; a worker process per entry
    (each generating its rows) for several."""
    data = DataFlags(args.rows, args.data_seed, args.scale)
    if len(args.devices) > 1:
        return Workers(Plan(settings, edges), args.devices, data)
    device = use_device(args.devices[0])
    return InProcess(Piece(settings, data.generate(device), device, edges, data.scale))


def write_step_rates(args: argparse.Namespace, piece: Piece, settings: sweep_plan.Settings) -> None:
    """``--measure-batches``: time steps of the 16-wide baseline and the narrowest MLET config at each batch size
    (printed; written to ``--step-rates-json`` when given)."""
    configs = [Config(16), min(c for c in settings.configs if c.is_mlet)]
    rates = measure_steps(piece, args.measure_batches, configs, args.measure_steps)
    if args.step_rates_json is not None:
        record = {"device": device_name(piece.device), "tf32": False, "rows": piece.rows.rows, "rates": rates}
        args.step_rates_json.parent.mkdir(parents=True, exist_ok=True)
        args.step_rates_json.write_text(json.dumps(record, indent=1) + "\n")


def report(run_dir: Path) -> int:
    """The summary (as ``summarize.py RUN_DIR`` writes it) and the rank reports of the finished runs (on any
    machine); a :class:`UserError` names the run directory. 1 when the summary left out damaged results JSONs,
    as ``summarize.py`` exits."""
    if not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir}: no such folder (--report reads the results of earlier pieces)")
    written = summary.summarize_sweep(run_dir, run_dir, summary.paper_lrs_of(run_dir, []))
    print(written.markdown)
    for folder in full_scale_rank.write_reports(run_dir):
        print(f"{PROG}: wrote {folder / 'rank.md'}")
    return 1 if written.damaged else 0


def cli() -> None:
    """``python scripts/full_scale.py``."""
    sys.exit(exit_status(PROG, main))
