"""Training data held in device memory: loaded once, then every batch is cut on the device.

A processed Criteo-Kaggle set is 45.8M rows of 13 dense float32, 26 int32 ids
and a label: about 7.4 GB, a twentieth of an H200. Held there, a batch is
cut by row number on the device (no host work; one kernel on a GPU), so the
input path stops being the limit of a fast training step (docs/performance.md).
A batch is yielded as its row numbers (:class:`RowsBatch`) and cut when
first read, so a graphed step captures the cut and replays it.

* :class:`DeviceArraySource` holds an :class:`~mlet.data.sources.ArraySource`'s
  rows. Its batches are the host source's, row for row: the same numpy
  permutation of the epoch (made on the host, one epoch ahead, in a
  thread, and copied once per epoch), the same rows sorted within each batch, the same
  limited ids (the id limits are applied while loading).
* :class:`DeviceBatchList` holds every batch of a
  :class:`~mlet.data.sources.RandomSource` (random batches are the same each
  epoch), made once.

:func:`place_data` decides (``--data-on-device auto|on|off``) and loads, with
a progress bar. In a multi-process run each process holds the dense features
and labels of every row (any row can fall in its slice of a batch) but only
its own tables' ids.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from mlet.core.batch import Batch, Batches, BatchShard, OwnedBags, Share, SparseFeatures, StepBatch
from mlet.core.pipeline import ordered_map
from mlet.data.sources import ArraySource, BatchSource, DataBundle, EpochOrders, RandomSource
from mlet.kernels.triton_batch_cut import cut_batch, cut_usable

LOAD_CHUNK_ROWS = 1 << 20
LOAD_WORKERS = 4  # at most: 2 chunks a thread in flight, 160 MB each at Kaggle's 39 columns
PLACEMENTS = ("auto", "on", "off")


class DeviceArraySource:
    """The rows of an :class:`ArraySource` in device memory; the same batches, cut on the device.

    ``ids`` holds the columns of ``tables`` (all tables when ``None``), already limited; ``orders``: the
    host source's permutations (begun already), else new ones.
    """

    def __init__(
        self,
        dense: Tensor,
        ids: Tensor,
        labels: Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int,
        tables: tuple[int, ...] | None = None,
        orders: EpochOrders | None = None,
    ) -> None:
        self.dense, self.ids, self.labels = dense, ids, labels
        self.batch_size, self.shuffle, self.seed, self.tables = int(batch_size), shuffle, seed, tables
        self.num_samples = labels.shape[0]
        self.column_index: dict[tuple[int, ...], Tensor] = {}
        self.device: torch.device | None = labels.device
        self.orders = orders or (EpochOrders(self.num_samples, seed) if shuffle else None)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def order(self, epoch: int) -> Tensor | None:
        """Row order of ``epoch`` on the device (``None``: file order): :meth:`ArraySource.order`'s permutation."""
        if self.orders is None:
            return None
        return torch.from_numpy(self.orders.get(epoch)).to(self.device)

    def batches(self, epoch: int, start: int = 0, workers: int = 1, share: Share | None = None) -> Batches:
        """Batches ``start..`` of ``epoch`` (``workers`` is ignored: there is no host work to spread)."""
        order = self.order(epoch)
        if order is None:  # file order: each batch's rows are a range, sorted already
            rows = list(torch.arange(self.num_samples, device=self.device).split(self.batch_size))
        else:
            rows = batch_rows(order, self.batch_size)
        for index in range(start, len(self)):
            yield RowsBatch(rows[index], self, share)

    def make_batch(self, rows: Tensor) -> Batch:
        """The batch of ``rows`` (all tables)."""
        if cut_usable(rows, self.ids, self.dense, self.labels):  # one kernel, not five
            ids, dense, labels = cut_batch(rows, self.ids, self.dense, self.labels)
            return Batch(dense, SparseFeatures.from_table_major(ids, self.ids.shape[1]), labels)
        features = SparseFeatures.from_ids(self.ids.index_select(0, rows))
        return Batch(self.dense.index_select(0, rows), features, self.labels.index_select(0, rows))

    def columns(self, tables: tuple[int, ...]) -> Tensor:
        """``tables`` as a device index, made once: a list would be copied from the host at every cut,
        which a CUDA graph's capture does not allow."""
        if tables not in self.column_index:
            self.column_index[tables] = torch.tensor(tables, dtype=torch.int64, device=self.device)
        return self.column_index[tables]

    def make_share(self, rows: Tensor, share: Share) -> BatchShard:
        """One process's part of the batch of ``rows``: its samples' dense features and labels, its tables' bags."""
        if self.tables is not None and tuple(share.tables) != self.tables:
            raise ValueError(f"this process holds the ids of tables {self.tables}, the share asks for {share.tables}")
        lo, hi = share.samples(rows.numel())
        # all tables held: keep the share's columns (of the batch's rows only)
        columns = self.columns(share.tables) if self.tables is None else None
        if share.tables and cut_usable(rows, self.ids, self.dense, self.labels):  # one kernel, not five
            ids, dense, labels = cut_batch(rows, self.ids, self.dense, self.labels, columns, (lo, hi))
            owned = SparseFeatures.from_table_major(ids, len(share.tables))
            return BatchShard(dense, OwnedBags(owned, rows.numel()), labels)
        mine = rows[lo:hi]
        ids = self.ids.index_select(0, rows)
        if columns is not None:
            ids = ids.index_select(1, columns)
        features = SparseFeatures.from_ids(ids) if share.tables else None
        return BatchShard(
            self.dense.index_select(0, mine), OwnedBags(features, rows.numel()), self.labels.index_select(0, mine)
        )


@dataclass(eq=False)
class RowsBatch:
    """A batch of a :class:`DeviceArraySource`: its row numbers, cut into tensors when they are first read.

    ``rows`` is the only tensor it holds, so a graphed training step
    (``mlet/training/train_step.py``) that captures a step on a ``RowsBatch``
    captures its cut too: each replay takes only the row numbers as its input.
    The cut is one kernel where the Triton kernels run
    (``mlet/kernels/triton_batch_cut.py``), elsewhere three gathers, the ids'
    transpose and their int64 conversion.
    """

    rows: Tensor
    source: DeviceArraySource
    share: Share | None

    def __post_init__(self) -> None:
        self._cut: Batch | BatchShard | None = None

    def cut(self) -> Batch | BatchShard:
        """The batch (or this process's share of it), cut on first use."""
        if self._cut is None:
            rows, share = self.rows, self.share
            self._cut = self.source.make_batch(rows) if share is None else self.source.make_share(rows, share)
        return self._cut

    @property
    def dense(self) -> Tensor:
        """This process's samples' dense features."""
        return self.cut().dense

    @property
    def sparse(self) -> SparseFeatures | OwnedBags:
        """The bags (a share's: its tables' bags of every sample)."""
        return self.cut().sparse

    @property
    def labels(self) -> Tensor:
        """This process's samples' labels."""
        return self.cut().labels

    @property
    def size(self) -> int:
        """Samples in the (global) batch."""
        return self.rows.numel()

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StepBatch:
        """Itself on its own device (its rows and arrays are there already); elsewhere the batch cut here and
        moved (a quantized copy of a GPU run's model is evaluated on the CPU)."""
        target, here = torch.device(device), self.rows.device
        if target.type == here.type and target.index in (None, here.index):
            return self
        return self.cut().to(device, non_blocking)

    def __deepcopy__(self, memo: dict) -> RowsBatch:
        """A batch of a copy of the rows, from the same arrays (a graph's own input: the arrays are not copied)."""
        return RowsBatch(self.rows.clone(), self.source, self.share)


def batch_rows(order: Tensor, batch_size: int) -> list[Tensor]:
    """Each batch's rows under ``order``, sorted (the rows the host source reads for it): the whole epoch in one
    sort, where a sort per batch cost a few kernels per training step."""
    full = order.numel() // batch_size * batch_size
    rows = list(order[:full].view(-1, batch_size).sort(dim=1).values.unbind(0))
    if full < order.numel():
        rows.append(order[full:].sort().values)
    return rows


class DeviceBatchList:
    """Every batch of a :class:`RandomSource` (the same in every epoch), made once and kept on the device."""

    def __init__(self, batches: list[StepBatch], num_samples: int, device: torch.device, share: Share | None) -> None:
        self.stored, self.num_samples, self.share = batches, num_samples, share
        self.device: torch.device | None = device

    def __len__(self) -> int:
        return len(self.stored)

    def batches(self, epoch: int, start: int = 0, workers: int = 1, share: Share | None = None) -> Batches:
        """The stored batches ``start..``: whole, or the one process's share they were made for."""
        if share != self.share:
            raise ValueError(f"these batches were kept for share {self.share}, not {share}")
        yield from self.stored[start:]


@dataclass(frozen=True)
class Placement:
    """Where the run's data lives, and why (for the log)."""

    on_device: bool
    reason: str


def source_bytes(source: BatchSource, share: Share | None) -> int:
    """Device bytes of ``source``'s data (dense and labels of every row; ids of the share's tables)."""
    if isinstance(source, ArraySource):
        columns = source.ids.shape[1] if share is None else len(share.tables)
        return source.num_samples * (source.dense.shape[1] * 4 + columns * 4 + 4)
    if isinstance(source, RandomSource):
        random = source.random
        bag = random.indices_per_lookup if random.fixed else (random.indices_per_lookup + 1) / 2
        tables = len(random.table_sizes) if share is None else len(share.tables)
        per_sample = random.dense_features * 4 + 4 + tables * (bag * 8 + 8)
        return int(source.num_samples * per_sample)
    return 0


def bundle_sources(bundle: DataBundle) -> list[BatchSource]:
    """The distinct sources of a bundle (the test split may be the validation split)."""
    sources: list[BatchSource] = []
    for source in (bundle.train, bundle.test, bundle.val):
        if source is not None and all(source is not seen for seen in sources):
            sources.append(source)
    return sources


def decide(mode: str, device: torch.device, needed: int, free: int | None, reserve: int) -> Placement:
    """Whether to hold the data on ``device`` under ``--data-on-device=mode``.

    ``auto``: on a GPU when the data fits beside the model (``reserve`` bytes)
    in the free memory; never on a CPU, where host memory already holds it.
    """
    size = f"{needed / 2**30:.2f} GiB of data"
    if mode == "off":
        return Placement(False, f"host memory (--data-on-device=off; {size})")
    if mode == "on":
        return Placement(True, f"{device} memory (--data-on-device=on; {size})")
    if device.type != "cuda":
        return Placement(False, f"host memory (--data-on-device=auto: on a CPU the host holds it already; {size})")
    room = (free or 0) - reserve
    if needed <= room:
        return Placement(
            True, f"{device} memory (--data-on-device=auto: {size} fit in {room / 2**30:.1f} GiB left beside the model)"
        )
    return Placement(
        False, f"host memory (--data-on-device=auto: {size} do not fit in {room / 2**30:.1f} GiB beside the model)"
    )


def place_data(
    bundle: DataBundle, mode: str, device: torch.device, reserve: int, share: Share | None = None, progress: bool = True
) -> tuple[DataBundle, Placement]:
    """The bundle as ``mode`` places it on ``device`` (``reserve``: bytes the model needs there), and why."""
    sources = bundle_sources(bundle)
    needed = sum(source_bytes(source, share) for source in sources)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    placement = decide(mode, device, needed, free, reserve)
    if not placement.on_device:
        return bundle, placement
    moved = {id(source): to_device(source, device, share, progress) for source in sources}
    val = moved[id(bundle.val)] if bundle.val is not None else None
    return replace(bundle, train=moved[id(bundle.train)], test=moved[id(bundle.test)], val=val), placement


def to_device(source: BatchSource, device: torch.device, share: Share | None, progress: bool) -> BatchSource:
    """``source`` held on ``device`` (arrays in chunks, with a progress bar; random batches made once)."""
    if isinstance(source, ArraySource):
        return load_arrays(source, device, share, progress)
    if isinstance(source, RandomSource):
        batches = [batch.to(device) for batch in source.batches(0, share=share)]
        return DeviceBatchList(batches, source.num_samples, device, share)
    raise TypeError(f"cannot hold a {type(source).__name__} on a device")


def load_workers() -> int:
    """Threads that read the chunks of :func:`load_arrays`: the process's cores, at most :data:`LOAD_WORKERS`."""
    return min(LOAD_WORKERS, len(os.sched_getaffinity(0)))


def load_arrays(source: ArraySource, device: torch.device, share: Share | None, progress: bool) -> DeviceArraySource:
    """Copy an :class:`ArraySource`'s rows to ``device`` in chunks of :data:`LOAD_CHUNK_ROWS`, limiting the ids."""
    tables = tuple(share.tables) if share is not None else None
    n, columns = source.num_samples, source.ids.shape[1] if tables is None else len(tables)
    dense = torch.empty((n, source.dense.shape[1]), dtype=torch.float32, device=device)
    ids = torch.empty((n, columns), dtype=torch.int32, device=device)
    labels = torch.empty(n, dtype=torch.float32, device=device)
    bar = tqdm(
        total=n,
        unit="rows",
        unit_scale=True,
        desc=f"loading onto {device}",
        disable=None if progress else True,
        leave=False,
    )

    def read(rows: slice) -> tuple[slice, Tensor, Tensor, Tensor]:
        """A chunk's rows from the memory maps, its ids checked and limited."""
        chunk_ids = torch.from_numpy(source.ids_of(rows, tables).astype(np.int32, copy=False))
        return rows, *source.dense_and_labels(rows), chunk_ids

    chunks = (slice(lo, min(lo + LOAD_CHUNK_ROWS, n)) for lo in range(0, n, LOAD_CHUNK_ROWS))
    # the chunks are read on several threads (numpy's copies and checks release the GIL), in order: a damaged
    # id is reported at its first row, as a single reader would
    for rows, chunk_dense, chunk_labels, chunk_ids in ordered_map(read, chunks, load_workers()):
        dense[rows].copy_(chunk_dense)
        labels[rows].copy_(chunk_labels)
        ids[rows].copy_(chunk_ids)
        bar.update(rows.stop - rows.start)
    bar.close()
    return DeviceArraySource(dense, ids, labels, source.batch_size, source.shuffle, source.seed, tables, source.orders)
