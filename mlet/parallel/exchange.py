"""The embedding exchange of a multi-process run: each table's pooled vectors go from the process that owns
the table to the processes whose samples they belong to, and their gradients come back.

:class:`ExchangeLayout` holds one global batch size's split sizes and row orders, :class:`EmbeddingExchange`
the all-to-all in both directions. The design: docs/distributed.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from mlet.core.batch import local_sizes
from mlet.kernels.triton_kernels import take_rows


@dataclass(frozen=True)
class ExchangeLayout:
    """Split sizes of one all-to-all for a global batch of a given size, and the row orders on each side.

    The owner's tables give their vectors table-major (``owned x B x d``, as
    they look them up); rank ``o`` sends rank ``r`` the vectors of ``r``'s
    samples for ``o``'s tables, ``local_sizes[r] x tables(o) x d`` values,
    sample-major; the interaction reads ``b x T x d``. Each reordering is one
    row gather (of ``d`` values): ``send_row`` picks the send buffer's rows
    from the tables' output, ``received_row`` the model's rows from the
    received buffer, and their inverses (``pooled_row``, ``sent_row``) take
    the gradients back the same way.
    """

    send_splits: list[int]
    recv_splits: list[int]
    batch_size: int
    local_batch: int
    owned: int
    num_tables: int
    dim: int
    send_row: Tensor  # (B * owned,) int64 rows of the tables' output, on the device
    pooled_row: Tensor  # its inverse permutation
    received_row: Tensor  # (local_batch * num_tables,) rows of the received buffer
    sent_row: Tensor  # its inverse permutation
    group: dist.ProcessGroup | None

    @classmethod
    def of(
        cls,
        batch_size: int,
        tables_of_rank: Sequence[Sequence[int]],
        rank: int,
        dim: int,
        device: torch.device,
        group: dist.ProcessGroup | None,
    ) -> ExchangeLayout:
        """The layout of ``rank`` for a global batch of ``batch_size`` under a plan's ``tables_of_rank``."""
        sizes = local_sizes(batch_size, len(tables_of_rank))
        owned = len(tables_of_rank[rank])
        send_row = cls.send_rows(batch_size, owned)
        received_row = cls.received_rows(sizes[rank], tables_of_rank)
        return cls(
            send_splits=[b * owned * dim for b in sizes],
            recv_splits=[sizes[rank] * len(tables) * dim for tables in tables_of_rank],
            batch_size=batch_size,
            local_batch=sizes[rank],
            owned=owned,
            num_tables=sum(len(tables) for tables in tables_of_rank),
            dim=dim,
            send_row=send_row.to(device),
            pooled_row=torch.argsort(send_row).to(device),
            received_row=received_row.to(device),
            sent_row=torch.argsort(received_row).to(device),
            group=group,
        )

    @staticmethod
    def received_rows(local_batch: int, tables_of_rank: Sequence[Sequence[int]]) -> Tensor:
        """Row of the received buffer (owner-major blocks of ``local_batch x len(tables)``) that holds
        each sample's vector of each table, in ``local_batch x T`` order (CPU, int64)."""
        num_tables = sum(len(tables) for tables in tables_of_rank)
        rows = torch.empty(local_batch, num_tables, dtype=torch.int64)
        first = 0  # the block's first row in the received buffer
        samples = torch.arange(local_batch).unsqueeze(1)
        for tables in tables_of_rank:
            if tables:
                position = torch.arange(len(tables)).unsqueeze(0)
                rows[:, list(tables)] = first + samples * len(tables) + position
            first += local_batch * len(tables)
        return rows.view(-1)

    @staticmethod
    def send_rows(batch_size: int, owned: int) -> Tensor:
        """Row of the tables' output (``owned x B``) for each row of the send buffer (rank-major blocks
        of each rank's samples x ``owned``) (CPU, int64). Each rank's samples are a consecutive range of
        the batch (:func:`~mlet.core.batch.sample_range`), so the blocks, one after the other, are the
        batch's samples in order."""
        samples = torch.arange(batch_size).unsqueeze(1)
        return (torch.arange(owned).unsqueeze(0) * batch_size + samples).view(-1)


class EmbeddingExchange(torch.autograd.Function):
    """All-to-all of pooled embeddings: ``owned x B x d`` on each owner -> ``b x T x d`` on each rank.

    Backward sends each rank's embedding gradients back to the owners with the
    reverse all-to-all, and returns them table-major like the input, so that
    the tables' backward gets them without a copy. On a rank that owns no table
    the input is an empty tensor that requires grad, so that its backward still
    takes part. The row orders are :class:`ExchangeLayout`'s.
    """

    @staticmethod
    def forward(ctx, pooled: Tensor, layout: ExchangeLayout) -> Tensor:
        ctx.layout = layout
        outgoing = take_rows(pooled.reshape(-1, layout.dim), layout.send_row)
        received = pooled.new_empty(sum(layout.recv_splits))
        dist.all_to_all_single(received, outgoing.view(-1), layout.recv_splits, layout.send_splits, group=layout.group)
        rows = take_rows(received.view(-1, layout.dim), layout.received_row)
        return rows.view(layout.local_batch, layout.num_tables, layout.dim)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        layout: ExchangeLayout = ctx.layout
        outgoing = take_rows(grad.reshape(-1, layout.dim), layout.sent_row)
        incoming = grad.new_empty(sum(layout.send_splits))
        dist.all_to_all_single(incoming, outgoing.view(-1), layout.send_splits, layout.recv_splits, group=layout.group)
        pooled = take_rows(incoming.view(-1, layout.dim), layout.pooled_row)
        return pooled.view(layout.owned, layout.batch_size, layout.dim), None
