"""One process's part of a multi-process model: its tables, the replicated MLPs, and an optimizer whose
checkpoints speak the single-process layout.

:class:`DistributedDLRM` runs its tables' lookups, the embedding exchange (``exchange.py``) and the MLPs;
:class:`ShardedOptimizer` saves and loads whole-model state; :func:`gather_rows` collects a sharded tensor on
rank 0. The design (what each process does, gradient scaling, checkpoints): docs/distributed.md.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from dlrm_model import DLRM, ModelConfig
from mlet.core.batch import OwnedBags
from mlet.parallel.exchange import EmbeddingExchange, ExchangeLayout
from mlet.parallel.gradient_sum import GradientSum
from mlet.parallel.process_group import Comm
from mlet.parallel.sharding import RowLayout, ShardingPlan
from mlet.training.optimizers import CombinedOptimizer, FusedOptimizer
from mlet_layers import EmbeddingTables

# Parameters split across ranks (dim 0: table rows, or one projection per table); the rest are replicated.
SHARDED = ("tables.weight", "tables.projection")
GATHER_CHUNK_BYTES = 64 << 20


# -- gathering and splitting sharded tensors -----------------------------------
def gather_rows(local: Tensor, layout: RowLayout, comm: Comm) -> Tensor | None:
    """The full tensor on rank 0 (on the CPU), from every rank's rows; ``None`` elsewhere.

    Every rank must call it. Rows travel over the (gloo) default group in chunks of at most
    ``GATHER_CHUNK_BYTES``, so no device needs room for more than its own shard.
    """
    trailing = tuple(local.shape[1:])
    row_bytes = max(1, int(np.prod(trailing, dtype=np.int64)) * local.element_size())
    chunk = max(1, GATHER_CHUNK_BYTES // row_bytes)
    full = torch.empty((layout.full_rows, *trailing), dtype=local.dtype) if comm.is_main else None
    for rank, segments in enumerate(layout.segments):
        if rank != comm.rank and not comm.is_main:
            continue
        offset = 0
        for start, count in segments:
            for lo in range(0, count, chunk):
                hi = min(count, lo + chunk)
                if full is None:  # not rank 0: send this rank's rows
                    dist.send(local[offset + lo : offset + hi].detach().to("cpu").contiguous(), dst=0)
                elif rank == comm.rank:
                    full[start + lo : start + hi] = local[offset + lo : offset + hi].detach().to("cpu")
                else:
                    dist.recv(full[start + lo : start + hi], src=rank)
            offset += count
    return full


def row_state(value: object, param: Tensor, rows: int) -> bool:
    """Whether an optimizer state entry holds, for each of ``rows`` rows of ``param`` (this rank's, or the full
    layout's), a row like the parameter's (per element) or one value (row-wise Adagrad's ``momentum``)."""
    if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != rows:
        return False
    return value.shape[1:] == param.shape[1:] or value.dim() == 1


# -- the sharded model ---------------------------------------------------------
class DistributedDLRM(DLRM):
    """DLRM whose tables are sharded over the ranks and whose MLPs are replicated.

    Parameter names are those of :class:`DLRM` (``tables.weight`` holds this
    rank's tables only). :meth:`state_dict` and :meth:`load_state_dict` speak
    the single-process layout, so checkpoints move between world sizes.
    """

    tables: EmbeddingTables

    def __init__(
        self, config: ModelConfig, comm: Comm, plan: ShardingPlan, seed: int = 0, tables: EmbeddingTables | None = None
    ) -> None:
        mine = plan.tables_of_rank[comm.rank]
        if tables is None:
            tables = EmbeddingTables.from_config(config, seed=seed, table_ids=mine, device=comm.device)
        super().__init__(config, seed=seed, device=comm.device, tables=tables)
        self.comm, self.plan = comm, plan
        self.row_layouts = {
            "tables.weight": RowLayout.of_tables(plan, config.table_sizes),
            "tables.projection": RowLayout.of_tables(plan, [1] * len(config.table_sizes)),
        }
        self.layouts: dict[int, ExchangeLayout] = {}
        self.gradient_sum = self.sum_of_replicated_gradients()
        self.exchange_stream = torch.cuda.Stream(comm.device) if comm.device.type == "cuda" else None

    def exchange_layout(self, batch_size: int) -> ExchangeLayout:
        """The all-to-all splits for a global batch of ``batch_size`` (cached)."""
        if batch_size not in self.layouts:
            comm = self.comm
            self.layouts[batch_size] = ExchangeLayout.of(
                batch_size, self.plan.tables_of_rank, comm.rank, self.config.dim, comm.device, comm.group
            )
        return self.layouts[batch_size]

    def forward(self, dense: Tensor, sparse: OwnedBags) -> Tensor:  # type: ignore[override]  # a rank's bags, not SparseFeatures
        """Logits of this rank's samples: ``dense`` holds them, ``sparse`` the owned tables' bags of all.

        The bottom MLP runs before the exchange, so that backward (latest first)
        starts the reverse all-to-all before the bottom MLP's backward, and the
        gradients' all-reduce (:class:`GradientSum`) queues behind it.
        """
        self.gradient_sum.reset()
        # table-major, as the tables look the rows up: the exchange's row gathers reorder it, and its
        # gradient comes back in this layout (no transposing copy either way)
        pooled = (
            self.tables(sparse.features).transpose(0, 1)
            if self.tables.num_tables
            else self.no_tables(dense, sparse.batch_size)
        )
        ready = torch.cuda.current_stream(self.comm.device).record_event() if self.exchange_stream is not None else None
        features = self.bottom_features(dense)
        return self.head(features, self.exchange(pooled, self.exchange_layout(sparse.batch_size), ready))

    def exchange(self, pooled: Tensor, layout: ExchangeLayout, pooled_ready: torch.cuda.Event | None) -> Tensor:
        """The all-to-all of the pooled vectors (:class:`EmbeddingExchange`); on a GPU on a stream of its own,
        which starts at ``pooled_ready`` (the event after the tables, before the bottom MLP) and which the
        current stream then waits for."""
        if self.exchange_stream is None or pooled_ready is None:
            return EmbeddingExchange.apply(pooled, layout)
        # Its backward runs on the same stream (autograd's rule), beside the bottom MLP's backward. No tensor
        # crosses the streams unguarded: `pooled` is referenced until the current stream has waited for the
        # exchange, and the received vectors are first read on the current stream after that wait.
        with torch.cuda.stream(self.exchange_stream):
            self.exchange_stream.wait_event(pooled_ready)
            embedded = EmbeddingExchange.apply(pooled, layout)
        torch.cuda.current_stream(self.comm.device).wait_stream(self.exchange_stream)
        return embedded

    def no_tables(self, dense: Tensor, batch_size: int) -> Tensor:
        """What a rank without tables sends: nothing, but in the autograd graph, so its backward all-to-all runs."""
        return dense.new_zeros(0, batch_size, self.config.dim).requires_grad_()

    def state_dict(self) -> dict[str, Tensor]:  # type: ignore[override]
        """The whole model in single-process layout, on the CPU, on rank 0 (``{}`` elsewhere).

        A collective: every rank must call it.
        """
        full = {}
        for name, tensor in super().state_dict().items():
            value = gather_rows(tensor, self.row_layouts[name], self.comm) if name in SHARDED else tensor.detach().cpu()
            if value is not None and self.comm.is_main:
                full[name] = value
        return full

    def load_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Load a single-process-layout state dict, keeping this rank's tables."""
        local = {}
        for name, tensor in state_dict.items():
            try:
                local[name] = self.row_layouts[name].take(tensor, self.comm.rank) if name in SHARDED else tensor
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
        loaded = super().load_state_dict(local, strict=strict, assign=assign)
        if assign:  # new parameter objects: the gradient hooks must follow them
            self.gradient_sum = self.sum_of_replicated_gradients()
        return loaded

    def sum_of_replicated_gradients(self) -> GradientSum:
        """The all-reduce of the MLPs' gradients, hooked to the current parameters."""
        return GradientSum([p for name, p in self.named_parameters() if name not in SHARDED], self.comm.group)

    def collapse(self) -> DistributedDLRM:
        """The same model with each owned MLET table folded into a plain one (no communication)."""
        plain = DistributedDLRM(self.config.collapsed(), self.comm, self.plan, tables=self.tables.collapse())
        plain.bottom.load_state_dict(self.bottom.state_dict())
        plain.top.load_state_dict(self.top.state_dict())
        return plain


class ShardedOptimizer:
    """The optimizer of a :class:`DistributedDLRM` (torch's or the fused one) whose saved
    state is in single-process layout.

    State tensors with a sharded parameter's rows (Adagrad's ``sum``, Adam's
    moments: its shape; row-wise Adagrad's ``momentum``: one value a row) are
    gathered row by row like the parameter; small entries
    (``step``) come from a rank that owns tables; replicated parameters' state
    is rank 0's (the summed gradients keep the ranks equal). Stepping is the inner optimizer's.
    """

    def __init__(self, inner: CombinedOptimizer | FusedOptimizer, model: DistributedDLRM) -> None:
        self.inner, self.model, self.name = inner, model, inner.name

    @property
    def param_groups(self) -> list[dict]:
        """The inner optimizer's parameter groups."""
        return self.inner.param_groups

    def zero_grad(self) -> None:
        """Drop the gradients."""
        self.inner.zero_grad()

    def step(self) -> None:
        """Sum the replicated gradients over the ranks, then update this rank's parameters."""
        self.model.gradient_sum.finish()
        self.inner.step()

    def set_lr(self, lr: float) -> None:
        """Set the learning rate."""
        self.inner.set_lr(lr)

    def compile_dense_update(self, mode: str) -> None:
        """Compile the inner (fused) optimizer's dense update (``--compile``)."""
        assert isinstance(self.inner, FusedOptimizer), "--compile needs the fused embedding update"
        self.inner.compile_dense_update(mode)

    def state_dict(self) -> dict:
        """All state on rank 0 (``state`` is empty elsewhere); a collective."""
        local = self.inner.state_dict()["state"]
        state = {
            name: {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in entries.items()}
            for name, entries in local.items()
            if name not in SHARDED
        }
        params = dict(self.model.named_parameters())
        for name in SHARDED:
            if name in params:
                gathered = self.gather_state(name, params[name], local.get(name, {}))
                if gathered:
                    state[name] = gathered
        return {"optimizer": self.name, "state": state if self.model.comm.is_main else {}}

    def gather_state(self, name: str, param: Tensor, entries: dict) -> dict:
        """One sharded parameter's state, gathered (on rank 0)."""
        comm = self.model.comm
        rows = {k: v for k, v in entries.items() if row_state(v, param, param.shape[0])}
        small = {
            k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in entries.items() if k not in rows
        }  # pickled to every rank
        trailing = {k: tuple(v.shape[1:]) for k, v in rows.items()}
        inventory: list = [None] * comm.world_size
        dist.all_gather_object(inventory, (trailing, small, param.shape[0] > 0))
        owners = [(shapes, values) for shapes, values, has_rows in inventory if has_rows]
        keys = sorted({k for shapes, _ in owners for k in shapes})
        if any(set(keys) - set(shapes) for shapes, _ in owners):
            raise RuntimeError(f"optimizer state of {name} differs between ranks: {[sorted(s) for s, _ in owners]}")
        merged: dict = next((values for _, values in owners if values), {})
        shapes: dict[str, tuple[int, ...]] = next((shapes for shapes, _ in owners), {})
        for key in keys:
            local = rows.get(key, param.new_empty((0, *shapes[key])))  # a rank without rows may hold no such state
            merged = {**merged, key: gather_rows(local, self.model.row_layouts[name], comm)}
        return merged

    def load_state_dict(self, saved: dict) -> None:
        """Restore single-process-layout state, keeping this rank's rows of sharded parameters."""
        params = dict(self.model.named_parameters())
        state = {}
        for name, entries in saved.get("state", {}).items():
            layout = self.model.row_layouts.get(name) if name in SHARDED and name in params else None
            state[name] = {k: self.split(v, layout, params[name]) for k, v in entries.items()} if layout else entries
        self.inner.load_state_dict({**saved, "state": state})

    def split(self, value: object, layout: RowLayout, param: Tensor) -> object:
        """This rank's rows of a full-layout state entry; other entries unchanged."""
        if isinstance(value, Tensor) and row_state(value, param, layout.full_rows):
            return layout.take(value, self.model.comm.rank)
        return value
