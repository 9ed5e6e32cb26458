"""Embedding tables for DLRM: plain tables and MLET (two-layer) tables.

All categorical features' tables live in one module, :class:`EmbeddingTables`,
so that a batch needs one lookup kernel whatever the number of features:

* plain tables (``hidden == 0``): one weight of ``sum(n_t) x d``; table ``t``
  owns the rows ``row_offsets[t] : row_offsets[t + 1]``.
* MLET tables (``hidden == K``): one weight ``W1`` of ``sum(n_t) x K`` with the
  same row layout, and a stacked bias-free projection ``W2`` of ``T x K x d``.
  The embedding of a bag is ``pooled(W1 rows) @ W2[t]``; all tables' projections
  run as one batched matmul. There is no nonlinearity, so pooling before or
  after the projection gives the same function, and :meth:`collapse` folds
  ``W1 @ W2`` into a plain ``n x d`` table for inference.

Indices arrive as :class:`SparseFeatures`: local row ids per table, bags laid
out table-major (all of table 0's bags for the batch, then table 1's, ...).

Quotient-remainder and mixed-dimension tables (``--qr-flag``, ``--md-flag``)
are a ``mlet.model.composite.CompositeTables`` whose groups of like-shaped
tables are each an :class:`EmbeddingTables`; :func:`build_tables` picks.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlet.core.batch import SparseFeatures
from mlet.core.config import ModelConfig
from mlet.kernels import host_memory, triton_kernels
from mlet.model import lookup
from mlet.model.composite import CompositeTables, GroupSpec
from mlet.model.init import (  # noqa: F401  (re-exported: the tables' init helpers)
    PROJECTION_INITS,
    fill_from_cpu,
    init_projection_,
    parse_projection_init,
    table_seed,
    uniform_rows_,
)

RowUpdate = Callable[[Tensor, Tensor], None]
"""``update(rows, grads)``: apply one optimizer step to weight rows ``rows``
given one gradient row per occurrence (rows may repeat; their gradients add)."""


@runtime_checkable
class ProjectedRowUpdate(Protocol):
    """A row update that also takes MLET's gradient before the projection (``optimizers.RowSGD``)."""

    def scatter_projected(self, rows: Tensor, grad_out: Tensor, projection: Tensor, row_bounds: Tensor) -> None:
        """Update ``rows`` from ``grad_out[t, b] @ projection[t].T`` (see ``RowSGD.scatter_projected``)."""


@runtime_checkable
class TableRowUpdate(Protocol):
    """A row update that takes a one-hot backward's gradients by table (``optimizers.RowSGD``)."""

    def scatter_tables(self, rows: Tensor, grad_out: Tensor, row_bounds: Tensor) -> None:
        """Update ``rows[t*B+b]`` from ``grad_out[t, b]`` (see ``RowSGD.scatter_tables``)."""


@runtime_checkable
class BagRowUpdate(Protocol):
    """A row update that takes a multi-hot backward's bag gradients whole (``optimizers.RowSGD``)."""

    def scatter_bags(self, rows: Tensor, grad_pooled: Tensor, bag_of_row: Tensor, scales: Tensor | None) -> None:
        """Update ``rows[i]`` from ``grad_pooled[bag_of_row[i]] * scales[i]`` (see ``RowSGD.scatter_bags``)."""


class _LookupWithRowUpdate(torch.autograd.Function):
    """Sum-pooled lookup whose backward updates the looked-up rows in place.

    The weight gets no ``.grad``: its backward hands each occurrence's gradient
    row to ``update`` (the fused optimizer; on a GPU, SGD takes multi-hot bags'
    gradients whole, ``BagRowUpdate``, and one-hot gradients by table with
    ``row_bounds``, the tables' first rows, ``TableRowUpdate``), which writes
    the new rows straight into the weight. No sparse gradient tensor, no coalescing, no separate
    optimizer pass over the table; every shape is static, so the whole step
    can be captured in a CUDA graph. ``id_weights`` (per-id weights of padded
    bags, ``SparseFeatures.padded``) scale each id's row and its gradient.
    """

    @staticmethod
    def forward(
        ctx,
        weight: Tensor,
        ids: Tensor,
        offsets: Tensor,
        row_bounds: Tensor,
        update: RowUpdate,
        one_hot: bool,
        id_weights: Tensor | None,
    ) -> Tensor:
        ctx.save_for_backward(ids, offsets, row_bounds, id_weights)
        ctx.update, ctx.one_hot = update, one_hot
        if one_hot and triton_kernels.usable(weight):
            return triton_kernels.gather_rows(weight, ids)
        return F.embedding_bag(
            ids, weight, offsets, mode="sum", include_last_offset=True, per_sample_weights=id_weights
        )

    @staticmethod
    def backward(ctx, grad_pooled: Tensor) -> tuple[None, None, None, None, None, None, None]:
        ids, offsets, row_bounds, id_weights = ctx.saved_tensors
        num_bags = offsets.numel() - 1
        if ctx.one_hot and isinstance(ctx.update, TableRowUpdate) and triton_kernels.usable(grad_pooled):
            ctx.update.scatter_tables(
                ids, grad_pooled.view(row_bounds.numel() - 1, -1, grad_pooled.shape[1]), row_bounds
            )
        elif ctx.one_hot:
            ctx.update(ids, grad_pooled)  # one id per bag: the bag gradient is the id's
        else:
            bag_of_id = torch.arange(num_bags, device=ids.device).repeat_interleave(
                offsets.diff(), output_size=ids.numel()
            )
            if isinstance(ctx.update, BagRowUpdate) and triton_kernels.usable(grad_pooled):
                ctx.update.scatter_bags(ids, grad_pooled, bag_of_id, id_weights)  # no per-id gradient rows stored
                return None, None, None, None, None, None, None
            grads = grad_pooled.index_select(0, bag_of_id)
            if id_weights is not None:
                grads.mul_(id_weights.unsqueeze(1))  # padding ids: a zero gradient
            ctx.update(ids, grads)
        return None, None, None, None, None, None, None


class _MletOneHotLookupWithRowUpdate(torch.autograd.Function):
    """One-hot MLET lookup and projection, with the W1 row update fused into the backward.

    Forward: project each bag's W1 row by its table's W2, the rows read
    straight from W1 (one kernel; the K-wide rows are never stored).
    Backward: W2's gradient from the same rows (returned to autograd), then
    ``update.scatter_projected`` writes ``-lr * grad @ W2.T`` straight into the
    W1 rows (one kernel, the K-wide row gradients are never stored either).
    Used on the Triton path with SGD. The backward bumps W1's version after its
    in-place update, so a second pending backward through the same rows (two
    forwards, then two backwards) fails loudly instead of reading updated rows.
    """

    @staticmethod
    def forward(
        ctx, weight: Tensor, projection: Tensor, ids: Tensor, row_bounds: Tensor, update: ProjectedRowUpdate
    ) -> Tensor:
        ctx.save_for_backward(weight, projection, ids, row_bounds)
        ctx.update = update
        return triton_kernels.gather_project(weight, ids, projection)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[None, Tensor, None, None, None]:
        weight, projection, ids, row_bounds = ctx.saved_tensors
        grad_projection = triton_kernels.gathered_weight_gradient(weight, ids, grad_out)  # before the rows change
        ctx.update.scatter_projected(ids, grad_out, projection, row_bounds)
        torch.autograd.graph.increment_version(weight)  # the Triton kernel's writes are invisible to autograd
        return None, grad_projection, None, None, None


class _BatchedProjection(torch.autograd.Function):
    """MLET's per-table projection ``(T, B, K) @ (T, K, d)`` with torch's bmm, in layouts fast on CPU.

    The batched GEMMs are skinny (``d`` is 2-16); MKL's speed for them depends
    on which operand is transposed by 2-4x (bench/NOTES.md): the weight
    gradient is formed as ``(g^T @ pooled)^T`` (reduction over the batch with
    contiguous rows) and, for ``d < 16``, the forward as ``(W2^T @ pooled^T)^T``.
    """

    @staticmethod
    def forward(ctx, pooled: Tensor, projection: Tensor) -> Tensor:
        ctx.save_for_backward(pooled, projection)
        if projection.shape[2] < 16:
            return torch.bmm(projection.transpose(1, 2), pooled.transpose(1, 2)).transpose(1, 2)
        return torch.bmm(pooled, projection)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None]:
        pooled, projection = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_pooled = torch.bmm(grad_out, projection.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        grad_projection = (
            torch.bmm(grad_out.transpose(1, 2), pooled).transpose(1, 2) if ctx.needs_input_grad[1] else None
        )
        return grad_pooled, grad_projection


def project(pooled: Tensor, projection: Tensor) -> Tensor:
    """``torch.bmm(pooled, projection)``: Triton kernels where usable, else :class:`_BatchedProjection`."""
    if triton_kernels.usable(pooled, projection) and pooled.dtype == torch.float32:
        return triton_kernels.GroupedProjection.apply(pooled, projection)
    return _BatchedProjection.apply(pooled, projection)


class EmbeddingTables(nn.Module):
    """Every categorical feature's embedding table, plain or MLET, in one module.

    Args:
        table_sizes: rows ``n_t`` of each table.
        dim: embedding dimension ``d`` seen by the interaction.
        hidden: MLET inner width ``K``; 0 for plain ``n x d`` tables.
        projection_init: ``--mlet-init`` value for ``W2``.
        seed: initialisation seed; table ``t`` depends only on ``(seed, t)``.
            ``None`` leaves the weights uninitialised (to be overwritten).
        sparse: produce sparse row gradients for the (K- or d-wide) table weight.
        table_ids: global feature numbers of these tables (for seeding when the
            module holds a shard of the model's tables); defaults to ``0..T-1``.
        device: where to allocate.
    """

    weight: nn.Parameter
    projection: nn.Parameter | None
    row_offsets: Tensor

    def __init__(
        self,
        table_sizes: Sequence[int],
        dim: int,
        hidden: int = 0,
        projection_init: str = "normal",
        seed: int | None = 0,
        sparse: bool = True,
        table_ids: Sequence[int] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if hidden < 0:
            raise ValueError(f"hidden width must be >= 0, got {hidden}")
        self.table_sizes = [int(n) for n in table_sizes]
        self.dim = int(dim)
        self.hidden = int(hidden)
        self.sparse = sparse
        self.projection_init = projection_init
        self.row_update: RowUpdate | None = None
        self._shift_cache: dict[tuple, Tensor] = {}
        self.table_ids = list(table_ids) if table_ids is not None else list(range(len(table_sizes)))
        self.row_bounds = [0, *itertools.accumulate(self.table_sizes)]
        offsets = torch.tensor(self.row_bounds, dtype=torch.int64, device=device)
        self.register_buffer("row_offsets", offsets, persistent=False)
        self.weight = nn.Parameter(
            host_memory.empty_table((self.row_bounds[-1], self.hidden or self.dim), device=device)
        )
        if self.hidden:
            self.projection = nn.Parameter(torch.empty(len(self.table_sizes), self.hidden, self.dim, device=device))
        else:
            self.register_parameter("projection", None)
        if seed is not None:
            self.reset_parameters(seed)

    @classmethod
    def from_config(
        cls,
        config: ModelConfig,
        seed: int | None = 0,
        table_ids: Sequence[int] | None = None,
        device: torch.device | str | None = None,
    ) -> EmbeddingTables:
        """The tables a :class:`ModelConfig` describes (or, with ``table_ids``, those of the model's tables)."""
        ids = list(table_ids) if table_ids is not None else list(range(len(config.table_sizes)))
        sizes = [config.table_sizes[t] for t in ids]
        return cls(sizes, config.dim, config.mlet_hidden, config.mlet_init, seed=seed, table_ids=ids, device=device)

    @property
    def num_tables(self) -> int:
        """Number of tables (features) held."""
        return len(self.table_sizes)

    @property
    def is_mlet(self) -> bool:
        """True for two-layer tables."""
        return self.projection is not None

    @property
    def w2(self) -> nn.Parameter:
        """MLET's stacked projections ``W2`` (``T x K x d``); plain tables have none."""
        if self.projection is None:
            raise ValueError("plain tables have no MLET projection")
        return self.projection

    def reset_parameters(self, seed: int) -> None:
        """DLRM's uniform(+-sqrt(1/n)) rows; ``W2`` per ``projection_init``.

        Drawn from CPU generators whatever the device, so that a seed gives the same initial model on CPU and
        GPU; the rows in chunks on all cores (:func:`~mlet.model.init.uniform_rows_`), each chunk copied to a
        GPU as soon as it is drawn.
        """
        with torch.no_grad():
            sizes, ids = self.table_sizes, self.table_ids
            uniform_rows_(
                [(self.table_weight(t), math.sqrt(1.0 / sizes[t]), table_seed(seed, ids[t])) for t in range(len(ids))]
            )
            if not self.is_mlet:
                return
            for t, tid in enumerate(ids):
                gen = torch.Generator().manual_seed(table_seed(seed, tid, 1))
                fill_from_cpu(self.w2[t], functools.partial(self._init_projection, gen=gen))

    def _init_projection(self, w2: Tensor, gen: torch.Generator) -> None:
        init_projection_(w2, self.projection_init, gen)

    def table_weight(self, t: int) -> Tensor:
        """Rows of table ``t`` (a view of the concatenated weight)."""
        return self.weight[self.row_bounds[t] : self.row_bounds[t + 1]]

    def global_indices(self, features: SparseFeatures) -> Tensor:
        """Rows of the concatenated weight for each local id in ``features``."""
        return lookup.global_rows(features, self.row_offsets, self._shift_cache)

    def pooled_rows(self, features: SparseFeatures) -> Tensor:
        """Sum-pooled rows of the (K- or d-wide) weight: ``T x B x width``."""
        if features.num_tables != self.num_tables:
            raise ValueError(f"batch has {features.num_tables} sparse features, the model {self.num_tables} tables")
        ids = self.global_indices(features)
        if self.row_update is not None and self.weight.requires_grad and torch.is_grad_enabled():
            pooled = _LookupWithRowUpdate.apply(
                self.weight,
                ids,
                features.offsets,
                self.row_offsets,
                self.row_update,
                features.one_hot,
                features.weights,
            )
        else:
            pooled = F.embedding_bag(
                ids,
                self.weight,
                features.offsets,
                mode="sum",
                sparse=self.sparse,
                include_last_offset=True,
                per_sample_weights=features.weights,
            )
        return pooled.view(self.num_tables, features.batch_size, -1)

    def forward(self, features: SparseFeatures) -> Tensor:
        """Pooled embeddings, ``B x T x d``, in float32 (also under autocast: see ``mlet/training/precision.py``)."""
        device_type = self.weight.device.type
        if torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                return self.embed(features)
        return self.embed(features)

    def embed(self, features: SparseFeatures) -> Tensor:
        """:meth:`forward`'s lookup and projection."""
        if self._fused_mlet_path(features):
            ids = self.global_indices(features)
            projected = _MletOneHotLookupWithRowUpdate.apply(
                self.weight, self.projection, ids, self.row_offsets, self.row_update
            )
            return projected.transpose(0, 1)
        pooled = self.pooled_rows(features)
        if self.is_mlet:
            pooled = project(pooled, self.w2)
        return pooled.transpose(0, 1)

    def _fused_mlet_path(self, features: SparseFeatures) -> bool:
        """One-hot MLET training step whose row update can be fused with the projection's backward."""
        return (
            self.is_mlet
            and features.one_hot
            and torch.is_grad_enabled()
            and self.weight.requires_grad
            and isinstance(self.row_update, ProjectedRowUpdate)
            and triton_kernels.usable(self.weight)
        )

    @torch.no_grad()
    def collapse_into(self, out: Tensor, chunk_rows: int = 1 << 20) -> None:
        """Write ``W1 @ W2`` (per table) into ``out``, a ``sum(n_t) x d`` tensor.

        Computed in float64 chunks and rounded once, so the collapsed tables
        agree with the two-layer ones to float32 rounding.
        """
        for t in range(self.num_tables):
            w2 = self.w2[t].double()
            for lo in range(self.row_bounds[t], self.row_bounds[t + 1], chunk_rows):
                hi = min(lo + chunk_rows, self.row_bounds[t + 1])
                out[lo:hi] = (self.weight[lo:hi].double() @ w2).to(out.dtype)

    def collapse(self) -> EmbeddingTables:
        """A plain-table module computing the same embeddings (``self`` if already plain)."""
        if not self.is_mlet:
            return self
        plain = EmbeddingTables(
            self.table_sizes,
            self.dim,
            hidden=0,
            seed=None,
            sparse=self.sparse,
            table_ids=self.table_ids,
            device=self.weight.device,
        )
        self.collapse_into(plain.weight.data)
        return plain

    def table_modules(self) -> list[tuple[str, EmbeddingTables]]:
        """``(name, module)`` of each table module whose weight trains with row updates: this one."""
        return [("", self)]

    def parameter_bytes(self) -> int:
        """Bytes of this module's parameters."""
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def inference_bytes(self) -> int:
        """Bytes of the collapsed (inference) tables: ``sum(n_t) * d`` values."""
        return self.weight.shape[0] * self.dim * self.weight.element_size()

    def extra_repr(self) -> str:
        kind = f"mlet K={self.hidden}" if self.is_mlet else "plain"
        return f"tables={self.num_tables}, rows={self.weight.shape[0]}, d={self.dim}, {kind}"


Tables = EmbeddingTables | CompositeTables


def build_tables(config: ModelConfig, seed: int | None = 0, device: torch.device | str | None = None) -> Tables:
    """The tables ``config`` describes: one :class:`EmbeddingTables` (plain or MLET), or for quotient-remainder
    and mixed-dimension tables a ``CompositeTables`` whose groups are :class:`EmbeddingTables`."""
    if not config.is_composite:
        return EmbeddingTables.from_config(config, seed=seed, device=device)

    def group(spec: GroupSpec) -> EmbeddingTables:
        features = [s.feature for s in spec.slots]
        return EmbeddingTables(
            spec.sizes, spec.width, spec.hidden, config.mlet_init, seed=None, table_ids=features, device=device
        )

    return CompositeTables.build(config, group, seed, device)


def table_weight_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """Shapes of the row-updated table weights of ``config``'s model, by parameter name under ``tables.``."""
    if not config.is_composite:
        return {"weight": (sum(config.table_sizes), config.table_width)}
    return {
        f"groups.{g}.weight": (sum(spec.sizes), spec.hidden or spec.width)
        for g, spec in enumerate(CompositeTables.plan_of(config).groups)
    }
