"""The flags of the other embedding reductions: quotient-remainder, mixed dimensions, quantization.

Upstream DLRM's names, meanings and defaults: ``--qr-flag``, ``--qr-threshold``,
``--qr-collisions``, ``--qr-operation``; ``--md-flag``, ``--md-threshold``,
``--md-temperature``, ``--md-round-dims``; ``--quantize-emb-with-bit``
(defined in :mod:`mlet.cli.parser`). Here they are checked (one line naming
the flag) and turned into configs: quotient-remainder settings go straight into
the ``ModelConfig``; mixed-dimension widths need the data's popularity, so
:func:`with_md_widths` sets them once the data is built. What the methods
do: docs/training.md.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

from dlrm_model import DLRM
from mlet.cli.parser import NO_QUANTIZATION
from mlet.core.config import MixedDimensionConfig, ModelConfig
from mlet.core.errors import UserError, flag_value, require_at_least
from mlet.core.launch import launched_world_size
from mlet.model.mixed_dimension import effective_rows, md_widths
from mlet.serving import quantize
from mlet.training.processes import Parallel

QUANTIZE_BITS = (4, 8)


def parse_quantize_bits(text: str, inference_only: bool) -> tuple[int, ...]:
    """``--quantize-emb-with-bit``: ``32`` (none), ``8``, ``4``, or, for a training run, a dash-separated list."""
    try:
        values = [int(v) for v in text.split("-")]
    except ValueError:
        raise UserError(
            f"--quantize-emb-with-bit: expected 4, 8 or 32 (e.g. 8, or 8-4 after training), got '{text}'"
        ) from None
    if values == [NO_QUANTIZATION]:
        return ()
    bad = [v for v in values if v not in QUANTIZE_BITS]
    if bad:
        raise UserError(f"--quantize-emb-with-bit: tables quantize to 4 or 8 bits (32: not at all), got {bad[0]}")
    if inference_only and len(values) > 1:
        raise UserError(f"--quantize-emb-with-bit: --inference-only evaluates one model; give 4 or 8, got '{text}'")
    return tuple(dict.fromkeys(values))


SWITCHED_BY = {
    "--qr-threshold": "qr_flag",
    "--qr-collisions": "qr_flag",
    "--qr-operation": "qr_flag",
    "--md-threshold": "md_flag",
    "--md-temperature": "md_flag",
    "--md-round-dims": "md_flag",
}


def unused_reduction_flags(args: argparse.Namespace, defaults: argparse.Namespace) -> list[str]:
    """One log line for each ``--qr-*`` / ``--md-*`` setting given without the switch that uses it (upstream
    ignores them silently)."""
    lines = []
    for flag, switch in SWITCHED_BY.items():
        if flag_value(args, flag) != flag_value(defaults, flag) and not getattr(args, switch):
            lines.append(f"{flag}: ignored without --{switch.replace('_', '-')}")
    return lines


def check_reduction_flags(args: argparse.Namespace, dim: int, bottom_mlp: list[int]) -> None:
    """The quotient-remainder and mixed-dimension flags: bounds, and what they need of d and of the run."""
    require_at_least(
        [
            ("--qr-collisions", args.qr_collisions, 1),
            ("--qr-threshold", args.qr_threshold, 0),
            ("--md-threshold", args.md_threshold, 0),
        ]
    )
    if not (math.isfinite(args.md_temperature) and args.md_temperature >= 0):
        raise UserError(f"--md-temperature: must be a finite number >= 0, got {args.md_temperature}")
    if args.qr_flag and args.qr_operation == "concat":
        if bottom_mlp[-1] == 2 * dim:
            raise UserError(
                f"--qr-operation=concat: here --arch-sparse-feature-size is the width after concatenation "
                f"(each half d/2); upstream's {dim} per half is --arch-sparse-feature-size={2 * dim} here"
            )
        if dim % 2:
            raise UserError(f"--qr-operation=concat: each half is d/2 wide; d must be even, got {dim}")
    reduced = [flag for flag, on in (("--qr-flag", args.qr_flag), ("--md-flag", args.md_flag)) if on]
    if reduced and launched_world_size() > 1:
        raise UserError(f"{reduced[0]}: not under torchrun (its tables are not sharded yet); train it in one process")


def check_quantize_run(bits: tuple[int, ...], use_gpu: bool, inference_only: bool) -> None:
    """Quantized lookups are torch's CPU kernels, in one process: a GPU training run evaluates its quantized copies
    on the CPU at the end; an ``--inference-only`` run, which evaluates nothing else, runs on the CPU."""
    if not bits:
        return
    if use_gpu and inference_only:
        raise UserError(
            "--quantize-emb-with-bit: with --inference-only the quantized model is evaluated on the CPU (its lookups"
            " are CPU kernels); leave out --use-gpu"
        )
    if launched_world_size() > 1:
        raise UserError("--quantize-emb-with-bit: evaluates in one process, not under torchrun")


def mixed_dimension_config(args: argparse.Namespace) -> MixedDimensionConfig | None:
    """The ``--md-*`` settings (``None`` without ``--md-flag``)."""
    if not args.md_flag:
        return None
    return MixedDimensionConfig(args.md_temperature, args.md_threshold, args.md_round_dims)


def with_qr(config: ModelConfig, args: argparse.Namespace) -> ModelConfig:
    """``config`` with the ``--qr-*`` settings (upstream's defaults kept in the config even when off)."""
    return replace(
        config,
        qr_flag=args.qr_flag,
        qr_threshold=args.qr_threshold,
        qr_collisions=args.qr_collisions,
        qr_operation=args.qr_operation,
    )


def check_qr_sizes(config: ModelConfig) -> None:
    """Refuse ``--qr-collisions`` where a quotient-remainder pair would not be smaller than its table (the
    quotient's ``ceil(n / c)`` rows plus the remainder's ``c``)."""
    if not config.qr_flag:
        return
    c = config.qr_collisions
    for t, n in enumerate(config.table_sizes):
        if n > config.qr_threshold and math.ceil(n / c) + c >= n:
            raise UserError(
                f"--qr-collisions: {c} leaves table {t}'s pair ({math.ceil(n / c):,} quotient + {c:,} remainder rows)"
                f" no smaller than its {n:,} rows; use a value well below that (about sqrt(rows) is the smallest pair)"
                " or raise --qr-threshold"
            )


def popularity_rows(table_sizes: list[int], counts: list | None) -> list[float]:
    """Each table's rows per query: the :func:`effective_rows` of its training counts (table sizes without
    counts, as upstream)."""
    if counts is None:
        return [float(n) for n in table_sizes]
    return [effective_rows(c) for c in counts]


def with_md_widths(config: ModelConfig, md: MixedDimensionConfig | None, counts: list | None) -> ModelConfig:
    """``config`` with the mixed-dimension widths of ``md`` (from the training ``counts`` of each table's rows);
    unchanged without ``--md-flag``."""
    if md is None:
        return config
    rows = popularity_rows(list(config.table_sizes), counts)
    widths = md_widths(config.table_sizes, rows, md.temperature, config.dim, md.threshold, md.round_dims)
    return replace(config, md_dims=widths)


def evaluated_model(ckpt: dict, quantize_bits: tuple[int, ...], parallel: Parallel) -> DLRM:
    """The model ``--inference-only`` evaluates: the checkpoint's, with tables quantized as
    ``--quantize-emb-with-bit`` asks (a quantized checkpoint as it is)."""
    stored = (ckpt.get("quantized") or {}).get("bits")
    wanted = quantize_bits[0] if quantize_bits else None
    if stored is not None:
        if wanted not in (None, stored):
            raise UserError(f"--quantize-emb-with-bit: the checkpoint's tables are already {stored}-bit quantized")
        if parallel.world_size > 1:
            raise UserError("a quantized checkpoint is evaluated in one process, not under torchrun")
        return quantize.model_from_checkpoint(ckpt)
    model = parallel.model_from_checkpoint(ckpt)
    return quantize.quantize_model(model, wanted) if wanted else model


def describe_tables(config: ModelConfig) -> str:
    """``plain``, ``MLET K=64``, plus the quotient-remainder and mixed-dimension tables, for the log."""
    kind = f"MLET K={config.mlet_hidden}" if config.mlet_hidden else "plain"
    return ", ".join([kind, *reduction_parts(config)])


def reduction_parts(config: ModelConfig) -> list[str]:
    """The quotient-remainder and mixed-dimension tables of ``config``, a phrase each (none for plain tables)."""
    parts = []
    if pairs := sum(t.kind == "qr" for t in config.table_configs()):
        on = f"{pairs} table" if pairs == 1 else f"{pairs} tables"
        parts.append(f"quotient-remainder {config.qr_operation} x{config.qr_collisions} on {on}")
    if config.md_dims:
        parts.append(f"mixed dimensions {md_widths_in_effect(config)}")
    return parts


def md_widths_in_effect(config: ModelConfig) -> str:
    """The stored row widths of a mixed-dimension model, ``qr`` for a quotient-remainder table (which takes
    precedence over its mixed dimension, as upstream's), e.g. ``qr-qr-4``."""
    return "-".join("qr" if t.kind == "qr" else str(t.width) for t in config.table_configs())


def stored_tables(config: ModelConfig, bits: int | None = None) -> str:
    """What the inference tables of a model with ``config`` are (MLET collapsed), e.g. ``plain d=4 tables`` or
    ``plain d=4 tables (quotient-remainder mult x4 on 2 tables), int8 row-wise``."""
    reductions = reduction_parts(config.collapsed())
    details = f" ({'; '.join(reductions)})" if reductions else ""
    precision = f", int{bits} row-wise" if bits else ""
    return f"plain d={config.dim} tables{details}{precision}"
