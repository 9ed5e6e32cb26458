"""Which process holds what, in a multi-process run: the sharding plan of the
tables, each process's share of a global batch, and the row layout of sharded
tensors (used to gather checkpoints into the single-process layout and to
split them again). Pure bookkeeping, no communication:
the modules beside it do the talking.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dlrm_model import ModelConfig
from mlet.training.optimizers import DENSE_STATE_SLOTS, table_state_elements

# A table may go to a rank holding up to this much more than the byte-greedy choice if that evens out lookups.
BYTE_SLACK = 0.02


# -- the sharding plan -------------------------------------------------------
def table_bytes(config: ModelConfig, optimizer: str, element_size: int = 4) -> list[int]:
    """Training bytes of each table: its rows (K-wide for MLET, else d-wide), its K x d projection for MLET,
    and the optimizer's state of both (per element, or per row for row-wise Adagrad's rows)."""
    width = config.table_width
    projection = config.mlet_hidden * config.dim * (1 + DENSE_STATE_SLOTS[optimizer])
    return [
        (n * width + table_state_elements(optimizer, n, width) + projection) * element_size for n in config.table_sizes
    ]


@dataclass(frozen=True)
class ShardingPlan:
    """Which rank owns which tables (``tables_of_rank[r]``, ascending global ids)."""

    tables_of_rank: tuple[tuple[int, ...], ...]
    table_bytes: tuple[int, ...]

    @classmethod
    def balanced(cls, table_bytes: Sequence[int], world_size: int) -> ShardingPlan:
        """Tables to ranks, balancing bytes first and the number of tables second.

        Greedy over tables in decreasing size: the byte-greedy choice (the
        least-loaded rank) fixes the largest load reachable at this step; any
        rank that stays within ``1 + BYTE_SLACK`` of it may take the table, and
        of those the one with the fewest tables (then fewest bytes, then lowest
        rank) does. Tables too big to share a rank still get one each; the
        many small tables then even out the lookups each rank does per batch.
        """
        loads, counts = [0] * world_size, [0] * world_size
        owned: list[list[int]] = [[] for _ in range(world_size)]
        for t in sorted(range(len(table_bytes)), key=lambda t: (-table_bytes[t], t)):
            size = table_bytes[t]
            reachable = max(max(loads), min(loads) + size) * (1 + BYTE_SLACK)
            allowed = [r for r in range(world_size) if loads[r] + size <= reachable]
            rank = min(allowed, key=lambda r: (counts[r], loads[r], r))
            loads[rank], counts[rank] = loads[rank] + size, counts[rank] + 1
            owned[rank].append(t)
        return cls(tuple(tuple(sorted(ts)) for ts in owned), tuple(int(b) for b in table_bytes))

    @property
    def world_size(self) -> int:
        """Ranks in the plan."""
        return len(self.tables_of_rank)

    def rank_bytes(self, rank: int) -> int:
        """Training bytes the plan puts on ``rank``."""
        return sum(self.table_bytes[t] for t in self.tables_of_rank[rank])

    def to_dict(self) -> dict:
        """JSON- and checkpoint-friendly form."""
        return {
            "world_size": self.world_size,
            "tables_of_rank": [list(ts) for ts in self.tables_of_rank],
            "bytes_of_rank": [self.rank_bytes(r) for r in range(self.world_size)],
            "table_bytes": list(self.table_bytes),
        }

    def describe(self, table_sizes: Sequence[int], optimizer: str) -> str:
        """The one-line plan printed at the start of a run."""
        parts = []
        for rank, tables in enumerate(self.tables_of_rank):
            listed = ",".join(map(str, tables)) or "none"
            rows = sum(table_sizes[t] for t in tables)
            count = f"{len(tables)} table{'' if len(tables) == 1 else 's'}"
            parts.append(
                f"rank {rank}: tables {listed} ({count}, {rows:,} rows, {format_bytes(self.rank_bytes(rank))})"
            )
        loads = [self.rank_bytes(r) for r in range(self.world_size)]
        imbalance = max(loads) / (sum(loads) / len(loads)) if sum(loads) else 1.0
        state = f" + {optimizer} state" if table_state_elements(optimizer, 1, 1) else ""
        return (
            f"sharding plan: {len(table_sizes)} table{'' if len(table_sizes) == 1 else 's'} on {self.world_size}"
            " processes, "
            f"balanced by training bytes (rows + projections{state}),"
            f" then by table count: {'; '.join(parts)}; largest/mean bytes {imbalance:.2f}"
        )


def format_bytes(count: int) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class RowLayout:
    """Where a dim-0-sharded tensor's rows live: ``segments[r]`` lists ``(start, count)``
    ranges of the full tensor that rank ``r`` holds, one after another, in its local tensor."""

    full_rows: int
    segments: tuple[tuple[tuple[int, int], ...], ...]

    @classmethod
    def of_tables(cls, plan: ShardingPlan, rows_per_table: Sequence[int]) -> RowLayout:
        """Layout of a tensor holding ``rows_per_table[t]`` consecutive rows per table, in table order."""
        starts = [0, *itertools.accumulate(rows_per_table)]
        segments = []
        for tables in plan.tables_of_rank:
            merged: list[tuple[int, int]] = []
            for t in tables:
                if merged and merged[-1][0] + merged[-1][1] == starts[t]:
                    merged[-1] = (merged[-1][0], merged[-1][1] + rows_per_table[t])
                else:
                    merged.append((starts[t], rows_per_table[t]))
            segments.append(tuple(merged))
        return cls(starts[-1], tuple(segments))

    def take(self, full: Tensor, rank: int) -> Tensor:
        """Rank ``rank``'s rows of the full tensor."""
        if full.shape[0] != self.full_rows:
            raise ValueError(f"expected {self.full_rows} rows, got {full.shape[0]}")
        pieces = [full[start : start + count] for start, count in self.segments[rank]]
        return torch.cat(pieces) if pieces else full[:0].clone()
