"""Initialisation helpers of the tables: per-table seeds, uniform rows, MLET's ``W2`` (``--mlet-init``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

DEFAULT_PROJECTION_STD = 0.25
PROJECTION_INITS = ("normal", "normal-STD", "xavier")


def parse_projection_init(spec: str) -> tuple[str, float]:
    """Parse ``--mlet-init``: ``normal`` (std 0.25), ``normal-STD`` or ``xavier``.

    Returns ``(kind, std)``; ``std`` is ignored for ``xavier``.
    Raises ``ValueError`` naming the accepted forms.
    """
    if spec == "normal":
        return "normal", DEFAULT_PROJECTION_STD
    if spec == "xavier":
        return "xavier", 0.0
    if spec.startswith("normal-"):
        try:
            std = float(spec[len("normal-") :])
        except ValueError:
            std = -1.0
        if std > 0 and math.isfinite(std):
            return "normal", std
    raise ValueError(f"'{spec}' is not one of normal, normal-STD (STD > 0, e.g. normal-0.1), xavier")


def symmetric_uniform_(target: Tensor, bound: float, gen: torch.Generator) -> Tensor:
    """Fill ``target`` in place from uniform(-bound, bound)."""
    return target.uniform_(-bound, bound, generator=gen)


def fill_from_cpu(target: Tensor, fill: Callable[[Tensor], object]) -> None:
    """``fill(target)`` (in place, with a CPU generator); for a device tensor through a CPU copy."""
    if target.device.type == "cpu":
        fill(target)
        return
    values = torch.empty(target.shape, dtype=target.dtype)
    fill(values)
    target.copy_(values)


def fill_on(target: Tensor, fill: Callable[[Tensor], object], on_device: bool) -> None:
    """``fill(target)`` in place: with a generator on ``target``'s device, or (not ``on_device``) through
    :func:`fill_from_cpu`."""
    if on_device:
        fill(target)
    else:
        fill_from_cpu(target, fill)


def table_seed(seed: int, table: int, salt: int = 0) -> int:
    """Seed of one table's initialisation: independent of how tables are sharded."""
    return (seed * 1_000_003 + table * 7919 + salt * 104_729 + 12_345) % (2**63)


def init_projection_(w2: Tensor, spec: str, gen: torch.Generator) -> None:
    """Fill an MLET projection ``W2`` (``K x d``) in place per ``--mlet-init`` ``spec`` (xavier: +-sqrt(6/(K+d)))."""
    kind, std = parse_projection_init(spec)
    if kind == "xavier":
        symmetric_uniform_(w2, math.sqrt(6.0 / (w2.shape[0] + w2.shape[1])), gen)
    else:
        w2.normal_(0.0, std, generator=gen)
