"""A mini-batch as every layer sees it: dense features, categorical bags, labels.

The bottom of the project: data sources make these, models and training
steps consume them. In a multi-process run each process takes a
:class:`Share` of every global batch, a :class:`BatchShard`. Nothing here
imports the rest of the project.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor


@dataclass
class SparseFeatures:
    """A batch of categorical features as bags of local row ids.

    ``indices`` holds every bag's row ids, table-major; bag ``t * B + b`` (table
    ``t``, sample ``b``) is ``indices[offsets[t * B + b] : offsets[t * B + b + 1]]``.
    ``offsets`` therefore has ``T * B + 1`` entries and ends with ``len(indices)``.
    ``one_hot`` promises exactly one id per bag (``offsets`` is ``0..T*B``),
    which lets the backward skip mapping ids to bags. ``max_bag``, where the
    source knows it, is its promise that no bag holds more ids (random data's
    ``--num-indices-per-lookup``). ``weights``, when given, scales each id's
    row in its bag's sum: :meth:`padded` gives padding ids weight 0. The plain,
    MLET and composite tables read it; quantized serving tables refuse it.
    """

    indices: Tensor
    offsets: Tensor
    num_tables: int
    one_hot: bool = False
    max_bag: int | None = None
    weights: Tensor | None = None

    def __post_init__(self) -> None:
        if self.one_hot and self.weights is not None:
            raise ValueError("one-hot bags take no per-id weights (the one-hot lookups do not read them)")

    @property
    def batch_size(self) -> int:
        """Number of samples in the batch."""
        return (self.offsets.numel() - 1) // self.num_tables

    @classmethod
    def from_ids(cls, ids: Tensor) -> SparseFeatures:
        """One id per table and sample: ``ids`` is ``B x T`` (any integer dtype)."""
        indices = ids.t().contiguous().view(-1).long()  # 6x faster on CPU than reshape-then-convert
        return cls.from_table_major(indices, ids.shape[1])

    @classmethod
    def from_table_major(cls, indices: Tensor, num_tables: int) -> SparseFeatures:
        """One id per table and sample, ``indices`` (int64) table by table: table ``t``'s ids of a batch of
        ``B`` samples are ``indices[t * B : (t + 1) * B]``."""
        return cls(indices, even_offsets(indices.numel(), indices.device), num_tables, one_hot=True)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SparseFeatures:
        """Copy to ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> SparseFeatures:
        """Page-locked copy, for asynchronous host-to-device transfers."""
        return self._map(Tensor.pin_memory)

    def _map(self, fn: Callable[[Tensor], Tensor]) -> SparseFeatures:
        """The same bags with ``fn`` applied to each tensor."""
        weights = None if self.weights is None else fn(self.weights)
        return SparseFeatures(fn(self.indices), fn(self.offsets), self.num_tables, self.one_hot, self.max_bag, weights)

    def padded(self) -> SparseFeatures:
        """The same bags, each padded to ``max_bag`` ids with ids of weight 0.

        Bag ``k`` takes positions ``k * max_bag ..``: its own ids first, then
        copies of its first id (id 0 for an empty bag) of weight 0, whose sum
        adds rows times 0 and whose gradients are 0 (a no-op for the fused SGD
        and Adagrad row updates). Batches of one size padded so have one shape
        whatever their ids' total, so a CUDA graph captured on one replays the
        others (``mlet/training/train_step.py``); every bag the same length
        also keeps the lookup's work even across bags. Nothing is read back
        to the host: a bag longer than ``max_bag`` (a source breaking its
        promise) fails an asynchronous check on the device. On a GPU,
        ``mlet.model.lookup.padded`` makes the same in one kernel.
        """
        width = self.checked_max_bag()
        bags, count, device = self.offsets.numel() - 1, self.indices.numel(), self.indices.device
        starts, lengths = self.offsets[:-1], self.offsets.diff()
        bag_of_id = torch.arange(bags, device=device).repeat_interleave(lengths, output_size=count)
        rank_in_bag = torch.arange(count, device=device) - starts.index_select(0, bag_of_id)
        position = bag_of_id * width + rank_in_bag
        # a bag's slots start as copies of its first id (id 0 if it is empty): the padding adds no rows to update
        first = self.indices.index_select(0, starts.clamp(max=count - 1)) if count else torch.zeros_like(lengths)
        filler = torch.where(lengths > 0, first, 0).repeat_interleave(width, output_size=bags * width)
        indices = filler.index_copy_(0, position, self.indices)
        real = torch.ones(count, dtype=torch.float32, device=device) if self.weights is None else self.weights
        weights = torch.zeros(bags * width, dtype=torch.float32, device=device).index_copy_(0, position, real)
        return self.padded_as(indices, weights, width)

    def checked_max_bag(self) -> int:
        """``max_bag``, required, with an asynchronous device-side check that no bag is longer."""
        if self.max_bag is None:
            raise ValueError("padding bags needs max_bag, the most ids a bag of the source holds")
        torch._assert_async(
            (self.offsets.diff() <= self.max_bag).all(), f"a bag holds more than max_bag={self.max_bag} ids"
        )
        return self.max_bag

    def padded_as(self, indices: Tensor, weights: Tensor, width: int) -> SparseFeatures:
        """These bags in :meth:`padded`'s layout, given its ``indices`` and ``weights`` (``width`` ids a bag)."""
        bags = self.offsets.numel() - 1
        return SparseFeatures(
            indices, even_offsets(bags, indices.device, width), self.num_tables, False, width, weights
        )

    def table_boundaries(self) -> Tensor:
        """``T + 1`` positions in ``indices`` where each table's ids start (and the end)."""
        return self.offsets[:: self.batch_size]

    def select_tables(self, tables: Sequence[int]) -> SparseFeatures:
        """The bags of a subset of tables, in the order given (used for sharding)."""
        bounds = self.table_boundaries().tolist()
        batch = self.batch_size
        index_parts, weight_parts, offset_parts, start = [], [], [], 0
        for t in tables:
            lo, hi = bounds[t], bounds[t + 1]
            index_parts.append(self.indices[lo:hi])
            if self.weights is not None:
                weight_parts.append(self.weights[lo:hi])
            offset_parts.append(self.offsets[t * batch : (t + 1) * batch] - lo + start)
            start += hi - lo
        indices = torch.cat(index_parts) if index_parts else self.indices[:0]
        weights = None
        if self.weights is not None:
            weights = torch.cat(weight_parts) if weight_parts else self.weights[:0]
        end = torch.tensor([start], dtype=self.offsets.dtype, device=self.offsets.device)
        offsets = torch.cat([*offset_parts, end])
        return SparseFeatures(indices, offsets, len(tables), self.one_hot, self.max_bag, weights)


@dataclass
class Batch:
    """One mini-batch: dense features (B x D float32), sparse bags, labels (B float32)."""

    dense: torch.Tensor
    sparse: SparseFeatures
    labels: torch.Tensor

    @property
    def size(self) -> int:
        """Number of samples."""
        return self.labels.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Copy to ``device``."""
        return Batch(
            self.dense.to(device, non_blocking=non_blocking),
            self.sparse.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        """Page-locked copy for asynchronous copies to a GPU."""
        return Batch(self.dense.pin_memory(), self.sparse.pin_memory(), self.labels.pin_memory())


def local_sizes(batch_size: int, world_size: int) -> list[int]:
    """Samples of a global batch that each process takes: as even as possible, the first ones one more."""
    base, extra = divmod(batch_size, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def sample_range(batch_size: int, world_size: int, rank: int) -> tuple[int, int]:
    """``[lo, hi)``: the samples of a global batch that belong to ``rank``."""
    sizes = local_sizes(batch_size, world_size)
    lo = sum(sizes[:rank])
    return lo, lo + sizes[rank]


@functools.lru_cache(maxsize=16)
def even_offsets(bags: int, device: torch.device, width: int = 1) -> Tensor:
    """``0, width, ..., bags * width``: the offsets of ``bags`` bags of ``width`` ids each (1: one-hot), made
    once per size and device and shared (read only) by every batch of that shape; on a GPU, a kernel and a
    graph input copy fewer per step."""
    return torch.arange(bags + 1, dtype=torch.int64, device=device) * width


@dataclass(frozen=True)
class Share:
    """What one process of a multi-process run needs of each global batch: its contiguous
    slice of the samples (``rank`` of ``world_size``) and, for all samples, the bags of the
    ``tables`` it owns (global table numbers, in its order). Sources that can read only
    this much yield :class:`BatchShard` objects."""

    rank: int
    world_size: int
    tables: tuple[int, ...]

    def samples(self, batch_size: int) -> tuple[int, int]:
        """``[lo, hi)`` of this process's samples in a global batch of ``batch_size``."""
        return sample_range(batch_size, self.world_size, self.rank)

    def of(self, batch: Batch) -> BatchShard:
        """This process's share of a whole batch (what a source that reads everything gives)."""
        lo, hi = self.samples(batch.size)
        features = batch.sparse.select_tables(self.tables) if self.tables else None
        return BatchShard(batch.dense[lo:hi], OwnedBags(features, batch.size), batch.labels[lo:hi])


@dataclass
class OwnedBags:
    """The bags of the tables a rank owns, for every sample of the global batch.

    ``features`` is ``None`` on a rank that owns no table.
    """

    features: SparseFeatures | None
    batch_size: int

    def to(self, device: torch.device | str, non_blocking: bool = False) -> OwnedBags:
        """Copy to ``device``."""
        moved = None if self.features is None else self.features.to(device, non_blocking=non_blocking)
        return OwnedBags(moved, self.batch_size)

    def pin_memory(self) -> OwnedBags:
        """Page-locked copy."""
        return OwnedBags(None if self.features is None else self.features.pin_memory(), self.batch_size)


@dataclass
class BatchShard:
    """One rank's share of a global batch.

    ``dense`` and ``labels`` hold this rank's samples; ``sparse`` the owned
    tables' bags for all samples. ``size`` is the number of samples in the
    *global* batch, as :attr:`mlet.core.batch.Batch.size`, so code that counts
    samples or divides the loss by ``batch.size`` works on either.
    """

    dense: Tensor
    sparse: OwnedBags
    labels: Tensor

    @property
    def size(self) -> int:
        """Samples in the global batch this shard belongs to."""
        return self.sparse.batch_size

    def to(self, device: torch.device | str, non_blocking: bool = False) -> BatchShard:
        """Copy to ``device``."""
        return BatchShard(
            self.dense.to(device, non_blocking=non_blocking),
            self.sparse.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> BatchShard:
        """Page-locked copy for asynchronous copies to a GPU."""
        return BatchShard(self.dense.pin_memory(), self.sparse.pin_memory(), self.labels.pin_memory())


class StepBatch(Protocol):
    """What a training step and evaluation need of a batch: a :class:`Batch`, one process's share of
    a global batch (:class:`BatchShard`, whose ``sparse`` holds the owned tables' bags), or either one
    cut from device-resident rows when first read (``mlet.data.device.RowsBatch``)."""

    @property
    def dense(self) -> Tensor:
        """This process's samples' dense features."""
        ...

    @property
    def sparse(self) -> Any:
        """The bags (:class:`SparseFeatures`, or a share's :class:`OwnedBags`)."""
        ...

    @property
    def labels(self) -> Tensor:
        """This process's samples' labels."""
        ...

    @property
    def size(self) -> int:
        """Samples in the (global) batch."""
        ...

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StepBatch:
        """Copy to ``device``."""
        ...


Batches = Generator[StepBatch, None, None]
Bar = Callable[[Batches], Batches]  # what the batches of an evaluation pass through on their way (a progress bar)
"""What batch sources yield: a generator (stopping early closes it, and what it started)."""
