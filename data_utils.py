"""Batches and where they come from: random, synthetic, and (later) real data sets.

A *batch source* has a length (batches per epoch) and ``batches(epoch, start)``,
which yields :class:`Batch` objects from batch ``start`` of ``epoch`` on; the
order depends only on the seed and the epoch, so a resumed run sees exactly
the batches the interrupted one would have.
"""

from __future__ import annotations

import argparse
import math
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mlet_layers import SparseFeatures
from synthetic_data import ClickModel, ClickModelConfig, RandomBatches

TRAIN, TEST = 0, 1


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


class RandomSource:
    """``--data-generation=random``: batches made on the fly, identical every epoch."""

    def __init__(self, batches: RandomBatches) -> None:
        self.random = batches
        self.num_samples = batches.num_samples

    def __len__(self) -> int:
        return len(self.random)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches ``start..`` (the same in every epoch)."""
        for i in range(start, len(self)):
            yield Batch(*self.random.make_batch(i))


class ArraySource:
    """Batches from row arrays (in memory or memory-mapped), shuffled per epoch.

    ``dense``: N x D float32, ``ids``: N x T integer ids, ``labels``: N.
    With ``shuffle`` the rows are permuted by a generator seeded with
    ``(seed, epoch)``; the last batch may be smaller (nothing is dropped).
    """

    def __init__(
        self,
        dense: np.ndarray,
        ids: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        if not (len(dense) == len(ids) == len(labels)):
            raise ValueError(f"row counts differ: dense {len(dense)}, ids {len(ids)}, labels {len(labels)}")
        self.dense, self.ids, self.labels = dense, ids, labels
        self.batch_size = int(batch_size)
        self.shuffle, self.seed = shuffle, seed
        self.num_samples = len(labels)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def order(self, epoch: int) -> np.ndarray | None:
        """Row order of ``epoch`` (``None``: file order)."""
        if not self.shuffle:
            return None
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches ``start..`` of ``epoch``."""
        order = self.order(epoch)
        for i in range(start, len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, self.num_samples)
            rows = slice(lo, hi) if order is None else np.sort(order[lo:hi])
            yield self.make_batch(rows)

    def make_batch(self, rows: slice | np.ndarray) -> Batch:
        """The batch of the given rows."""
        dense = torch.from_numpy(np.ascontiguousarray(self.dense[rows], dtype=np.float32))
        ids = torch.from_numpy(np.ascontiguousarray(self.ids[rows]))
        labels = torch.from_numpy(np.ascontiguousarray(self.labels[rows], dtype=np.float32))
        return Batch(dense, SparseFeatures.from_ids(ids), labels)


def prefetch(batches: Iterator[Batch], depth: int = 4, pin: bool = False) -> Iterator[Batch]:
    """Produce ``batches`` in a background thread, ``depth`` ahead of the consumer.

    Exceptions in the producer are re-raised in the consumer. Stopping early
    (``close()`` or garbage collection of the generator) stops the producer.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for batch in batches:
                item = batch.pin_memory() if pin else batch
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(done)
        except BaseException as error:  # handed to the consumer
            buffer.put(error)

    worker = threading.Thread(target=produce, daemon=True, name="batch-prefetch")
    worker.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def dense_transform(counts: np.ndarray) -> np.ndarray:
    """Upstream DLRM's dense rule: negatives and missing (-1) to 0, then log(x + 1)."""
    return np.log1p(np.maximum(counts, 0)).astype(np.float32)


@dataclass
class DataBundle:
    """Train and test batch sources plus what the model needs to know about the data."""

    train: RandomSource | ArraySource
    test: RandomSource | ArraySource
    table_sizes: list[int]
    dense_features: int
    description: str


def click_model_config(args: argparse.Namespace, table_sizes: Sequence[int], dense_features: int) -> ClickModelConfig:
    """The click model the ``--synthetic-*`` flags describe."""
    return ClickModelConfig(
        table_sizes=tuple(table_sizes),
        dense_features=dense_features,
        rank=args.synthetic_rank,
        zipf_exponent=args.synthetic_zipf,
        interaction_std=args.synthetic_interaction_std,
        bias_std=args.synthetic_bias_std,
        dense_std=args.synthetic_dense_std,
        noise_std=args.synthetic_noise_std,
        positive_rate=args.synthetic_positive_rate,
        seed=args.numpy_rand_seed,
    )


def synthetic_source(model: ClickModel, num_samples: int, stream: int, batch_size: int, shuffle: bool, seed: int) -> ArraySource:
    """Materialise ``num_samples`` click-model samples of one stream as an :class:`ArraySource`."""
    counts, ids, labels = model.sample(num_samples, seed=stream)
    return ArraySource(dense_transform(counts), ids.astype(np.int32), labels, batch_size, shuffle=shuffle, seed=seed)


def split_sizes(args: argparse.Namespace) -> tuple[int, int]:
    """Train and test sample counts for generated data.

    Train: ``--num-batches`` full batches if given, else ``--data-size``.
    Test: ``--test-data-size`` if given, else a quarter of train (at most 2**18).
    """
    train = args.num_batches * args.mini_batch_size if args.num_batches > 0 else args.data_size
    test = args.test_data_size if args.test_data_size is not None else min(max(train // 4, 1), 1 << 18)
    return train, test


def build_data(args: argparse.Namespace, table_sizes: Sequence[int], dense_features: int) -> DataBundle:
    """The train/test sources for ``--data-generation`` (random or synthetic)."""
    train_n, test_n = split_sizes(args)
    test_batch = args.test_mini_batch_size if args.test_mini_batch_size > 0 else args.mini_batch_size
    seed = args.numpy_rand_seed
    if args.data_generation == "random":
        common = dict(
            table_sizes=table_sizes,
            dense_features=dense_features,
            indices_per_lookup=args.num_indices_per_lookup,
            fixed=args.num_indices_per_lookup_fixed,
            seed=seed,
        )
        train = RandomSource(RandomBatches(train_n, args.mini_batch_size, split=TRAIN, **common))
        test = RandomSource(RandomBatches(test_n, test_batch, split=TEST, **common))
        return DataBundle(train, test, list(table_sizes), dense_features, "random (uniform ids, random labels)")
    model = ClickModel(click_model_config(args, table_sizes, dense_features))
    train = synthetic_source(model, train_n, TRAIN, args.mini_batch_size, shuffle=True, seed=seed)
    test = synthetic_source(model, test_n, TEST, test_batch, shuffle=False, seed=seed)
    positives = float(train.labels.mean())
    desc = f"synthetic click model (rank {args.synthetic_rank}, zipf {args.synthetic_zipf}, {positives:.1%} positives)"
    return DataBundle(train, test, list(table_sizes), dense_features, desc)
