"""Multi-process training: data-parallel MLPs, model-parallel embedding tables.

:class:`DistributedDLRM` is one process's part of the model (its tables, the
replicated MLPs), :class:`EmbeddingExchange` the all-to-all of pooled
embeddings, :class:`ShardedOptimizer` the optimizer that saves and loads
whole-model state, :class:`MultiProcess` the ``Parallel`` of a torchrun run,
and :func:`session` picks it or ``SingleProcess`` from the launch environment.

The design (what each process does, gradient scaling, checkpoints, errors): docs/distributed.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from dlrm_model import DLRM, ModelConfig
from mlet.core.batch import Bar, Batches, OwnedBags, Share, local_sizes
from mlet.core.errors import UserError
from mlet.core.launch import launched_world_size
from mlet.data.sources import BatchSource
from mlet.kernels.triton_kernels import take_rows
from mlet.parallel import process_group
from mlet.parallel.process_group import Comm, SharedError, T, agree, training_device, wait_for_all
from mlet.parallel.sharding import RowLayout, ShardingPlan, table_bytes
from mlet.training.metrics import ctr_metrics, predict
from mlet.training.optimizers import CombinedOptimizer, FusedOptimizer
from mlet.training.processes import Parallel, SingleProcess, feed
from mlet_layers import EmbeddingTables

# Parameters split across ranks (dim 0: table rows, or one projection per table); the rest are replicated.
SHARDED = ("tables.weight", "tables.projection")
GATHER_CHUNK_BYTES = 64 << 20


# -- the embedding exchange ----------------------------------------------------
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


# -- summing the replicated gradients -------------------------------------------
class GradientSum:
    """The MLPs' gradients summed over the processes: one all-reduce of one flat buffer.

    Each process's loss is its share of the global mean, so the sum is the
    gradient of the global mean (DDP would average). The all-reduce starts as
    soon as backward has accumulated the last of these gradients (a
    post-accumulate-grad hook), so that it runs while the tables' backward
    still computes; :meth:`finish`, before the dense update, waits for it.
    Shapes are static, so a CUDA graph can hold it all.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], group: dist.ProcessGroup | None) -> None:
        self.params, self.group = list(params), group
        self.accumulated: set[int] = set()  # ids of the parameters whose gradient this backward has accumulated
        self.pending: PendingSum | None = None
        for param in self.params:
            param.register_post_accumulate_grad_hook(self.accumulate)

    def reset(self) -> None:
        """Forget a backward that ended without :meth:`finish`, and its all-reduce (a new forward begins)."""
        self.accumulated.clear()
        self.pending = None

    def accumulate(self, param: Tensor) -> None:
        """Hook: ``param``'s gradient is complete; the last one starts the all-reduce."""
        self.accumulated.add(id(param))
        if len(self.accumulated) == len(self.params):
            self.accumulated.clear()
            self.start()

    def start(self) -> None:
        """Start the all-reduce of the current gradients (after the current stream's work so far)."""
        if any(p.grad is None for p in self.params):
            raise RuntimeError("a replicated parameter has no gradient: the ranks' all-reduce buffers would differ")
        grads = [cast(Tensor, p.grad) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.pending = PendingSum(grads, flat, dist.all_reduce(flat, group=self.group, async_op=True))

    def finish(self) -> None:
        """Wait for the all-reduce (starting it if backward did not) and put the sums in the gradients it read."""
        if self.pending is None:
            self.start()
        assert self.pending is not None
        pending, self.pending = self.pending, None
        if pending.work is not None:
            pending.work.wait()
        sizes = [g.numel() for g in pending.grads]
        sums = [summed.view_as(grad) for summed, grad in zip(pending.flat.split(sizes), pending.grads)]
        torch._foreach_copy_(pending.grads, sums)  # one kernel for all, instead of a copy per parameter


@dataclass(frozen=True)
class PendingSum:
    """An all-reduce under way: the gradients it read, their flat copy being summed, and its handle."""

    grads: list[Tensor]
    flat: Tensor
    work: dist.Work | None


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

    State tensors shaped like a sharded parameter (Adagrad's ``sum``, Adam's
    moments) are gathered row by row like the parameter; small entries
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
        rows = {k: v for k, v in entries.items() if torch.is_tensor(v) and v.shape == param.shape}
        small = {
            k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in entries.items() if k not in rows
        }  # pickled to every rank
        inventory: list = [None] * comm.world_size
        dist.all_gather_object(inventory, (sorted(rows), small, param.shape[0] > 0))
        owners = [(keys, values) for keys, values, has_rows in inventory if has_rows]
        keys = sorted({k for keys, _ in owners for k in keys})
        if any(set(keys) - set(owner_keys) for owner_keys, _ in owners):
            raise RuntimeError(f"optimizer state of {name} differs between ranks: {[sorted(k) for k, _ in owners]}")
        merged: dict = next((values for _, values in owners if values), {})
        for key in keys:
            local = rows.get(key, param.detach()[:0])  # a rank without rows may hold no such state
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
        if (
            torch.is_tensor(value)
            and value.dim() == param.dim()
            and value.shape[0] == layout.full_rows
            and value.shape[1:] == param.shape[1:]
        ):
            return layout.take(value, self.model.comm.rank)
        return value


# -- the multi-process run -----------------------------------------------------
class MultiProcess:
    """A run over ``torch.distributed``: sharded tables, replicated MLPs (see the module docstring).

    Implements :class:`mlet.training.processes.Parallel`, as ``SingleProcess`` does for one process.
    """

    def __init__(self, comm: Comm, optimizer: str, backend: str) -> None:
        self.comm, self.optimizer, self.backend = comm, optimizer, backend
        self.rank, self.world_size, self.is_main, self.device = comm.rank, comm.world_size, comm.is_main, comm.device
        self.layout: tuple[ModelConfig, ShardingPlan] | None = None  # set by build_model

    @property
    def config(self) -> ModelConfig:
        """The model's architecture (known once the model is built)."""
        return self.built()[0]

    @property
    def plan(self) -> ShardingPlan:
        """Which rank owns which table (known once the model is built)."""
        return self.built()[1]

    def built(self) -> tuple[ModelConfig, ShardingPlan]:
        """The model config and sharding plan of :meth:`build_model`."""
        if self.layout is None:
            raise RuntimeError("the sharding plan is made by build_model; build the model first")
        return self.layout

    def build_model(self, config: ModelConfig, seed: int) -> DistributedDLRM:
        """This rank's part of the model, by a byte-balanced plan."""
        self.layout = (config, ShardingPlan.balanced(table_bytes(config, self.optimizer), self.world_size))
        return DistributedDLRM(config, self.comm, self.plan, seed)

    def shard_optimizer(self, optimizer: CombinedOptimizer | FusedOptimizer, model: DLRM) -> ShardedOptimizer:
        """The optimizer, saving and loading state in single-process layout."""
        assert isinstance(model, DistributedDLRM), "a multi-process run shards its model"
        return ShardedOptimizer(optimizer, model)

    def model_from_checkpoint(self, ckpt: dict) -> DistributedDLRM:
        """This rank's part of the model a checkpoint holds (sharded by a new plan)."""
        model = self.build_model(ModelConfig.from_dict(ckpt["model_config"]), seed=0)
        try:
            model.load_state_dict(ckpt["model"])
        except (RuntimeError, ValueError) as error:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            raise UserError(
                "the weights do not fit the checkpoint's model_config "
                f"({lines[-1] if lines else 'state_dict mismatch'})"
            ) from None
        return model

    @property
    def share(self) -> Share:
        """What this process needs of each global batch: its samples, its tables' bags."""
        return Share(self.rank, self.world_size, tuple(self.plan.tables_of_rank[self.rank]))

    def batches(self, source: BatchSource, epoch: int, start: int = 0, workers: int = 1) -> Batches:
        """This process's share of each global batch, read as such from ``source`` (no process reads it all)."""
        return source.batches(epoch, start, workers, share=self.share)

    def all_sum(self, value: Tensor | float) -> Tensor:
        """Sum of ``value`` over the ranks (e.g. the losses' shares); a collective."""
        total = torch.as_tensor(value, device=self.device).detach().clone()
        dist.all_reduce(total, group=self.comm.group)
        return total

    def evaluate(self, model: DLRM, source: BatchSource, bf16: bool, workers: int, bar: Bar) -> dict:
        """CTR metrics over the whole test set: predictions are gathered in sample order and
        the metrics computed once, on rank 0, then shared with every rank (``bar``: wraps this process's
        shares)."""
        sizes: list[int] = []

        def counted(shares: Batches) -> Batches:
            for batch in shares:
                sizes.append(batch.size)
                yield batch

        shares = feed(source, counted(self.batches(source, 0, 0, workers)), self.device)
        probs, labels = predict(model, bar(shares), self.device, bf16)
        gathered = self.gather_samples(np.stack([probs, labels]), sizes)
        result = [ctr_metrics(gathered[0], gathered[1]) if gathered is not None else None]
        dist.broadcast_object_list(result, src=0)
        return dict(result[0] or {})

    def gather_samples(self, local: np.ndarray, batch_sizes: Sequence[int]) -> np.ndarray | None:
        """Per-sample rows (``k x n_local``) of every rank, in global sample order, on rank 0."""
        shares = [local_sizes(size, self.world_size) for size in batch_sizes]
        counts = [sum(share[r] for share in shares) for r in range(self.world_size)]
        padded = torch.zeros(local.shape[0], max(counts), dtype=torch.float64)
        padded[:, : local.shape[1]] = torch.from_numpy(local)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)] if self.is_main else None
        dist.gather(padded, parts, dst=0)
        if parts is None:
            return None
        offsets, pieces = [0] * self.world_size, []
        for share in shares:
            for rank, count in enumerate(share):
                pieces.append(parts[rank][:, offsets[rank] : offsets[rank] + count])
                offsets[rank] += count
        return torch.cat(pieces, dim=1).numpy()

    def agree(self, step: Callable[[], T]) -> T:
        """Run ``step`` on every rank; a failure on any stops all (see :func:`agree`)."""
        return agree(step)

    def summary(self) -> list[str]:
        """The plan line and the exchange line printed at the start of the run."""
        config = self.config
        per_sample = len(config.table_sizes) * config.dim * 4
        crossing = per_sample * (self.world_size - 1) / self.world_size
        mlet = (
            f"; MLET tables are projected K={config.mlet_hidden} -> d={config.dim} on their owner "
            f"(K-wide vectors would be {per_sample * config.mlet_hidden // config.dim:,} B/sample)"
            if config.mlet_hidden
            else ""
        )
        return [
            f"processes: {self.world_size} ({self.backend}, {self.device.type}); "
            "MLPs data-parallel (gradients summed by one all-reduce), tables model-parallel",
            self.plan.describe(config.table_sizes, self.optimizer),
            f"embedding exchange: all-to-all of d={config.dim} pooled vectors, "
            f"{len(config.table_sizes)} x {config.dim} x 4 B = {per_sample:,} B/sample forward and the same backward,"
            f" {crossing:,.0f} B/sample of it between processes{mlet}",
        ]

    def record(self) -> dict:
        """The layout, for checkpoints and results."""
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "plan": self.plan.to_dict() if self.layout else None,
        }


@contextmanager
def session(use_gpu: bool, backend: str | None, timeout_s: int, optimizer: str) -> Iterator[Parallel]:
    """The run's processes, from torchrun's environment (one process without it).

    ``backend`` is ``--dist-backend`` (``None``: nccl on GPUs, gloo on CPUs);
    ``optimizer`` sizes the tables' state for the sharding plan.

    A multi-process run ends with every rank waiting for the others, after
    success and after an error every rank shares; after any other error this
    rank leaves at once (a peer may be blocked in a collective with it): it
    exits, and torchrun stops the rest. One session per process: the process
    groups stay up until the process ends (see :func:`exit_process`).
    """
    if launched_world_size() <= 1:
        yield SingleProcess(torch.device("cuda" if use_gpu else "cpu"))
        return
    process_group.start(timeout_s)
    device = agree(lambda: training_device(backend, use_gpu))
    # NCCL on GPUs gets a group of its own; gloo training shares the default group
    group = dist.new_group(backend="nccl", timeout=timedelta(seconds=timeout_s)) if device.type == "cuda" else None
    if group is not None:  # NCCL connects lazily, at its first collective: here, not inside the first training step
        dist.all_reduce(torch.zeros(1, device=device), group=group)
    comm = Comm(dist.get_rank(), dist.get_world_size(), device, group)
    try:
        yield MultiProcess(comm, optimizer, "nccl" if group is not None else "gloo")
    except SharedError:
        wait_for_all(comm)
        raise
    wait_for_all(comm)
