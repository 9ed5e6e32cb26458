"""Quotient-remainder embeddings (Shi et al., arXiv 1909.02107), as upstream DLRM's ``--qr-*`` flags.

A table of ``n`` rows is stored as two: a *quotient* table of ``ceil(n / c)``
rows indexed by ``id // c`` and a *remainder* table of ``c`` rows indexed by
``id % c`` (``c`` = ``--qr-collisions``). Each id gets a unique pair, so no two
ids share both rows. The two pooled bags are combined by ``--qr-operation``:
``mult`` (element-wise product), ``add``, or ``concat`` (each half ``d / 2``
wide, so the interaction still sees ``d``). As upstream, each bag is pooled
in each table first and the two sums are combined, which for one id per bag
(every data set here) is the combined row itself.

Initialisation (upstream draws both halves from uniform(sqrt(1/n), 1), all
positive; here): the quotient table as a plain table of the feature,
uniform(+-sqrt(1/n)); the remainder table the same for ``add`` and
``concat``, and uniform(+-1) for ``mult``, where it scales the quotient rows,
so that a product starts at the scale of a plain row.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def split_ids(ids: Tensor, collisions: int) -> tuple[Tensor, Tensor]:
    """``(ids // c, ids % c)``: rows of the quotient and the remainder table."""
    return torch.div(ids, collisions, rounding_mode="floor"), torch.remainder(ids, collisions)


def combine(quotient: Tensor, remainder: Tensor, operation: str) -> Tensor:
    """The feature's embedding from its pooled quotient and remainder rows (last dimension combined)."""
    if operation == "mult":
        return quotient * remainder
    if operation == "add":
        return quotient + remainder
    if operation == "concat":
        return torch.cat([quotient, remainder], dim=-1)
    raise ValueError(f"unknown quotient-remainder operation '{operation}' (choose mult, add or concat)")


def init_bound(rows: int, part: int, operation: str) -> float:
    """Uniform bound of part ``part`` (0: quotient, 1: remainder) of an ``rows``-row feature's pair."""
    if part == 1 and operation == "mult":
        return 1.0
    return math.sqrt(1.0 / rows)
