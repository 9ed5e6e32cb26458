"""What a sweep runs: its settings, the grid and its widening, and each run's ``dlrm_mlet.py`` flags.

``mlet.repro.sweep`` runs it. Which runs are done is read from the results
JSONs on disk, so a restarted sweep decides the same (docs/reproducing.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlet.core.errors import UserError
from mlet.repro.experiments import Config, RunSpec, initial_rates, round_lr
from mlet.repro.protocols import best_lr, by_config_and_lr, next_lr
from mlet.repro.run_results import RunResult, flags_in_run_dir, read_results, results_dir, results_files


@dataclass
class Settings:
    """What a sweep runs (from the command line)."""

    run_dir: Path
    configs: list[Config]
    seeds: list[int]
    optimizers: list[str]
    lrs: dict[str, list[float]]
    paper_lrs: dict[str, float]
    protocols: list[str]
    widen_factor: float = 4.0
    max_widen: int = 3
    mlp_bot_prefix: str = "13-512-256-64"
    train_flags: list[str] = field(default_factory=list)
    tests_per_epoch: int = 8
    jobs: int = 1
    threads: int = 1
    checkpoints: str = "none"
    checkpoint_dims: list[int] | None = None  # only configs of these widths get checkpoints (None: all)
    quantize_bits: list[int] = field(default_factory=list)  # every run also evaluated with int8/int4 tables

    def initial_lrs(self, optimizer: str) -> list[float]:
        """The rates every config runs first: the ``paper`` protocol's, plus the grid when tuning."""
        return initial_rates(self.paper_lrs[optimizer], self.lrs[optimizer], self.protocols)

    def to_dict(self) -> dict:
        """For ``sweep.json``: paths inside the sweep directory relative to it (``./NAME``), so that it may move
        (:func:`recorded_flags` reads older records, which named it and gave the paths as typed)."""
        return {
            "configs": [c.label for c in self.configs],
            "seeds": self.seeds,
            "optimizers": self.optimizers,
            "lrs": self.lrs,
            "paper_lrs": self.paper_lrs,
            "protocols": self.protocols,
            "widen_factor": self.widen_factor,
            "max_widen": self.max_widen,
            "mlp_bot_prefix": self.mlp_bot_prefix,
            "train_flags": flags_in_run_dir(self.train_flags, str(self.run_dir)),
            "tests_per_epoch": self.tests_per_epoch,
            "jobs": self.jobs,
            "threads": self.threads,
            "checkpoints": self.checkpoints,
            "checkpoint_dims": self.checkpoint_dims,
            "quantize_bits": self.quantize_bits,
        }


def recorded_flags(settings: dict) -> list[str]:
    """The training flags of ``sweep.json``'s settings, paths inside the sweep directory as ``./NAME``: a record
    from before 2026-12-01 names the directory (``run_dir``, as typed then) and gives the paths as typed."""
    flags = settings.get("train_flags") or []
    return flags_in_run_dir(flags, settings["run_dir"]) if "run_dir" in settings else list(flags)


# -- the grid ---------------------------------------------------------------------------


def initial_specs(settings: Settings) -> list[RunSpec]:
    """Every (optimizer, config, initial rate, seed)."""
    return [
        RunSpec(opt, config, lr, seed)
        for opt in settings.optimizers
        for config in settings.configs
        for lr in settings.initial_lrs(opt)
        for seed in settings.seeds
    ]


def widened_specs(settings: Settings) -> list[RunSpec]:
    """The runs the ``tuned`` protocol still needs: one more rate for each config whose best rate lies at an edge.

    Decided from the finished runs on disk (so a restarted sweep decides the
    same); a config is considered once every seed has finished at every rate
    tried so far. Before that, its missing seeds at the rates tried are
    returned (runs that failed in an earlier session; they are retried).
    """
    if "tuned" not in settings.protocols or settings.widen_factor <= 1:
        return []
    groups = by_config_and_lr(r for r in readable_results(settings.run_dir) if r.spec.seed in settings.seeds)
    wanted = []
    for (opt, config), by_lr in groups.items():
        if opt not in settings.optimizers or config not in settings.configs:
            continue
        missing = [
            RunSpec(opt, config, lr, seed)
            for lr, runs in by_lr.items()
            for seed in settings.seeds
            if seed not in {r.spec.seed for r in runs}
        ]
        if missing:
            wanted += missing  # finish these rates first
            continue
        best = best_lr(by_lr, len(settings.seeds))
        lr = (
            next_lr(list(by_lr), best, settings.widen_factor, settings.initial_lrs(opt), settings.max_widen)
            if best is not None
            else None
        )
        if lr is not None:
            wanted += [RunSpec(opt, config, lr, seed) for seed in settings.seeds]
    return wanted


def readable_results(run_dir: Path, paths: Sequence[Path] | None = None) -> list[RunResult]:
    """The results JSONs of ``run_dir`` (or ``paths``) that read as such; a damaged one (a killed writer, an
    edit) counts as not run."""
    return read_results(results_files(run_dir) if paths is None else paths)[0]


def result_path(spec: RunSpec, run_dir: Path) -> Path:
    """Where a run writes its results JSON."""
    return results_dir(run_dir) / f"{spec.name}.json"


def set_aside_damaged(spec: RunSpec, run_dir: Path) -> Path | None:
    """Before a run starts, move a results JSON it left that does not read as one (its run is not finished, so
    it runs again) to ``NAME.json.damaged`` (``.damaged-2``, ... where taken): the run would replace it, and
    nothing is deleted. Returns where it went; None where there was none."""
    path = result_path(spec, run_dir)
    if not path.exists():
        return None
    names = (path.name + (".damaged" if n == 1 else f".damaged-{n}") for n in itertools.count(1))
    aside = next(path.with_name(name) for name in names if not path.with_name(name).exists())
    path.rename(aside)
    return aside


def finished(spec: RunSpec, run_dir: Path) -> bool:
    """True when the run's results JSON exists and reads as one."""
    return bool(readable_results(run_dir, [result_path(spec, run_dir)]))


def pending(specs: Sequence[RunSpec], run_dir: Path) -> list[RunSpec]:
    """The runs of ``specs`` not finished yet, widest models first (they take longest)."""
    todo = [s for s in specs if not finished(s, run_dir)]
    return sorted(todo, key=lambda s: (-(s.config.hidden or s.config.dim), s))


def wants_checkpoint(spec: RunSpec, settings: Settings) -> bool:
    """``--checkpoints``: none, the first seed's runs at the paper rate (``paper``), or every run; only widths
    in ``--checkpoint-dims``, and only of baseline and MLET configs (the rank analysis's subject)."""
    if settings.checkpoint_dims is not None and spec.config.dim not in settings.checkpoint_dims:
        return False
    if spec.config.method:
        return False
    if settings.checkpoints == "all":
        return True
    return (
        settings.checkpoints == "paper"
        and spec.seed == settings.seeds[0]
        and spec.lr == round_lr(settings.paper_lrs[spec.optimizer])
    )


def run_argv(spec: RunSpec, settings: Settings, test_freq: int | None) -> list[str]:
    """The ``dlrm_mlet.py`` flags of one run."""
    d = spec.config.dim
    argv = [
        *settings.train_flags,
        f"--arch-sparse-feature-size={d}",
        f"--arch-mlp-bot={settings.mlp_bot_prefix}-{d}",
        f"--mlet-hidden={spec.config.hidden}",
        *spec.config.flags(),
        f"--optimizer={spec.optimizer}",
        f"--learning-rate={spec.lr!r}",
        f"--numpy-rand-seed={spec.seed}",
        f"--results-json={result_path(spec, settings.run_dir)}",
    ]
    if test_freq:
        argv.append(f"--test-freq={test_freq}")
    if settings.quantize_bits:
        argv.append(f"--quantize-emb-with-bit={'-'.join(map(str, settings.quantize_bits))}")
    if wants_checkpoint(spec, settings):
        argv.append(f"--save-collapsed={Path(settings.run_dir) / 'checkpoints' / (spec.name + '.pt')}")
    return argv


def in_sweep_terms(error: UserError, settings: Settings, d: int) -> UserError:
    """A refusal of the runs' ``--arch-mlp-bot`` in the terms of ``--mlp-bot-prefix``, which makes it (``d``: the
    width the sweep appended); other refusals as they are."""
    flag = "--arch-mlp-bot: "
    text = str(error)
    if not text.startswith(flag):
        return error
    prefix = settings.mlp_bot_prefix
    reason = text.removeprefix(flag).replace(f"'{prefix}-{d}'", f"'{prefix}'")
    return UserError(f"--mlp-bot-prefix: {reason} (each run's --arch-mlp-bot is it with d appended: {prefix}-{d})")
