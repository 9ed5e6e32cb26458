"""Batches and where they come from: random, synthetic, and real data sets.

A *batch source* has a length (batches per epoch) and ``batches(epoch, start)``,
which yields :class:`Batch` objects from batch ``start`` of ``epoch`` on; the
order depends only on the seed and the epoch, so a resumed run sees exactly
the batches the interrupted one would have.

:func:`build_data` makes the sources a :class:`~mlet.core.config.DataConfig`
describes. Real data sets (``--data-generation=dataset``) are read by
:mod:`~mlet.data.preprocessing.raw_data`, preprocessed and cached by
:mod:`~mlet.data.preprocessing.cache`, and trained on from the cached memory
maps through :class:`ArraySource`. See docs/data.md.
"""

from __future__ import annotations

import functools
import math
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

from mlet.core.batch import Batch, Batches, BatchShard, OwnedBags, Share, SparseFeatures
from mlet.core.config import DataConfig, DatasetConfig, RandomConfig
from mlet.core.errors import UserError
from mlet.core.launch import is_main_process, log
from mlet.core.pipeline import ordered_map
from mlet.data.flags import table_size_mismatch
from mlet.data.preprocessing.cache import files_record, prepare_dataset
from mlet.data.preprocessing.layouts import categorical_features
from mlet.data.preprocessing.passes import VocabularyCheck
from mlet.data.preprocessing.splits import Log, dense_transform
from mlet.data.preprocessing.vocabulary import IdBounds, IdLimits
from mlet.data.synthetic import ClickModel, ClickModelConfig, RandomBatches

TRAIN, TEST, VAL = 0, 1, 2


class BatchSource(Protocol):
    """Batches of one split: a length (batches per epoch) and the batches of an epoch from any batch on.

    ``device`` is where the batches are made: ``None`` for host memory (the
    training loop pins and copies them), a device for data held there.
    """

    num_samples: int
    device: torch.device | None

    def __len__(self) -> int: ...

    def batches(self, epoch: int, start: int = 0, workers: int = 1, share: Share | None = None) -> Batches:
        """Batches ``start..`` of ``epoch``, the same for the same seed and epoch, assembled by ``workers``
        threads; with ``share``, only that process's part of each (a :class:`BatchShard`)."""
        ...


class EpochOrders:
    """Each epoch's row permutation (seeded by ``(seed, epoch)``), made in a background thread one epoch ahead.

    numpy's permutation of a Kaggle-size training split takes about half a
    second: made when the epoch starts, it would stall the first batch of
    every epoch. The first epoch's starts when the source is made (while the
    model is built), each next one when its predecessor is asked for.

    They are made one at a time by a daemon thread: the process does not wait
    for it at exit, where the order being made is one nobody will ask for (the
    epoch after a run's last; at Criteo Terabyte's size minutes of work, and a
    SIGTERM then found the process stuck in the interpreter's exit).
    """

    def __init__(self, num_rows: int, seed: int, days: Sequence[int] | None = None) -> None:
        self.num_rows, self.seed, self.days = num_rows, seed, days
        self.pending: dict[int, Future[np.ndarray]] = {}
        self.queue: queue.SimpleQueue[tuple[int, Future[np.ndarray]]] = queue.SimpleQueue()
        threading.Thread(target=self.make_orders, name="epoch-order", daemon=True).start()
        self.start(0)

    def start(self, epoch: int) -> None:
        """Begin making ``epoch``'s permutation (once)."""
        if epoch not in self.pending:
            future: Future[np.ndarray] = Future()
            self.pending[epoch] = future
            self.queue.put((epoch, future))

    def make_orders(self) -> None:
        """The thread's loop: each asked-for epoch's permutation in turn (a cancelled one skipped)."""
        while True:
            epoch, future = self.queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self.permutation(epoch))
            except BaseException as error:  # handed to whoever asks for this epoch's order
                future.set_exception(error)

    def permutation(self, epoch: int) -> np.ndarray:
        """The permutation of ``epoch``, made now (with ``days``, the row counts of consecutive days: one within
        each day, the days in order, as upstream's ``--data-randomize=day``)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.days is None:
            return rng.permutation(self.num_rows)
        starts = np.cumsum([0, *self.days[:-1]])
        return np.concatenate([start + rng.permutation(n) for start, n in zip(starts, self.days)])

    def get(self, epoch: int) -> np.ndarray:
        """The permutation of ``epoch``; the next epoch's is begun, earlier ones (a resumed run skips them) dropped."""
        for earlier in [e for e in self.pending if e < epoch]:
            self.pending.pop(earlier).cancel()
        self.start(epoch)
        self.start(epoch + 1)
        return self.pending.pop(epoch).result()


class RandomSource:
    """``--data-generation=random``: batches made on the fly, identical every epoch."""

    device: torch.device | None = None  # host memory

    def __init__(self, batches: RandomBatches) -> None:
        self.random = batches
        self.num_samples = batches.num_samples

    def __len__(self) -> int:
        return len(self.random)

    def batches(self, epoch: int, start: int = 0, workers: int = 1, share: Share | None = None) -> Batches:
        """Batches ``start..`` (the same in every epoch), made by ``workers`` threads.

        With ``share`` each whole batch is made and then cut: a random batch's
        bags come from one generator across tables, so a table's bags cannot be made alone.
        """
        made = ordered_map(self.make_batch, range(start, len(self)), workers)
        yield from made if share is None else (share.of(batch) for batch in made)

    def make_batch(self, index: int) -> Batch:
        """Batch ``index``."""
        return Batch(*self.random.make_batch(index))


class ArraySource:
    """Batches from row arrays (in memory or memory-mapped), shuffled per epoch.

    ``dense``: N x D float32, ``ids``: N x T integer ids, ``labels``: N.
    With ``shuffle`` the rows are permuted by a generator seeded with
    ``(seed, epoch)`` (with ``days``, the row counts of consecutive days, only
    within each day, the days in order: upstream's ``--data-randomize=day``);
    the last batch may be smaller (nothing is dropped).
    A batch's rows are read in increasing order (cheap on memory maps), and
    ``id_transform`` (:class:`~mlet.data.preprocessing.vocabulary.IdLimits`) maps its B x T ids,
    after ``id_bounds`` (:class:`~mlet.data.preprocessing.vocabulary.IdBounds`, processed files) checks them.
    A process's :class:`Share` reads only its samples' dense features and
    labels and its tables' ids.
    """

    device: torch.device | None = None  # host memory

    def __init__(
        self,
        dense: np.ndarray,
        ids: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        id_transform: IdLimits | None = None,
        days: Sequence[int] | None = None,
        id_bounds: IdBounds | None = None,
    ) -> None:
        if not (len(dense) == len(ids) == len(labels)):
            raise ValueError(f"row counts differ: dense {len(dense)}, ids {len(ids)}, labels {len(labels)}")
        self.dense, self.ids, self.labels = dense, ids, labels
        self.batch_size = int(batch_size)
        self.shuffle, self.seed = shuffle, seed
        self.id_transform, self.id_bounds = id_transform, id_bounds
        self.num_samples = len(labels)
        self.days = list(days) if days is not None else None
        if self.days is not None and sum(self.days) != self.num_samples:
            raise ValueError(f"days hold {sum(self.days)} rows, the arrays {self.num_samples}")
        self.orders = EpochOrders(self.num_samples, seed, self.days) if shuffle else None

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def order(self, epoch: int) -> np.ndarray | None:
        """Row order of ``epoch`` (``None``: file order)."""
        return self.orders.get(epoch) if self.orders is not None else None

    def batches(self, epoch: int, start: int = 0, workers: int = 1, share: Share | None = None) -> Batches:
        """Batches ``start..`` of ``epoch``, assembled by ``workers`` threads (same batches, same order).

        The epoch's order is taken here, on the caller's thread, not when the first batch is asked for: a
        prefetching thread would wait for it there, and a Ctrl-C or SIGTERM meanwhile ended the run only once
        the order was made (the stopped run waits for its prefetching thread), seconds to minutes after the
        signal. The caller's wait ends at the signal.
        """
        return self.batches_in(self.order(epoch), start, workers, share)

    def batches_in(self, order: np.ndarray | None, start: int, workers: int, share: Share | None) -> Batches:
        """Batches ``start..`` under ``order`` (:meth:`batches`)."""
        selections = (self.rows_of(order, i) for i in range(start, len(self)))
        if share is None:
            yield from ordered_map(self.make_batch, selections, workers)
        else:
            yield from ordered_map(lambda rows: self.make_share(rows, share), selections, workers)

    def rows_of(self, order: np.ndarray | None, index: int) -> slice | np.ndarray:
        """Rows of batch ``index`` under ``order`` (sorted: cheap reads from memory maps)."""
        lo, hi = index * self.batch_size, min((index + 1) * self.batch_size, self.num_samples)
        return slice(lo, hi) if order is None else np.sort(order[lo:hi])

    def make_batch(self, rows: slice | np.ndarray) -> Batch:
        """The batch of the given rows (copied out of the arrays, which may be read-only memory maps)."""
        dense, labels = self.dense_and_labels(rows)
        return Batch(dense, SparseFeatures.from_ids(torch.from_numpy(self.ids_of(rows))), labels)

    def make_share(self, rows: slice | np.ndarray, share: Share) -> BatchShard:
        """One process's part of the batch of ``rows``: its samples' dense features and labels, its tables' ids."""
        count = rows.stop - rows.start if isinstance(rows, slice) else len(rows)
        lo, hi = share.samples(count)
        mine = slice(rows.start + lo, rows.start + hi) if isinstance(rows, slice) else rows[lo:hi]
        dense, labels = self.dense_and_labels(mine)
        features = SparseFeatures.from_ids(torch.from_numpy(self.ids_of(rows, share.tables))) if share.tables else None
        return BatchShard(dense, OwnedBags(features, count), labels)

    def dense_and_labels(self, rows: slice | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense features (float32) and labels (float32) of ``rows``."""
        dense = torch.from_numpy(take_rows(self.dense, rows).astype(np.float32, copy=False))
        labels = torch.from_numpy(take_rows(self.labels, rows).astype(np.float32, copy=False))
        return dense, labels

    def ids_of(self, rows: slice | np.ndarray, tables: Sequence[int] | None = None) -> np.ndarray:
        """Ids of ``rows`` (``B x T``, or the columns of ``tables``), limited by ``id_transform``."""
        ids = take_rows(self.ids, rows)
        if tables is not None:
            ids = ids[:, list(tables)]
        if self.id_bounds is not None:
            self.id_bounds.check(ids, rows, tables)
        return self.id_transform(ids, tables) if self.id_transform is not None else ids


def take_rows(array: np.ndarray, rows: slice | np.ndarray) -> np.ndarray:
    """A writable in-memory copy of ``array[rows]``.

    ``np.take`` gathers rows of a memory map about 15x faster than fancy
    indexing (measured: 0.09 vs 1.6 ms for 8192 rows of 26 int32 ids).
    """
    if isinstance(rows, slice):
        return np.array(array[rows])
    return np.asarray(np.take(array, rows, axis=0))


@dataclass
class DataBundle:
    """Train and evaluation batch sources plus what the model needs to know about the data.

    ``test`` is what the reported metrics are computed on: the test split, or
    the validation split under ``--eval-split=val`` (to choose settings
    without looking at test); ``eval_split`` names which. ``val`` is the
    validation split when the run has one (data sets always; generated data
    only under ``--eval-split=val``).
    """

    train: BatchSource
    test: BatchSource
    table_sizes: list[int]
    dense_features: int
    description: str
    val: BatchSource | None = None
    id_counts: Callable[[], list[np.ndarray]] | None = None
    """Training counts of every row of each table (``None``: uniform random ids, no counts to speak of)."""
    eval_split: str = "test"
    files: dict | None = None
    """A data set's files (:func:`~mlet.data.preprocessing.cache.files_record`); None for generated data."""


def click_model_config(config: DataConfig, table_sizes: Sequence[int]) -> ClickModelConfig:
    """The click model of ``--data-generation=synthetic`` (its knobs, these tables, the run's seed)."""
    return ClickModelConfig(
        table_sizes=tuple(table_sizes),
        dense_features=config.dense_features,
        **asdict(config.synthetic),
        seed=config.seed,
    )


def synthetic_source(
    model: ClickModel, num_samples: int, stream: int, batch_size: int, shuffle: bool, seed: int
) -> ArraySource:
    """Materialise ``num_samples`` click-model samples of one stream as an :class:`ArraySource`."""
    counts, ids, labels = model.sample(num_samples, seed=stream)
    return ArraySource(dense_transform(counts), ids.astype(np.int32), labels, batch_size, shuffle=shuffle, seed=seed)


def test_samples(config: DataConfig) -> int:
    """Test samples of generated data: as configured, else a quarter of train (at most 2**18)."""
    return config.test_samples if config.test_samples is not None else min(max(config.train_samples // 4, 1), 1 << 18)


def random_description(random: RandomConfig) -> str:
    """The log's words for upstream-style random data: how its ids and labels are drawn."""
    if random.distribution == "gaussian":
        mu = "the middle" if random.mu == -1 else f"{random.mu:g}"
        ids = f"gaussian ids (mu {mu}, sigma {random.sigma:g}, within [{random.low:g}, {random.high:g}])"
    else:
        ids = "uniform ids"
    return f"random ({ids}, {'0/1' if random.round_targets else 'soft'} labels)"


def build_data(config: DataConfig) -> DataBundle:
    """The train and evaluation sources ``config`` describes."""
    if config.dataset is not None:
        return dataset_bundle(config, config.dataset)
    if config.table_sizes is None:
        raise ValueError("generated data needs table sizes")
    table_sizes = list(config.table_sizes)
    train_n, test_n = config.train_samples, test_samples(config)
    evaluate = VAL if config.eval_split == "val" else TEST
    train: BatchSource
    test: BatchSource
    if config.generation == "random":
        common: dict[str, Any] = dict(
            table_sizes=table_sizes,
            dense_features=config.dense_features,
            indices_per_lookup=config.indices_per_lookup,
            fixed=config.indices_per_lookup_fixed,
            seed=config.seed,
            random=config.random,
        )
        train = RandomSource(RandomBatches(train_n, config.batch_size, split=TRAIN, **common))
        test = RandomSource(RandomBatches(test_n, config.test_batch_size, split=evaluate, **common))
        desc = random_description(config.random)
    else:
        model = ClickModel(click_model_config(config, table_sizes))
        samples = synthetic_source(model, train_n, TRAIN, config.batch_size, shuffle=True, seed=config.seed)
        train, test = (
            samples,
            synthetic_source(model, test_n, evaluate, config.test_batch_size, shuffle=False, seed=config.seed),
        )
        positives = float(samples.labels.mean())
        desc = (
            f"synthetic click model (rank {config.synthetic.rank}, zipf {config.synthetic.zipf_exponent}, "
            f"{positives:.1%} positives)"
        )
    if evaluate == VAL:
        desc += "; evaluating on a validation stream"
    counts = functools.partial(array_counts, train, table_sizes) if isinstance(train, ArraySource) else None
    val = test if evaluate == VAL else None
    return DataBundle(
        train,
        test,
        table_sizes,
        config.dense_features,
        desc,
        val=val,
        id_counts=counts,
        eval_split="val" if evaluate == VAL else "test",
    )


def array_counts(source: ArraySource, table_sizes: Sequence[int]) -> list[np.ndarray]:
    """How often each row of each table occurs in ``source`` (its ids as the model sees them)."""
    ids = source.ids if source.id_transform is None else source.id_transform(np.asarray(source.ids))
    return [np.bincount(ids[:, t], minlength=n) for t, n in enumerate(table_sizes)]


def size_notice(given: Sequence[int], dataset: DatasetConfig, log: Log) -> VocabularyCheck:
    """For a build of the processed data: once pass 1 has counted the values (the earliest the data's table sizes
    are known), one line if ``given`` (an explicit ``--arch-embedding-size``) differs from them. The build goes
    on: stopping would throw away what the next run, with the flag fixed, reuses."""

    def check(counts: list[np.ndarray]) -> None:
        found = IdLimits.from_unordered_counts(counts, dataset.cat_min_count, dataset.max_ind_range).table_sizes
        mismatch = table_size_mismatch(given, found, categorical_features(dataset.data_set))
        if mismatch is not None:
            log(f"{mismatch}; preprocessing goes on, so that the next run reuses it, then this run stops")

    return check


def dataset_bundle(config: DataConfig, dataset: DatasetConfig) -> DataBundle:
    """Sources over the processed (and, if needed, first preprocessed) data set.

    Table sizes come from the data; sizes given in ``config`` (an explicit
    ``--arch-embedding-size``) must equal them: compared as soon as the data's
    are known (processed data reused: at once; built now: a line after pass 1,
    the refusal once the processed data are in place for the next run).
    ``test_samples`` caps the evaluated rows.
    """
    given = config.table_sizes
    data = prepare_dataset(  # printed by the process that prints (rank 0 under torchrun)
        dataset,
        config.progress and is_main_process(),
        log=log,
        vocabulary_check=None if given is None else size_notice(given, dataset, log),
    )
    limits = data.limits(dataset.cat_min_count, dataset.max_ind_range)
    sizes = limits.table_sizes
    if given is not None and (mismatch := table_size_mismatch(given, sizes, data.categorical_features)) is not None:
        raise UserError(mismatch)

    def source(split: str, batch_size: int, shuffle: bool, limit: int | None = None, days=None) -> ArraySource:
        dense, ids, labels = data.split(split)
        if limit is not None:
            dense, ids, labels = dense[:limit], ids[:limit], labels[:limit]
        bounds = data.id_bounds(split)
        return ArraySource(
            dense, ids, labels, batch_size, shuffle, config.seed, id_transform=limits, days=days, id_bounds=bounds
        )

    days = data.training_days() if dataset.randomize == "day" else None
    if dataset.randomize == "day" and days is None:
        raise UserError(
            f"--data-randomize=day: the {dataset.split} split of {dataset.data_set} has no days; use total or none"
        )
    evaluate = config.eval_split
    train = source("train", config.batch_size, shuffle=dataset.randomize != "none", days=days)
    val = source("val", config.test_batch_size, False, config.test_samples)
    test = val if evaluate == "val" else source("test", config.test_batch_size, False, config.test_samples)
    if not test.num_samples:
        raise UserError(f"--eval-split: the {evaluate} split of {data.directory} is empty")
    rows = data.meta["rows"]
    limits_text = f", min count {dataset.cat_min_count}" + (
        f", max-ind-range {dataset.max_ind_range}" if dataset.max_ind_range else ""
    )
    desc = (
        f"{dataset.data_set} ({data.directory}; {dataset.split} split: "
        f"train {rows['train']:,}, test {rows['test']:,}, val {rows['val']:,}{limits_text});"
        f" evaluating on {evaluate}"
    )
    counts = functools.partial(limits.table_counts, data.vocabulary_counts())
    files = files_record(dataset.raw_data_file, dataset.processed_data_file, data.meta["source"]["fingerprint"])
    return DataBundle(
        train, test, sizes, data.dense_inputs, desc, val=val, id_counts=counts, eval_split=evaluate, files=files
    )
