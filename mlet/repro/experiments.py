"""The paper-reproduction grid and what is read from its results: runs, protocols, aggregates, d-reduction.

Shared by ``scripts/sweep.py`` (which runs the grid) and ``scripts/summarize.py``
(which reports it), so that both apply the same learning-rate choice.

* A *config* is a model: a plain table of width ``d`` (``base_d4``) or MLET of
  width ``d`` and inner width ``K`` (``mlet_d4_k64``).
* A *run* is a config trained with one optimizer, learning rate and seed; its
  results JSON (``dlrm_mlet.py --results-json``) holds the test metrics
  (``final``) and the validation metrics (``val``) of the same model.
* A *protocol* picks one learning rate per (optimizer, config): ``paper`` the
  optimizer's shared rate, ``tuned`` the grid's best by mean validation AUC.
* The *d-reduction* of an MLET config is ``d' / d`` for the widest baseline
  ``d'`` it matches along with every narrower one (``strict`` or ``within_std``).

The protocols, widening and the d-reduction in full: docs/reproducing.md.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlet.core.config import ModelConfig
from mlet.core.errors import UserError

PROTOCOLS = ("paper", "tuned")
MATCH_RULES = ("strict", "within_std")
METHODS = ("", "qr", "md")
"""Table kinds besides MLET: plain tables, quotient-remainder (``qr``), mixed dimensions (``md``)."""
CONFIG_LABEL = re.compile(
    r"(?P<kind>base|mlet|qr|md|mlet_qr|mlet_md)_d(?P<dim>\d+)(?:_k(?P<hidden>\d+))?"
    r"(?:_c(?P<collisions>\d+))?(?:_t(?P<temperature>[0-9.]+))?"
)
RUN_NAME = re.compile(
    rf"^(?P<optimizer>[a-z]+)_(?P<config>{CONFIG_LABEL.pattern})_lr(?P<lr>[0-9.e+-]+)_s(?P<seed>-?\d+)$"
)


def lr_text(lr: float) -> str:
    """A learning rate as it appears in run names (6 significant digits: ``0.2``, ``0.0125``, ``12.8``)."""
    return f"{lr:.6g}"


def size_text(n: float) -> str:
    """Bytes as KiB/MiB/GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def round_lr(lr: float) -> float:
    """``lr`` rounded to the 6 significant digits of its name (so 0.05 * 4 is the 0.2 of the grid)."""
    return float(lr_text(lr))


@dataclass(frozen=True, order=True)
class Config:
    """A model of the grid: plain tables of width ``dim`` (``hidden`` 0) or MLET ``dim`` x ``hidden``; with
    ``method`` ``qr`` quotient-remainder tables of ``collisions``, with ``md`` mixed dimensions of
    ``temperature`` (upstream's ``--qr-*`` / ``--md-*``), MLET or not."""

    dim: int
    hidden: int = 0
    method: str = ""
    collisions: int = 0
    temperature: float = 0.0

    @property
    def is_mlet(self) -> bool:
        """True for two-layer tables."""
        return self.hidden > 0

    @property
    def is_baseline(self) -> bool:
        """True for plain ``n x d`` tables."""
        return not self.is_mlet and not self.method

    @property
    def label(self) -> str:
        """``base_d4``, ``mlet_d4_k64``, ``qr_d16_c4``, ``mlet_md_d16_k64_t0.3``, ..."""
        kind = "_".join(filter(None, ["mlet" if self.is_mlet else "", self.method])) or "base"
        text = f"{kind}_d{self.dim}" + (f"_k{self.hidden}" if self.is_mlet else "")
        if self.method == "qr":
            text += f"_c{self.collisions}"
        elif self.method == "md":
            text += f"_t{self.temperature:g}"
        return text

    @classmethod
    def from_label(cls, label: str) -> Config:
        """Inverse of :attr:`label`."""
        match = CONFIG_LABEL.fullmatch(label)
        if not match:
            raise ValueError(f"not a config label: {label!r}")
        kind = match["kind"]
        method = kind.removeprefix("mlet").strip("_") if kind != "base" else ""
        config = cls(
            int(match["dim"]),
            int(match["hidden"] or 0),
            method,
            int(match["collisions"] or 0),
            float(match["temperature"] or 0.0),
        )
        if config.label != label:
            raise ValueError(f"not a config label: {label!r}")
        return config

    @property
    def method_name(self) -> str:
        """The method, without the width: ``baseline``, ``MLET K=64``, ``QR c=4``, ``MLET K=64 + MD a=0.3``."""
        parts = [f"MLET K={self.hidden}"] if self.is_mlet else []
        if self.method == "qr":
            parts.append(f"QR c={self.collisions}")
        elif self.method == "md":
            parts.append(f"MD a={self.temperature:g}")
        return " + ".join(parts) or "baseline"

    def method_at(self, bits: int | None) -> str:
        """:attr:`method_name` at a precision: ``MLET K=64 + QR c=4``, ``baseline int8`` (``bits`` None: float32)."""
        return self.method_name + ("" if bits is None else f" int{bits}")

    @property
    def title(self) -> str:
        """``baseline d=4``, ``MLET d=4 K=64``, ``QR c=4 d=16``, ..."""
        if not self.method:
            return f"MLET d={self.dim} K={self.hidden}" if self.is_mlet else f"baseline d={self.dim}"
        return f"{self.method_name} d={self.dim}"

    def flags(self) -> list[str]:
        """The ``dlrm_mlet.py`` flags of the method (besides ``--arch-sparse-feature-size`` and ``--mlet-hidden``)."""
        if self.method == "qr":
            return ["--qr-flag", f"--qr-collisions={self.collisions}"]
        if self.method == "md":
            return ["--md-flag", f"--md-temperature={self.temperature!r}"]
        return []


@dataclass(frozen=True, order=True)
class RunSpec:
    """One training run of the grid."""

    optimizer: str
    config: Config
    lr: float
    seed: int

    @property
    def name(self) -> str:
        """File stem of the run's JSON and log: ``sgd_mlet_d4_k64_lr0.2_s1``."""
        return f"{self.optimizer}_{self.config.label}_lr{lr_text(self.lr)}_s{self.seed}"


def parse_run_name(name: str) -> RunSpec:
    """Inverse of :attr:`RunSpec.name`."""
    match = RUN_NAME.match(name)
    if not match:
        raise ValueError(f"not a run name: {name!r}")
    return RunSpec(match["optimizer"], Config.from_label(match["config"]), float(match["lr"]), int(match["seed"]))


def grid_configs(
    baseline_dims: Iterable[int],
    mlet_dims: Iterable[int],
    hidden: Iterable[int],
    methods: dict[str, tuple[Iterable[int], Iterable[int], Iterable[float]]] | None = None,
) -> list[Config]:
    """Baselines at every ``baseline_dims``, MLET at every ``mlet_dims`` x ``hidden`` with ``K >= d``; per
    other method (``qr``/``md``: ``(dims, mlet_dims, settings)``, the settings being collisions or
    temperatures) the method at every ``dims`` x setting, and with MLET at every ``mlet_dims`` x ``hidden``."""
    configs = [Config(d) for d in sorted(set(baseline_dims))]
    configs += [Config(d, k) for d in sorted(set(mlet_dims)) for k in sorted(set(hidden)) if k >= d]
    for method, (dims, mlet_method_dims, settings) in (methods or {}).items():
        for value in sorted(set(settings)):
            setting = {"collisions": int(value)} if method == "qr" else {"temperature": float(value)}
            configs += [Config(d, 0, method, **setting) for d in sorted(set(dims))]
            pairs = [(d, k) for d in sorted(set(mlet_method_dims)) for k in sorted(set(hidden)) if k >= d]
            configs += [Config(d, k, method, **setting) for d, k in pairs]
    return configs


def initial_rates(paper_lr: float, grid: Sequence[float], protocols: Sequence[str]) -> list[float]:
    """The rates every config of a sweep runs first: the ``paper`` protocol's, plus the grid when tuning."""
    paper = [paper_lr] if "paper" in protocols else []
    tuned = list(grid) if "tuned" in protocols else []
    return sorted({round_lr(lr) for lr in [*paper, *tuned]})


def initial_grid(settings: dict) -> list[RunSpec]:
    """Every (optimizer, config, initial rate, seed) of a sweep, from its ``sweep.json`` settings."""
    configs = [Config.from_label(label) for label in settings["configs"]]
    return [
        RunSpec(opt, config, lr, seed)
        for opt in settings["optimizers"]
        for config in configs
        for lr in initial_rates(settings["paper_lrs"][opt], settings["lrs"][opt], settings["protocols"])
        for seed in settings["seeds"]
    ]


# Flags a sweep sets per run, and values derived from them: they differ between comparable runs.
PER_RUN_ARGS = {
    "arch_sparse_feature_size",
    "arch_mlp_bot",
    "bottom_mlp",
    "mlet_hidden",
    "optimizer",
    "embedding_update",
    "learning_rate",
    "numpy_rand_seed",
    "qr_flag",
    "qr_collisions",
    "md_flag",
    "md_temperature",
    "results_json",
    "save_collapsed",
    "save_model",
}


def shared_args(payload_args: dict) -> dict:
    """The flags of a results JSON that every run of one comparison must share (the bottom MLP without its last
    width d)."""
    shared = {k: v for k, v in payload_args.items() if k not in PER_RUN_ARGS}
    shared["arch_mlp_bot"] = str(payload_args.get("arch_mlp_bot", "")).rsplit("-", 1)[0]
    return shared


# -- results -----------------------------------------------------------------------


@dataclass
class RunResult:
    """What the summaries need from one results JSON (``quantized``: the same model with int8/int4 tables, by
    bits, as :meth:`variant` gives it)."""

    spec: RunSpec
    test_auc: float
    test_logloss: float
    val_auc: float
    val_logloss: float
    samples_per_second: float
    inference_embedding_bytes: int
    training_embedding_bytes: int
    history: list[dict] = field(default_factory=list)
    path: str = ""
    shared: dict = field(default_factory=dict)  # shared_args of the run's flags
    quantized: dict[int, dict] = field(default_factory=dict)
    bits: int | None = None  # the precision of the tables scored: None float32, 8/4 quantized

    def variant(self, bits: int | None) -> RunResult:
        """This run as the model with ``bits``-bit quantized tables (its metrics and served bytes); ``None``: as
        trained (float32)."""
        if bits is None:
            return self
        q = self.quantized[bits]
        return replace(
            self,
            test_auc=q["test_auc"],
            test_logloss=q["test_logloss"],
            val_auc=q["val_auc"],
            inference_embedding_bytes=q["inference_embedding_bytes"],
            history=[],
            quantized={},
            bits=bits,
        )


def number(value: float | int | str | None) -> float:
    """A JSON metric as a float (``None``, for NaN in strict JSON, is NaN)."""
    return math.nan if value is None else float(value)


def spec_from_payload(payload: dict) -> RunSpec:
    """The run a results JSON describes, from its recorded flags (not from its file name); for an evaluation
    (``--inference-only``), the model of its checkpoint: the built model's tables and the MLET width it was
    trained with, whatever the flags of the evaluation said."""
    args = payload["args"]
    dim, hidden = int(args["arch_sparse_feature_size"]), int(args["mlet_hidden"])
    qr, md, collisions = args.get("qr_flag"), args.get("md_flag"), args.get("qr_collisions")
    built, loaded = payload.get("model_config"), payload.get("checkpoint") or {}
    if args.get("inference_only") and built and "trained_mlet_hidden" in loaded:
        hidden = int(loaded["trained_mlet_hidden"] or 0)
        qr, md, collisions = built.get("qr_flag"), bool(built.get("md_dims")), built.get("qr_collisions")
    if qr:
        config = Config(dim, hidden, "qr", collisions=int(collisions))
    elif md:
        config = Config(dim, hidden, "md", temperature=float(args["md_temperature"]))
    else:
        config = Config(dim, hidden)
    return RunSpec(str(args["optimizer"]), config, round_lr(float(args["learning_rate"])), int(args["numpy_rand_seed"]))


def result_from_payload(payload: dict, path: str = "") -> RunResult:
    """A :class:`RunResult` from a ``--results-json`` payload (``val`` is NaN when the run had no validation split)."""
    final, val = payload["final"], payload.get("val") or {}
    params = payload["parameters"]
    return RunResult(
        spec=spec_from_payload(payload),
        test_auc=number(final.get("auc")),
        test_logloss=number(final.get("logloss")),
        val_auc=number(val.get("auc")),
        val_logloss=number(val.get("logloss")),
        samples_per_second=number(payload.get("train_samples_per_second")),
        inference_embedding_bytes=int(params["embedding_inference_bytes"]),
        training_embedding_bytes=int(params["embedding_training_bytes"]),
        history=[
            {"iteration": h["iteration"], "auc": number(h.get("auc")), "logloss": number(h.get("logloss"))}
            for h in payload.get("history") or []
        ],
        path=path,
        shared=shared_args(payload["args"]),
        quantized={int(q["bits"]): quantized_metrics(q) for q in payload.get("quantized") or []},
        bits=evaluated_bits(payload),
    )


def evaluated_bits(payload: dict) -> int | None:
    """The bits of the quantized tables an evaluation scored (``--inference-only`` on a checkpoint of
    ``checkpoint.py quantize``, or with ``--quantize-emb-with-bit``); None for float tables. Recorded as
    ``served_bits`` since 2026-12-01; in older files told by the served embedding bytes: row-wise packed rows
    (``d + 8`` or ``ceil(d / 2) + 4`` bytes) never take the ``4 d`` bytes of float32 ones, so the bytes match
    at most one precision (:func:`quantized_bytes`)."""
    if not payload["args"].get("inference_only"):
        return None
    if "served_bits" in payload:
        return payload["served_bits"]
    if "model_config" not in payload:
        return None
    served = int(payload["parameters"]["embedding_inference_bytes"])
    config = ModelConfig.from_dict(payload["model_config"])
    return next((bits for bits in (8, 4) if quantized_bytes(config, bits) == served), None)


def quantized_bytes(config: ModelConfig, bits: int) -> int:
    """Served embedding bytes of ``config``'s collapsed tables quantized to ``bits`` (``mlet.serving.quantize``'s
    packed rows; mixed-dimension projections stay float32)."""
    from mlet.serving.quantize import packed_width  # imports torch and the model: only for evaluations

    total = 0
    for table in config.table_configs():
        total += sum(rows * packed_width(table.width, bits) for rows in table.parts)
        total += 4 * table.width * table.dim if table.projected else 0
    return total


def quantized_metrics(entry: dict) -> dict:
    """One entry of a results JSON's ``quantized`` list, as :meth:`RunResult.variant` reads it."""
    return {
        "test_auc": number(entry["final"].get("auc")),
        "test_logloss": number(entry["final"].get("logloss")),
        "val_auc": number((entry.get("val") or {}).get("auc")),
        "inference_embedding_bytes": int(entry["parameters"]["embedding_inference_bytes"]),
    }


def load_results(paths: Iterable[Path]) -> list[RunResult]:
    """Read results JSONs; a file that is not one is a :class:`UserError` naming it."""
    results = []
    for path in paths:
        try:
            results.append(result_from_payload(json.loads(Path(path).read_text()), str(path)))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(f"{path}: not a dlrm_mlet.py results JSON ({type(error).__name__}: {error})") from None
    return results


def sweep_record(run_dir: Path) -> dict | None:
    """A sweep directory's ``sweep.json`` (settings, sessions, runs); None without one, a :class:`UserError`
    naming a damaged one."""
    manifest = Path(run_dir) / "sweep.json"
    if not manifest.exists():
        return None
    try:
        record = json.loads(manifest.read_text())
        if not isinstance(record["settings"], dict):
            raise TypeError("settings")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{manifest}: not a sweep record ({type(error).__name__})") from None
    return record


def check_comparable(results: Sequence[RunResult]) -> None:
    """A :class:`UserError` naming the first result trained with other shared flags than the first one (flags
    both know)."""
    first = results[0]
    for r in results[1:]:
        differing = sorted(k for k in first.shared.keys() & r.shared.keys() if first.shared[k] != r.shared[k])
        if differing:
            key = differing[0]
            raise UserError(
                f"{r.path}: trained with other flags than {first.path} "
                f"(--{key.replace('_', '-')}: {r.shared[key]!r} against {first.shared[key]!r});"
                " one summary compares runs of one setup: move the odd ones out"
            )


def results_dir(run_dir: Path) -> Path:
    """Where a sweep keeps its runs' JSONs."""
    return Path(run_dir) / "results"


def load_run_dir(run_dir: Path) -> list[RunResult]:
    """Every finished run of a sweep directory."""
    return load_results(sorted(results_dir(run_dir).glob("*.json")))


# -- learning-rate protocols -----------------------------------------------------------


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
