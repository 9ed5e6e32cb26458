"""Mixed-dimension embeddings (Ginart et al., arXiv 1909.11810): per-table widths from popularity.

Upstream DLRM's ``md_solver`` assigns table ``t`` the width
``d_t = lambda * (n_t / k_t) ** -alpha``: ``n_t / k_t`` is the number of rows
per query of the table (the inverse of a row's popularity), ``alpha``
(``--md-temperature``) sets how strongly width follows popularity, and
``lambda`` gives the table with the fewest rows per query the base width ``d``.
Widths are rounded, at least 1, and with ``--md-round-dims`` rounded to the
nearest power of 2. Each table narrower than ``d`` is followed by its own
bias-free ``d_t x d`` projection, so the interaction still sees ``d``-wide vectors.

Upstream passes the table sizes (every row equally popular). Here the rows per
query of a table come from the training split's id counts:
:func:`effective_rows` is the *perplexity* of the table's id distribution,
``exp(entropy)``: the number of equally popular rows that would be as hard to
predict. For uniform ids it is the table size (upstream's rule); a table whose
queries concentrate on few ids counts as small, and keeps a wider embedding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def effective_rows(counts: np.ndarray) -> float:
    """``exp(entropy)`` of the id distribution given by ``counts`` (the table size when no id was counted)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return float(len(counts))
    p = counts[counts > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def power_of_two(width: float) -> int:
    """The power of 2 nearest ``width`` in log scale (upstream's ``pow_2_round``)."""
    return int(2 ** round(math.log2(width)))


def md_solver(rows_per_query: Sequence[float], alpha: float, base_dim: int, round_dims: bool) -> list[int]:
    """Upstream's alpha-power rule: widths ``lambda * r_t ** -alpha`` with the smallest ``r_t`` at ``base_dim``.

    ``rows_per_query``: each table's ``n_t / k_t`` (> 0). Widths are rounded
    (half to even, as ``torch.round``), at least 1, optionally to powers of 2,
    and at most ``base_dim``.
    """
    if not rows_per_query:
        return []
    smallest = min(range(len(rows_per_query)), key=lambda t: rows_per_query[t])
    scale = base_dim * rows_per_query[smallest] ** alpha
    widths = []
    for t, r in enumerate(rows_per_query):
        width = base_dim if t == smallest else max(1, round(scale * r**-alpha))
        if round_dims:
            width = power_of_two(width)
        widths.append(min(width, base_dim))
    return widths


def md_widths(
    table_sizes: Sequence[int],
    popularity_rows: Sequence[float],
    alpha: float,
    dim: int,
    threshold: int,
    round_dims: bool,
) -> tuple[int, ...]:
    """``--md-flag``'s per-table widths: :func:`md_solver` over ``popularity_rows`` (e.g. :func:`effective_rows`
    of each table's training counts); tables of at most ``threshold`` rows keep ``dim`` (upstream's
    ``--md-threshold``)."""
    solved = md_solver(list(popularity_rows), alpha, dim, round_dims)
    return tuple(dim if n <= threshold else w for n, w in zip(table_sizes, solved))


def projection_bound(width: int, dim: int) -> float:
    """Xavier-uniform bound of a ``width x dim`` projection (upstream initialises it with ``xavier_uniform_``)."""
    return math.sqrt(6.0 / (width + dim))
