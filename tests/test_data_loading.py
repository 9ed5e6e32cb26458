"""Batch sources: shuffling, parallel assembly, prefetching."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mlet.core.errors import UserError
from mlet.core.pipeline import ordered_map, prefetch
from mlet.data.preprocessing.vocabulary import IdBounds
from mlet.data.sources import ArraySource


def arrays(rows: int = 1000, tables: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.random((rows, 13), dtype=np.float32),
        rng.integers(0, 50, (rows, tables), dtype=np.int32),
        rng.integers(0, 2, rows).astype(np.float32),
    )


def as_tuples(batches) -> list[tuple]:
    return [(b.dense.clone(), b.sparse.indices.clone(), b.sparse.offsets.clone(), b.labels.clone()) for b in batches]


def test_threads_assemble_the_same_batches_in_the_same_order(tmp_path) -> None:
    dense, ids, labels = arrays()
    for name, array in (("dense", dense), ("ids", ids), ("labels", labels)):
        np.save(tmp_path / f"{name}.npy", array)
    mapped = [np.load(tmp_path / f"{n}.npy", mmap_mode="r") for n in ("dense", "ids", "labels")]
    source = ArraySource(*mapped, batch_size=64, shuffle=True, seed=3)
    single = as_tuples(source.batches(epoch=1, start=2, workers=1))
    threaded = as_tuples(source.batches(epoch=1, start=2, workers=4))
    assert len(single) == len(source) - 2 == len(threaded)
    for a, b in zip(single, threaded):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    rows = torch.cat([t[3] for t in single]).numel()
    assert rows == 1000 - 2 * 64  # the last, smaller batch is kept


def test_shuffle_is_a_permutation_per_epoch() -> None:
    dense, ids, labels = arrays(rows=300)
    labels = np.arange(300, dtype=np.float32)  # labels name the rows
    source = ArraySource(dense, ids, labels, batch_size=32, shuffle=True, seed=1)
    epoch0 = torch.cat([b.labels for b in source.batches(0)])
    epoch1 = torch.cat([b.labels for b in source.batches(1)])
    assert sorted(epoch0.tolist()) == list(range(300)) == sorted(epoch1.tolist())
    assert not torch.equal(epoch0, epoch1)
    batch = next(iter(source.batches(0)))
    row = int(batch.labels[0])
    assert torch.equal(batch.dense[0], torch.from_numpy(dense[row]))
    assert torch.equal(batch.sparse.indices[:: batch.size][:3], torch.from_numpy(ids[row]).long())


def test_ordered_map_keeps_order_and_raises_worker_errors() -> None:
    assert list(ordered_map(lambda x: x * x, range(50), workers=4)) == [x * x for x in range(50)]

    def fail_at_7(x: int) -> int:
        if x == 7:
            raise ValueError("bad item 7")
        return x

    with pytest.raises(ValueError, match="bad item 7"):
        list(ordered_map(fail_at_7, range(20), workers=3))


def test_prefetch_stops_when_the_consumer_stops() -> None:
    produced = []

    def items():
        for i in range(1000):
            produced.append(i)
            yield i

    stream = prefetch(items(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    count = len(produced)
    assert count < 20
    # the producer has left by the time close() returns (none is left running into the interpreter's exit)
    assert not any(t.name == "batch-prefetch" for t in threading.enumerate())


def test_a_stopped_prefetch_waits_for_the_batch_its_producer_is_assembling() -> None:
    started, finished = threading.Event(), threading.Event()

    def slow_items():
        yield 0
        started.set()
        time.sleep(0.3)  # assembling the next batch when the consumer stops
        finished.set()
        yield 1

    stream = prefetch(slow_items(), depth=1)
    assert next(stream) == 0
    started.wait(5)
    stream.close()
    assert finished.is_set()


def test_id_bounds_check_every_batch_and_share_and_name_the_row() -> None:
    ids = np.tile(np.array([[0, 5, 2]], np.int32), (40, 1))
    bounds = IdBounds(np.array([3, 5, 2], np.uint32), Path("p/train.cat.npy"), ("C1", "C2", "C3"))
    source = ArraySource(np.zeros((40, 1), np.float32), ids, np.zeros(40), 8, shuffle=True, id_bounds=bounds)
    assert sum(len(b.labels) for b in source.batches(0, workers=2)) == 40  # every id at its bound is fine
    ids[29, 2] = 3  # one past C3's vocabulary
    with pytest.raises(UserError, match=r"^p/train.cat.npy: row 29: id 3 of C3 is outside 0..2 \(its vocabulary\)"):
        list(source.batches(0, workers=2))
    ids[29, 2], ids[17, 0] = 2, -1
    with pytest.raises(UserError, match=r"row 17: id -1 of C1 is outside 0..3"):
        source.ids_of(np.arange(10, 20), tables=[0])  # a process's tables
    assert source.ids_of(np.arange(10, 20), tables=[1, 2]).shape == (10, 2)  # its tables are sound
    with pytest.raises(UserError, match=r"row 17: id -1 of C1"):
        bounds.check(ids.astype(np.int64)[10:20], slice(10, 20))
