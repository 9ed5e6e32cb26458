"""The learning-rate protocols and the d-reduction, computed from the runs' results.

* A *protocol* picks one learning rate per (optimizer, config): ``paper`` the
  optimizer's shared rate, ``tuned`` the grid's best by mean validation AUC.
* The *d-reduction* of an MLET config is ``d' / d`` for the widest baseline
  ``d'`` it matches along with every narrower one (``strict`` or ``within_std``).

In full: docs/reproducing.md.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mlet.repro.experiments import MATCH_RULES, PROTOCOLS, Config, round_lr
from mlet.repro.run_results import RunResult


def mean(values: Sequence[float]) -> float:
    """Mean; NaN if there are no values or any is not finite (a diverged run makes its group's mean undefined)."""
    if not values or not all(math.isfinite(v) for v in values):
        return math.nan
    return statistics.fmean(values)


def std(values: Sequence[float]) -> float:
    """Sample standard deviation (0 for one value); NaN as :func:`mean`."""
    if not values or not all(math.isfinite(v) for v in values):
        return math.nan
    return statistics.stdev(values) if len(values) > 1 else 0.0


Key = tuple[str, Config]  # (optimizer, config)


def by_config_and_lr(results: Iterable[RunResult]) -> dict[Key, dict[float, list[RunResult]]]:
    """Runs grouped by (optimizer, config), then by learning rate; each list sorted by seed."""
    groups: dict[Key, dict[float, list[RunResult]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        groups[(r.spec.optimizer, r.spec.config)][r.spec.lr].append(r)
    return {
        key: {lr: sorted(runs, key=lambda r: r.spec.seed) for lr, runs in sorted(lrs.items())}
        for key, lrs in sorted(groups.items())
    }


def score(runs: Sequence[RunResult]) -> float:
    """What the tuned protocol maximises: mean validation AUC over seeds (-inf if undefined: a seed diverged)."""
    value = mean([r.val_auc for r in runs])
    return value if math.isfinite(value) else -math.inf


def best_lr(by_lr: dict[float, list[RunResult]], seeds: int | None = None) -> float | None:
    """The learning rate with the best :func:`score`, among those with ``seeds`` runs (all, if None).

    Ties go to the smaller rate. None when no rate qualifies.
    """
    complete = {lr: runs for lr, runs in by_lr.items() if seeds is None or len(runs) >= seeds}
    if not complete:
        return None
    return max(sorted(complete), key=lambda lr: (score(complete[lr]), -lr))


def next_lr(lrs: Sequence[float], best: float, factor: float, initial: Sequence[float], max_widen: int) -> float | None:
    """The rate to add when ``best`` lies at an edge of the tried ``lrs`` (None: it is interior, or the limit is
    reached).

    The grid widens by ``factor`` beyond the edge the best rate lies on, at
    most ``max_widen`` times on each side of the ``initial`` grid.
    """
    lrs = sorted(lrs)
    if len(lrs) == 0 or factor <= 1:
        return None
    if best == lrs[-1]:
        widened = sum(1 for lr in lrs if lr > max(initial))
        return round_lr(best * factor) if widened < max_widen else None
    if best == lrs[0]:
        widened = sum(1 for lr in lrs if lr < min(initial))
        return round_lr(best / factor) if widened < max_widen else None
    return None


@dataclass
class Selection:
    """The runs one protocol reports for an (optimizer, config)."""

    protocol: str
    optimizer: str
    config: Config
    lr: float
    runs: list[RunResult]
    lrs_tried: list[float]
    at_edge: bool  # tuned: the best rate is still at an edge of the tried grid

    @property
    def seeds(self) -> list[int]:
        """Seeds of the reported runs."""
        return [r.spec.seed for r in self.runs]

    def stat(self, attribute: str) -> tuple[float, float]:
        """Mean and standard deviation over seeds of a :class:`RunResult` attribute."""
        values = [getattr(r, attribute) for r in self.runs]
        return mean(values), std(values)

    def variant(self, bits: int | None) -> Selection | None:
        """The same runs as models with ``bits``-bit quantized tables (``RunResult.variant``); ``None`` unless
        every run was evaluated so. ``None`` bits: itself."""
        if bits is None:
            return self
        if not all(bits in r.quantized for r in self.runs):
            return None
        runs = [r.variant(bits) for r in self.runs]
        return Selection(self.protocol, self.optimizer, self.config, self.lr, runs, self.lrs_tried, self.at_edge)


def select(results: Iterable[RunResult], protocol: str, paper_lrs: dict[str, float]) -> list[Selection]:
    """One :class:`Selection` per (optimizer, config) under ``protocol``.

    ``paper``: the runs at ``paper_lrs[optimizer]`` (configs without such runs
    are left out). ``tuned``: the runs at :func:`best_lr` among the rates run
    for as many seeds as the config's most complete rate.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose {' or '.join(PROTOCOLS)}")
    selections = []
    for (optimizer, config), by_lr in by_config_and_lr(results).items():
        lrs = list(by_lr)
        if protocol == "paper":
            paper_lr = paper_lrs.get(optimizer)
            if paper_lr is None or round_lr(paper_lr) not in by_lr:
                continue
            lr = round_lr(paper_lr)
            at_edge = False
        else:
            if not any(math.isfinite(r.val_auc) for runs in by_lr.values() for r in runs):
                continue  # no validation metrics (no validation split, or every run diverged): nothing to choose on
            best = best_lr(by_lr, max(len(runs) for runs in by_lr.values()))
            if best is None:
                continue
            lr = best
            at_edge = len(lrs) > 1 and lr in (lrs[0], lrs[-1])
        selections.append(Selection(protocol, optimizer, config, lr, by_lr[lr], lrs, at_edge))
    return selections


# -- d-reduction ----------------------------------------------------------------------------


@dataclass
class Reduction:
    """The headline of one MLET config: the widest baseline it matches, and the factor ``d' / d``."""

    protocol: str
    optimizer: str
    config: Config
    rule: str
    matched_dim: int | None  # None: matches no baseline
    factor: float  # matched_dim / d; 0 when it matches none
    at_grid_end: bool  # matched the widest baseline of the grid: the factor is a lower bound
    per_seed: list[float]  # the same factor computed seed by seed (pairs of runs with equal seeds)

    @property
    def seed_mean_std(self) -> tuple[float, float]:
        """Mean and standard deviation of :attr:`per_seed`."""
        return mean(self.per_seed), std(self.per_seed)


def widest_matched(mlet_auc: float, baselines: dict[int, tuple[float, float]], rule: str) -> int | None:
    """The widest baseline width ``d'`` such that ``mlet_auc`` matches every baseline of width <= ``d'`` (None if none).

    ``baselines`` maps width -> (mean AUC, std AUC). A baseline is matched
    under ``strict`` when ``mlet_auc >= mean``, under ``within_std`` when
    ``mlet_auc >= mean - std``. Requiring every narrower baseline to be matched
    too (the running maximum of the baseline curve) keeps a noisy dip of the
    baseline curve at some width from inflating the factor.
    """
    if rule not in MATCH_RULES:
        raise ValueError(f"unknown match rule {rule!r}; choose {' or '.join(MATCH_RULES)}")
    matched = None
    for d in sorted(baselines):
        m, s = baselines[d]
        threshold = m - (s if rule == "within_std" and math.isfinite(s) else 0.0)
        if not (math.isfinite(mlet_auc) and math.isfinite(threshold) and mlet_auc >= threshold):
            break
        matched = d
    return matched


def d_reductions(selections: Sequence[Selection], rule: str = "strict") -> list[Reduction]:
    """The :class:`Reduction` of every MLET config, against the baselines of the same protocol and optimizer."""
    out = []
    groups: dict[tuple[str, str], list[Selection]] = defaultdict(list)
    for s in selections:
        groups[(s.protocol, s.optimizer)].append(s)
    for (protocol, optimizer), group in sorted(groups.items()):
        baselines = {s.config.dim: s for s in group if s.config.is_baseline}
        if not baselines:
            continue
        widest = max(baselines)
        base_stats = {d: s.stat("test_auc") for d, s in baselines.items()}
        for s in sorted((s for s in group if s.config.is_mlet and not s.config.method), key=lambda s: s.config):
            matched = widest_matched(s.stat("test_auc")[0], base_stats, rule)
            per_seed = []
            for run in s.runs:
                same_seed = {d: b for d, b in baselines.items() if run.spec.seed in b.seeds}
                if len(same_seed) != len(baselines):
                    continue  # compare seed by seed only where every baseline has this seed
                aucs = {
                    d: (next(r.test_auc for r in b.runs if r.spec.seed == run.spec.seed), 0.0)
                    for d, b in same_seed.items()
                }
                seed_match = widest_matched(run.test_auc, aucs, "strict")
                per_seed.append(seed_match / s.config.dim if seed_match else 0.0)
            factor = matched / s.config.dim if matched else 0.0
            out.append(Reduction(protocol, optimizer, s.config, rule, matched, factor, matched == widest, per_seed))
    return out
