"""The paper-reproduction grid: its configs, runs and their names, and the flags comparable runs share.

Shared by ``scripts/sweep.py`` (which runs the grid) and ``scripts/summarize.py``
(which reports it). What is read from the runs' results is in ``run_results.py``; the
learning-rate protocols and the d-reduction are in ``protocols.py``.

* A *config* is a model: a plain table of width ``d`` (``base_d4``) or MLET of
  width ``d`` and inner width ``K`` (``mlet_d4_k64``).
* A *run* is a config trained with one optimizer, learning rate and seed,
  named ``sgd_mlet_d4_k64_lr0.2_s1``.

The grid and its widening in full: docs/reproducing.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
