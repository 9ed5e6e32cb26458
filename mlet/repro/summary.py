"""Tables and plots from dlrm_mlet.py results: a sweep directory, or single results JSONs.

    .venv/bin/python scripts/summarize.py runs/criteo_kaggle         # a sweep (scripts/sweep.py)
    .venv/bin/python scripts/summarize.py runs/quickstart/*.json     # one table row per file

For a sweep directory it writes, into the directory (or ``--out``):

* ``summary.md``: the headline (for each MLET config, under each protocol and
  optimizer, the widest baseline it matches and the d-reduction factor),
  then mean +- std over seeds of test AUC and log loss per config, with the
  chosen learning rate, the inference and training embedding bytes and the
  training samples/s;
* ``summary.json``: the same numbers;
* ``auc_vs_size.png`` (the paper's main figure: test AUC against inference
  embedding bytes, baseline and MLET), ``auc_vs_step.png`` (test AUC during
  training) and ``lr_curves.png`` (validation AUC against learning rate: what
  the tuned protocol chose from);
* the comparison of every method (baseline, MLET, quotient-remainder, mixed
  dimensions, MLET with each, each also with int8/int4 tables where the runs
  were evaluated so): the Pareto table (``mlet.repro.pareto``) and
  ``pareto.png``, test AUC against inference embedding bytes.

The protocols, matching and the d-reduction factor: docs/reproducing.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import NamedTuple

from mlet.core.errors import UserError, check_output_folder, run_reporting_errors
from mlet.core.signals import exit_status
from mlet.repro import pareto
from mlet.repro.experiments import MATCH_RULES, PROTOCOLS, initial_grid, lr_text, round_lr, size_text
from mlet.repro.protocols import Reduction, Selection, d_reductions, select
from mlet.repro.run_results import (
    RunResult,
    check_comparable,
    load_results,
    read_results,
    results_dir,
    results_files,
    sweep_record,
)
from mlet.repro.summary_plots import figure, finish, plot_auc_vs_size, plot_auc_vs_step, plot_lr_curves
from mlet.training.optimizers import OPTIMIZERS

PROG = "summarize.py"


# -- single results files ------------------------------------------------------------------


def run_table(results: Sequence[RunResult]) -> str:
    """One markdown row per results file: model, test and validation metrics, sizes, speed."""
    header = [
        "run",
        "tables",
        "d",
        "test AUC",
        "test log loss",
        "val AUC",
        "inference emb.",
        "training emb.",
        "train samples/s",
        "int8 / int4 test AUC",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        c = r.spec.config
        cells = [Path(r.path).stem, c.method_at(r.bits), str(c.dim)]
        cells += ["n/a" if not math.isfinite(v) else f"{v:.4f}" for v in (r.test_auc, r.test_logloss, r.val_auc)]
        cells += [size_text(r.inference_embedding_bytes), size_text(r.training_embedding_bytes)]
        cells.append("n/a" if not math.isfinite(r.samples_per_second) else f"{r.samples_per_second:,.0f}")
        cells.append(quantized_text([r.quantized[b]["test_auc"] if b in r.quantized else None for b in (8, 4)]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- sweep tables --------------------------------------------------------------------------


def pm(stat: tuple[float, float], digits: int = 4) -> str:
    """``0.7812 ± 0.0011`` (``n/a``: undefined, e.g. a seed diverged)."""
    m, s = stat
    return "n/a" if not math.isfinite(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def factor_text(r: Reduction) -> str:
    """``8x (d=32)``, ``>= 16x (d=64, widest)`` or ``none (below d=2)``."""
    if r.matched_dim is None:
        return "none"
    return f"{'>= ' if r.at_grid_end else ''}{r.factor:g}x (d={r.matched_dim})"


def headline_table(strict: Sequence[Reduction], lenient: Sequence[Reduction]) -> str:
    """The d-reduction of every MLET config under both rules."""
    lenient_by = {(r.protocol, r.optimizer, r.config): r for r in lenient}
    lines = [
        "| protocol | optimizer | MLET | widest baseline matched (strict) "
        "| per-seed factor (mean ± std, n) | within one std |",
        "|---|---|---|---|---|---|",
    ]
    for r in strict:
        m, s = r.seed_mean_std
        per_seed = f"{m:.2f} ± {s:.2f} (n={len(r.per_seed)})" if r.per_seed else "n/a"
        other = lenient_by.get((r.protocol, r.optimizer, r.config))
        within_std = factor_text(other) if other else "n/a"
        lines.append(
            f"| {r.protocol} | {r.optimizer} | d={r.config.dim} K={r.config.hidden} | {factor_text(r)} | {per_seed} "
            f"| {within_std} |"
        )
    return "\n".join(lines)


def config_table(selections: Sequence[Selection]) -> str:
    """Mean ± std over seeds per (protocol, optimizer, config)."""
    lines = [
        "| protocol | optimizer | config | lr | seeds | test AUC | test log loss | val AUC "
        "| inference emb. | training emb. | train samples/s | int8 / int4 test AUC |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(selections, key=lambda s: (s.protocol, s.optimizer, s.config.method, s.config.is_mlet, s.config))
    for s in order:
        first = s.runs[0]
        lr = lr_text(s.lr) + (" (edge)" if s.at_edge else "")
        speed = s.stat("samples_per_second")[0]
        lines.append(
            f"| {s.protocol} | {s.optimizer} | {s.config.title} | {lr} | {len(s.runs)} "
            f"| {pm(s.stat('test_auc'))} | {pm(s.stat('test_logloss'))} |"
            f" {pm(s.stat('val_auc'))} | {size_text(first.inference_embedding_bytes)} "
            f"| {size_text(first.training_embedding_bytes)} |"
            f" {'n/a' if not math.isfinite(speed) else f'{speed:,.0f}'} | {quantized_cell(s)} |"
        )
    return "\n".join(lines)


def quantized_cell(s: Selection) -> str:
    """Mean test AUC of the selection's runs with int8 and int4 tables (``-``: not evaluated so)."""
    variants = [s.variant(bits) for bits in (8, 4)]
    return quantized_text([v.stat("test_auc")[0] if v is not None else None for v in variants])


def quantized_text(aucs: Sequence[float | None]) -> str:
    """``0.7801 / 0.7755``: test AUCs with int8 and int4 tables (``-``: not evaluated so; ``n/a``: diverged)."""
    return " / ".join("-" if m is None else "n/a" if not math.isfinite(m) else f"{m:.4f}" for m in aucs)


def selection_json(s: Selection) -> dict:
    """A :class:`Selection` as plain data."""
    return {
        "protocol": s.protocol,
        "optimizer": s.optimizer,
        "config": s.config.label,
        "dim": s.config.dim,
        "hidden": s.config.hidden,
        "lr": s.lr,
        "lrs_tried": s.lrs_tried,
        "at_edge": s.at_edge,
        "seeds": s.seeds,
        **{
            f"{a}_{k}": v
            for a in ("test_auc", "test_logloss", "val_auc", "samples_per_second")
            for k, v in zip(("mean", "std"), s.stat(a))
        },
        "inference_embedding_bytes": s.runs[0].inference_embedding_bytes,
        "training_embedding_bytes": s.runs[0].training_embedding_bytes,
    }


def reduction_json(r: Reduction) -> dict:
    """A :class:`Reduction` as plain data."""
    m, s = r.seed_mean_std
    return {
        "protocol": r.protocol,
        "optimizer": r.optimizer,
        "config": r.config.label,
        "rule": r.rule,
        "matched_dim": r.matched_dim,
        "factor": r.factor,
        "lower_bound": r.at_grid_end,
        "per_seed": r.per_seed,
        "per_seed_mean": m,
        "per_seed_std": s,
    }


# -- the report -----------------------------------------------------------------------------


def paper_lrs_of(run_dir: Path, overrides: Sequence[str]) -> dict[str, float]:
    """The paper protocol's rates: ``sweep.json``'s, then ``--paper-lr OPT=LR`` overrides."""
    record = sweep_record(run_dir)
    lrs: dict[str, float] = dict(record["settings"].get("paper_lrs", {})) if record else {}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in OPTIMIZERS:
            raise UserError(f"--paper-lr: unknown optimizer '{name}' in '{item}' (choose from {', '.join(OPTIMIZERS)})")
        try:
            lrs[name] = float(value)
        except ValueError:
            raise UserError(f"--paper-lr: expected OPTIMIZER=RATE, got '{item}'") from None
    return lrs


def paper_rate_gaps(results: Sequence[RunResult], paper_lrs: dict[str, float]) -> dict[str, str]:
    """By optimizer with runs but none at its paper rate (so no ``paper`` rows): why, with the rates that ran."""
    gaps = {}
    for optimizer in sorted({r.spec.optimizer for r in results}):
        lrs = {r.spec.lr for r in results if r.spec.optimizer == optimizer}
        rates = ", ".join(lr_text(lr) for lr in sorted(lrs))
        rate = paper_lrs.get(optimizer)
        if rate is None:
            gaps[optimizer] = f"no paper rate for {optimizer} (give --paper-lr {optimizer}=RATE; rates run: {rates})"
        elif round_lr(rate) not in lrs:
            gaps[optimizer] = f"no {optimizer} runs at the paper rate {lr_text(rate)} (rates run: {rates})"
    return gaps


def check_paper_rates(results: Sequence[RunResult], paper_lrs: dict[str, float], asked: Collection[str]) -> None:
    """Refuse a ``--paper-lr`` rate that no run of the sweep used (its ``paper`` rows would all be missing)."""
    ran, gaps = sorted({r.spec.optimizer for r in results}), paper_rate_gaps(results, paper_lrs)
    for optimizer in sorted(asked):
        if optimizer not in ran:
            raise UserError(f"--paper-lr {optimizer}=...: the sweep has no {optimizer} runs (it ran {', '.join(ran)})")
        if gap := gaps.get(optimizer):
            raise UserError(f"--paper-lr {optimizer}={lr_text(paper_lrs[optimizer])}: {gap}")


def sweep_facts(run_dir: Path, results: Sequence[RunResult], record: dict | None) -> list[str]:
    """Lines on what the sweep ran on: data, runs, wall time, machine."""
    lines = [f"- runs: {len(results)} results in `{results_dir(run_dir)}`"]
    first = json.loads(Path(results[0].path).read_text())
    lines.append(f"- data: {first.get('data')}")
    args = first.get("args", {})
    bottom_mlp = args.get("arch_mlp_bot", "?").rsplit("-", 1)[0]
    lines.append(
        f"- model: bottom MLP {bottom_mlp}-d, top MLP {args.get('arch_mlp_top')}, batch {args.get('mini_batch_size')},"
        f" {args.get('nepochs')} epoch(s), {first.get('iterations')} steps, device {first.get('device')}, "
        f"torch {first.get('torch')}"
    )
    if record is not None:
        sessions = record.get("sessions", [])
        wall = sum(s.get("wall_seconds", 0) for s in sessions)
        run_seconds = sum(r.get("seconds", 0) for r in record.get("runs", {}).values())
        host = sessions[-1] if sessions else {}
        lines.append(
            f"- sweep: {len(sessions)} session(s), {wall / 60:.1f} min wall in all, {run_seconds / 60:.1f} run-minutes;"
            f" {how_runs_ran(record)}; host {host.get('host')} ({host.get('cpus')} CPUs), "
            f"first session started {sessions[0].get('started') if sessions else '?'}"
        )
    return lines


def how_runs_ran(record: dict) -> str:
    """``sweep.py``'s jobs and threads, or the devices of ``full_scale.py``'s pieces (with how many pieces each)."""
    devices = Counter(s["device"] for s in record.get("sessions", []) if s.get("device"))
    if devices:
        return ", ".join(f"{n} piece{'s' if n > 1 else ''} on {device}" for device, n in devices.items())
    settings = record["settings"]
    return f"{settings.get('jobs')} runs at a time, {settings.get('threads')} torch thread(s) each"


def in_sweep(results: Sequence[RunResult], settings: dict | None) -> tuple[list[RunResult], list[str]]:
    """The results of the sweep's optimizers, configs and seeds, and the names of the others (left out)."""
    if settings is None:
        return list(results), []
    kept = [
        r
        for r in results
        if r.spec.optimizer in settings["optimizers"]
        and r.spec.config.label in settings["configs"]
        and r.spec.seed in settings["seeds"]
    ]
    kept_ids = {id(r) for r in kept}
    return kept, sorted(Path(r.path).stem for r in results if id(r) not in kept_ids)


def coverage_lines(
    results: Sequence[RunResult], left_out: Sequence[str], settings: dict | None, damaged: Collection[Path] = ()
) -> list[str]:
    """Warnings for the report: runs left out (``damaged``: results JSONs that do not read as one), and runs of
    the sweep's initial grid with no results yet."""
    lines = []
    if damaged:
        lines.append(
            f"- **left out, damaged** (not readable as results JSONs): "
            f"{', '.join(f'`{path.name}`' for path in sorted(damaged))}; `sweep.py` runs them again, keeping each "
            "file as `NAME.json.damaged`"
        )
    if left_out:
        lines.append(
            f"- **left out** (not in sweep.json's optimizers, configs or seeds): {len(left_out)} results, "
            f"e.g. {', '.join(left_out[:3])}"
        )
    if settings is not None:
        have = {r.spec for r in results}
        missing = sorted(spec.name for spec in initial_grid(settings) if spec not in have)
        if missing:
            lines.append(
                f"- **incomplete**: {len(missing)} runs of the sweep's grid have no results yet "
                f"(e.g. {', '.join(missing[:3])});"
                " the tables compare what has finished, and a `>=` factor only reaches the widest baseline that ran"
            )
    return lines


HEADLINE_TEXT = (
    "For each MLET width d, the widest baseline d' such that it matches every baseline of width <= d' "
    "(mean test AUC over seeds >= the baseline's; last column: >= the baseline's mean minus its std over seeds), "
    "and the factor d'/d."
    " `>=`: it matched the widest baseline of the grid; `none`: not even the narrowest.",
    "Per-seed factor: the same comparison run by run for equal seeds (0 when a seed matches no baseline).",
)
CONFIGS_TEXT = (
    "Test AUC and log loss: mean ± std over seeds, at the protocol's learning rate "
    "(`paper`: the optimizer's shared rate;"
    " `tuned`: the best mean validation AUC of the grid; `(edge)`: still at an edge of the tried grid)."
)
METHODS_TEXT = (
    "For each AUC level (the mean test AUC of the float baseline at d=8, 16, 32, 64), the smallest model of each "
    "method that reaches it: its width, its inference embedding bytes (collapsed; quantized tables with their "
    "per-row scales and biases) and how many times smaller than that baseline it is (`-`: no config reaches "
    "it). Quantized models are the same runs' tables after training, at the rate chosen for the float model."
)


def why_no_results(run_dir: Path) -> str:
    """Why ``run_dir`` gives no results of a sweep, and what to give instead: a folder inside a sweep (its
    ``results/`` or ``logs/``) names the sweep directory; a folder of loose results JSONs, the files."""
    run_dir = Path(run_dir)
    if not (run_dir / "sweep.json").is_file():
        if (run_dir.parent / "sweep.json").is_file():
            return f"not a sweep directory (no sweep.json); {run_dir.parent} is: give that"
        loose = sorted(run_dir.glob("*.json"))
        if loose and not results_dir(run_dir).is_dir():
            return (
                f"not a sweep directory (no sweep.json or results/); give its {len(loose)} results JSON"
                f"{'s' if len(loose) > 1 else ''} as files ({run_dir}/*.json)"
            )
    return f"no results JSONs of the sweep in {results_dir(run_dir)} (run scripts/sweep.py first)"


def checked_sweep(
    run_dir: Path, paper_lrs: dict[str, float], asked: Collection[str]
) -> tuple[dict | None, list[RunResult], list[str], list[Path], dict[str, str]]:
    """A sweep directory's record (None: results copied together by hand), its comparable results of the sweep,
    the names of those left out, its damaged results JSONs and the optimizers without runs at their paper rate
    (each damaged file and each optimizer warned of on stderr). ``asked``: see :func:`summarize_sweep`."""
    record = sweep_record(run_dir)
    readable, damaged = read_results(results_files(run_dir))
    for reason in damaged.values():
        print(f"{PROG}: warning: {reason}: left out of the summary (sweep.py runs it again)", file=sys.stderr)
    results, left_out = in_sweep(readable, record["settings"] if record else None)
    if not results:
        raise UserError(f"{run_dir}: {why_no_results(run_dir)}")
    check_comparable(results)
    check_paper_rates(results, paper_lrs, asked)
    gaps = paper_rate_gaps(results, paper_lrs)
    for gap in gaps.values():
        print(f"{PROG}: warning: {run_dir}: {gap}: the summary has no paper rows for it", file=sys.stderr)
    return record, results, left_out, list(damaged), gaps


def write_plots(
    selections: Sequence[Selection],
    results: Sequence[RunResult],
    paper_lrs: dict[str, float],
    points: Sequence[pareto.Point],
    out: Path,
) -> list[str]:
    """Write the four PNGs into ``out``; the summary's section that shows them."""
    plot_auc_vs_size(selections, out / "auc_vs_size.png")
    plot_auc_vs_step(selections, out / "auc_vs_step.png")
    plot_lr_curves(results, select(results, "tuned", paper_lrs), out / "lr_curves.png")
    fig, axes = pareto.plot_pareto(points, figure)
    finish(fig, axes, out / "pareto.png", fontsize=6, ncol=2)
    images = [
        ("AUC vs size", "auc_vs_size.png"),
        ("AUC vs step", "auc_vs_step.png"),
        ("lr curves", "lr_curves.png"),
        ("AUC vs bytes, all methods", "pareto.png"),
    ]
    lines = ["", "## Plots"]
    for alt, name in images:
        lines += ["", f"![{alt}]({name})"]
    return lines


class SweepSummary(NamedTuple):
    """What :func:`summarize_sweep` wrote: ``summary.md``'s text, and the damaged results JSONs it left out."""

    markdown: str
    damaged: list[Path]


def summarize_sweep(
    run_dir: Path, out: Path, paper_lrs: dict[str, float], plots: bool = True, asked: Collection[str] = ()
) -> SweepSummary:
    """Write ``summary.md``, ``summary.json`` and the plots for a sweep directory; returns the markdown and the
    damaged results JSONs left out (a command ends with 1 for them, as ``sweep.py`` after failed runs).

    ``asked``: the optimizers whose paper rate the user gave (``--paper-lr``): a rate no run used is refused;
    one from ``sweep.json`` without runs is a warning on stderr and a line in ``summary.md``."""
    check_output_folder("--out", out)
    record, results, left_out, damaged, gaps = checked_sweep(run_dir, paper_lrs, asked)
    selections = [s for protocol in PROTOCOLS for s in select(results, protocol, paper_lrs)]
    if not selections:
        raise UserError(f"{run_dir}: no run at the paper learning rates {paper_lrs} and no tuned selection")
    reductions = {rule: d_reductions(selections, rule) for rule in MATCH_RULES}
    points = pareto.points(selections)
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        f"# MLET vs baseline: `{run_dir}`",
        "",
        *sweep_facts(run_dir, results, record),
        *coverage_lines(results, left_out, record["settings"] if record else None, damaged),
        *(f"- **no paper rows**: {gap}" for gap in gaps.values()),
        "",
        "## Headline: the d-reduction factor",
        "",
        *HEADLINE_TEXT,
        "",
        headline_table(reductions["strict"], reductions["within_std"]),
        "",
        "## Every config",
        "",
        CONFIGS_TEXT,
        "",
        config_table(selections),
        "",
        "## All methods: the smallest model at each AUC level",
        "",
        METHODS_TEXT,
        "",
        pareto.pareto_table(points),
        "Pareto frontier (no other point has both fewer bytes and a higher AUC), smallest first:",
        "",
        *pareto.frontier_lines(points),
    ]
    if plots:
        parts += write_plots(selections, results, paper_lrs, points, out)
    markdown = "\n".join(parts) + "\n"
    (out / "summary.md").write_text(markdown)
    payload = {
        "run_dir": str(run_dir),
        "paper_lrs": paper_lrs,
        "selections": [selection_json(s) for s in selections],
        "reductions": [reduction_json(r) for rule in MATCH_RULES for r in reductions[rule]],
        "methods": pareto.pareto_json(points),
    }
    (out / "summary.json").write_text(json.dumps(payload, indent=1) + "\n")
    return SweepSummary(markdown, damaged)


def check_results_files(paths: Sequence[Path], out: Path | None, paper_lr: Sequence[str]) -> None:
    """Refuse, in one line, what the results-files mode cannot honour: a directory among the files, a path that
    does not exist, and the sweep-only ``--out`` and ``--paper-lr`` (the table is printed: redirect it)."""
    accepted = "give one sweep directory, or results JSON files"
    for path in paths:
        if path.is_dir():
            raise UserError(f"{path}: a directory among {len(paths)} paths ({accepted}, not both)")
        if not path.is_file():
            raise UserError(f"{path}: no such results file ({accepted})")
    if out is not None:
        raise UserError("--out: only for a sweep directory; the table of results files is printed (redirect it)")
    if paper_lr:
        raise UserError("--paper-lr: only for a sweep directory; results files are tabled at their own rates")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends with one line on stderr and exit code 2, Ctrl-C with 130, SIGTERM with 143; a
    sweep summarized without its damaged results JSONs with 1, as ``sweep.py`` after failed runs."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, help="a sweep directory, or results JSON files")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where summary.md, summary.json and the plots go (default: the sweep directory; "
        "results files print their table instead)",
    )
    p.add_argument(
        "--paper-lr",
        nargs="*",
        default=[],
        metavar="OPT=LR",
        help="the paper protocol's rates (default: the sweep's sweep.json)",
    )
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    return run_reporting_errors(PROG, lambda: summarize(args))


def summarize(args: argparse.Namespace) -> int:
    """Print (and for a sweep directory, write) the summary the parsed command line asks for; 1 when it left out
    damaged results JSONs (named on stderr and in ``summary.md``)."""
    if len(args.paths) == 1 and args.paths[0].is_dir():
        run_dir = args.paths[0]
        summary = summarize_sweep(
            run_dir,
            args.out or run_dir,
            paper_lrs_of(run_dir, args.paper_lr),
            plots=not args.no_plots,
            asked={item.partition("=")[0] for item in args.paper_lr},
        )
        print(summary.markdown)
        return 1 if summary.damaged else 0
    check_results_files(args.paths, args.out, args.paper_lr)
    print(run_table(load_results(args.paths)))
    return 0


def cli() -> None:
    """The ``dlrm-mlet-summarize`` console command (``python scripts/summarize.py``)."""
    sys.exit(exit_status(PROG, main))
