"""Data held on the device, and each process reading only its share: the same batches as the host path.

Run on the CPU with the CPU as the "device" (the logic is device-independent);
tests/test_gpu.py repeats the command-line comparison on a GPU.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import ROOT, run_cli

from mlet.core.batch import Batch, BatchShard, Share
from mlet.core.errors import UserError
from mlet.core.pipeline import prefetch
from mlet.data import device as device_module
from mlet.data.device import DeviceArraySource, RowsBatch, decide, load_arrays, place_data, to_device
from mlet.data.preprocessing.vocabulary import IdBounds, IdLimits
from mlet.data.sources import ArraySource, DataBundle, EpochOrders, RandomSource
from mlet.data.synthetic import RandomBatches
from mlet.training.results import one_time_seconds, steady_rate
from mlet.training.train_step import GraphedTrainStep, TrainStep, batch_shape, batch_tensors

CPU = torch.device("cpu")


def array_source(rows: int = 1003, tables: int = 4, batch: int = 64, limits: IdLimits | None = None) -> ArraySource:
    rng = np.random.default_rng(5)
    dense = rng.random((rows, 13), dtype=np.float32)
    ids = rng.integers(0, 60, (rows, tables), dtype=np.int32)
    labels = rng.integers(0, 2, rows).astype(np.float32)
    return ArraySource(dense, ids, labels, batch, shuffle=True, seed=11, id_transform=limits)


def tensors(batch: Batch | BatchShard | RowsBatch) -> list[torch.Tensor]:
    """Every tensor of a batch or share, in a fixed order (an absent bag set as an empty tensor)."""
    batch = batch.cut() if isinstance(batch, RowsBatch) else batch
    features = batch.sparse.features if isinstance(batch, BatchShard) else batch.sparse
    bags = [features.indices, features.offsets] if features is not None else [torch.empty(0)]
    return [batch.dense, batch.labels, *bags, torch.tensor([batch.size])]


def assert_same_batches(a, b) -> None:
    a, b = list(a), list(b)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        for s, t in zip(tensors(x), tensors(y), strict=True):
            assert s.dtype == t.dtype and torch.equal(s, t)


@pytest.mark.parametrize(
    "limits",
    [
        None,
        IdLimits(np.array([40, 10, 59, 3], np.int32), modulus=0),
        IdLimits(np.array([40, 10, 59, 3], np.int32), modulus=7),
    ],
)
def test_device_source_gives_the_host_batches_row_for_row(limits) -> None:
    host = array_source(limits=limits)
    device = load_arrays(host, CPU, share=None, progress=False)
    assert len(device) == len(host) == 16
    for epoch, start in ((0, 0), (1, 0), (3, 5)):
        assert_same_batches(host.batches(epoch, start), device.batches(epoch, start))


def test_data_read_on_several_threads_is_loaded_in_order(monkeypatch) -> None:
    host = array_source()
    whole = load_arrays(host, CPU, share=None, progress=False)
    monkeypatch.setattr(device_module, "LOAD_CHUNK_ROWS", 40)  # 26 chunks, read 4 at a time
    monkeypatch.setattr(device_module.os, "sched_getaffinity", lambda _: set(range(4)))
    chunked = load_arrays(host, CPU, share=None, progress=False)
    for name in ("dense", "ids", "labels"):
        assert torch.equal(getattr(chunked, name), getattr(whole, name)), name
    damaged = np.array(host.ids)
    damaged[[150, 950], 2] = 999  # two chunks' reads fail: the first row is reported, as by one reader
    bounds = IdBounds(np.full(4, 59, np.uint32), Path("train.cat.npy"), ("C1", "C2", "C3", "C4"))
    source = ArraySource(host.dense, damaged, host.labels, 64, shuffle=True, seed=11, id_bounds=bounds)
    with pytest.raises(UserError, match=r"train\.cat\.npy: row 150: id 999 of C3"):
        load_arrays(source, CPU, share=None, progress=False)


@pytest.mark.parametrize("world, tables", [(2, ((0, 2), (1, 3))), (3, ((3,), (), (2, 0, 1)))])
def test_each_process_reads_only_its_share_and_gets_what_the_whole_batch_would_give(world, tables) -> None:
    host = array_source(limits=IdLimits(np.array([40, 10, 59, 3], np.int32), modulus=5))
    for rank in range(world):
        share = Share(rank, world, tables[rank])
        expected = [share.of(batch) for batch in host.batches(2)]
        assert_same_batches(expected, host.batches(2, share=share))
        assert_same_batches(expected, load_arrays(host, CPU, share, progress=False).batches(2, share=share))


def test_a_share_reads_fewer_ids_and_rows() -> None:
    host = array_source()
    share = Share(1, 2, (3,))
    part = next(iter(load_arrays(host, CPU, share, progress=False).batches(0, share=share)))
    whole = next(iter(host.batches(0)))
    assert part.dense.shape[0] == whole.size // 2 and part.sparse.features.indices.numel() == whole.size
    assert load_arrays(host, CPU, share, progress=False).ids.shape == (host.num_samples, 1)


def test_random_batches_are_made_once_and_kept() -> None:
    random = RandomSource(RandomBatches(300, 64, (50, 7, 30), 13, indices_per_lookup=3, fixed=False, seed=4))
    kept = to_device(random, CPU, None, progress=False)
    assert_same_batches(random.batches(0), kept.batches(2))
    share = Share(0, 2, (1,))
    kept_share = to_device(random, CPU, share, False)
    assert_same_batches((share.of(b) for b in random.batches(0)), kept_share.batches(1, share=share))
    with pytest.raises(ValueError, match="kept for share"):
        next(kept_share.batches(0))  # whole batches were not kept


def test_placement_policy() -> None:
    gib = 2**30
    cuda = torch.device("cuda", 0)
    assert not decide("auto", CPU, gib, None, 0).on_device  # the host already holds it
    assert decide("on", CPU, gib, None, 0).on_device
    assert not decide("off", cuda, gib, 100 * gib, 0).on_device
    fits = decide("auto", cuda, 8 * gib, 40 * gib, 30 * gib)
    assert fits.on_device and "8.00 GiB" in fits.reason
    assert not decide("auto", cuda, 8 * gib, 40 * gib, 33 * gib).on_device


def test_placing_a_bundle_keeps_a_shared_test_and_validation_source_shared() -> None:
    source = array_source()
    bundle = DataBundle(array_source(), source, [60] * 4, 13, "test", val=source)
    placed, placement = place_data(bundle, "on", CPU, reserve=0, share=None, progress=False)
    assert placement.on_device and isinstance(placed.train, DeviceArraySource)
    assert placed.test is placed.val and isinstance(placed.test, DeviceArraySource)
    same, kept = place_data(bundle, "off", CPU, reserve=0, share=None, progress=False)
    assert same is bundle and not kept.on_device


TINY = [
    "--arch-embedding-size=300-40-9-120",
    "--arch-sparse-feature-size=4",
    "--arch-mlp-bot=13-8-4",
    "--arch-mlp-top=8-1",
    "--mini-batch-size=32",
    "--num-batches=25",
    "--nepochs=2",
    "--test-data-size=200",
    "--learning-rate=0.2",
    "--print-freq=1",
    "--print-precision=9",
    "--progress=false",
    "--adapt-threads=false",  # the two runs are compared bit for bit
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "generation",
    [["--data-generation=synthetic", "--mlet-hidden=16"], ["--data-generation=random", "--optimizer=adagrad"]],
)
def test_command_line_trains_the_same_with_data_on_the_device(generation, tmp_path, capsys) -> None:
    results = {}
    for placement in ("off", "on"):
        out = tmp_path / f"{placement}.json"
        code, stdout, err = run_cli(
            [*TINY, *generation, f"--data-on-device={placement}", f"--results-json={out}"], capsys
        )
        assert code == 0, err
        assert f"input: {'cpu' if placement == 'on' else 'host'} memory (--data-on-device={placement}" in stdout
        losses = [line.rsplit(" ", 1)[1] for line in stdout.splitlines() if line.startswith("Finished training it")]
        results[placement] = (losses, json.loads(out.read_text())["final"])
    assert len(results["on"][0]) == 50 and results["on"] == results["off"]


def test_epoch_orders_are_numpys_permutations_made_ahead() -> None:
    orders = EpochOrders(1000, seed=3)
    for epoch in (0, 1, 2, 5):  # a resumed run may start at a later epoch
        assert np.array_equal(orders.get(epoch), np.random.default_rng([3, epoch]).permutation(1000))
    assert set(orders.pending) == {6}  # the next epoch is under way; skipped ones are dropped


def test_a_process_ends_without_waiting_for_an_epoch_order_nobody_asks_for() -> None:
    """The order of the epoch after the last is begun all the same; the exit must not wait for it (minutes at
    Terabyte's size, during which a SIGTERM found the process in the interpreter's exit)."""
    code = (
        "import time, numpy as np\n"
        "from mlet.data.sources import EpochOrders\n"
        "class Slow(EpochOrders):\n"
        "    def permutation(self, epoch):\n"
        "        if epoch: time.sleep(60)\n"
        "        return np.arange(self.num_rows)\n"
        "Slow(10, seed=0).get(0)\n"  # begins epoch 1's order, then the process ends
        "print('done', flush=True)\n"
    )
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "done\n", done.stderr
    assert time.monotonic() - start < 30


def test_an_error_making_an_epoch_order_reaches_the_caller() -> None:
    class Failing(EpochOrders):
        def permutation(self, epoch: int) -> np.ndarray:
            raise MemoryError(f"epoch {epoch}")

    with pytest.raises(MemoryError, match="epoch 0"):
        Failing(10, seed=0).get(0)


def test_a_host_source_takes_its_epoch_order_on_the_callers_thread() -> None:
    """Not in the prefetching thread that makes its batches: there a stopped run waited for the order to be made
    before it could end (the signal's line came seconds to minutes late); the caller's wait ends at the signal."""
    rng = np.random.default_rng(0)
    source = ArraySource(rng.random((100, 13), dtype=np.float32), rng.integers(0, 9, (100, 3)), np.ones(100), 10, True)
    assert source.orders is not None
    made, takers = source.orders.get, []

    def get(epoch: int) -> np.ndarray:
        takers.append(threading.current_thread())
        return made(epoch)

    source.orders.get = get  # type: ignore[method-assign]
    batches = prefetch(source.batches(0))
    assert takers == [threading.current_thread()]
    assert next(batches).size == 10
    batches.close()


def test_steady_rate_is_the_median_window_rate() -> None:
    warm_up, steady, last_batch = (1000, 2.0), (1000, 0.5), (100, 0.2)
    assert steady_rate([warm_up, steady, steady, steady, last_batch]) == 2000.0
    assert steady_rate([warm_up, steady]) is None
    # the warm-up window's 1000 samples take 0.5 s at the steady 2000/s: 1.5 s more; the last batch's 0.15 s more
    assert one_time_seconds([warm_up, steady, steady, steady, last_batch]) == pytest.approx(1.65)
    assert one_time_seconds([warm_up, steady]) is None
    # no one-time cost at all, and a first window faster than the median: 0, not a negative time
    assert one_time_seconds([(1000, 0.45), steady, steady, steady]) == 0.0


def test_one_hot_batches_share_one_offsets_tensor() -> None:
    # the offsets of one-id bags depend only on the shape: made once, not once per step
    device = load_arrays(array_source(), CPU, share=None, progress=False)
    first, second, *_ = device.batches(0)
    assert first.sparse.offsets is second.sparse.offsets
    assert torch.equal(first.sparse.offsets, torch.arange(64 * 4 + 1))


def test_a_device_batch_is_its_row_numbers_until_read() -> None:
    """What a graphed step copies in and captures: only the row numbers are the batch's own tensors; a graph's
    copy of it shares the arrays and is cut anew (inside the capture), even from a batch read already."""
    source = load_arrays(array_source(), CPU, share=None, progress=False)
    batch = next(iter(source.batches(1)))
    assert isinstance(batch, RowsBatch) and batch_tensors(batch) == [batch.rows] and batch.size == 64
    assert batch.dense is batch.dense  # cut once
    graph_copy = copy.deepcopy(batch)
    assert graph_copy.source is source and graph_copy.rows is not batch.rows
    assert torch.equal(graph_copy.rows, batch.rows) and graph_copy.dense is not batch.dense
    assert_same_batches([graph_copy], [source.make_batch(batch.rows)])
    assert batch.to("cpu") is batch
    moved = batch.to("meta")  # on another device, the batch cut and moved (test_gpu.py: from a GPU to the CPU)
    assert isinstance(moved, Batch) and moved.dense.device.type == moved.labels.device.type == "meta"
    assert moved.dense.shape == batch.dense.shape


def test_a_device_batch_replays_a_graph_only_of_its_own_shape_source_and_share() -> None:
    host = array_source(rows=1003, batch=64)  # 15 full batches and one of 43
    source = load_arrays(host, CPU, share=None, progress=False)
    twin = load_arrays(host, CPU, share=None, progress=False)  # the same values in other arrays
    first, second, *_, last = source.batches(0)
    assert batch_shape(first) == batch_shape(second) != batch_shape(last)
    assert batch_shape(first) != batch_shape(next(iter(twin.batches(0))))
    share = Share(0, 2, (0, 1, 2, 3))
    assert batch_shape(first) != batch_shape(next(iter(source.batches(0, share=share))))


def test_a_source_holding_every_table_cuts_a_shares_tables() -> None:
    host = array_source()
    share = Share(1, 2, (3, 1))
    every_table = load_arrays(host, CPU, share=None, progress=False)
    assert_same_batches([share.of(batch) for batch in host.batches(2)], every_table.batches(2, share=share))


@dataclass
class ShapedBatch:
    """Stands for a batch: its samples, and its bags' total length (multi-hot bags vary the shape)."""

    size: int
    ids: torch.Tensor


def test_graph_is_of_the_first_full_batch_shape_even_after_a_short_batch(monkeypatch) -> None:
    """A resumed run may start on an epoch's last, smaller batch: the capture must still be of the full shape.
    Batches of the same size but other bag lengths (multi-hot) do not restart the warm-up."""
    step = GraphedTrainStep(torch.nn.Linear(1, 1), loss_fn=None, optimizer=None, warmup=2)
    calls: list = []

    def record(kind: str, batch: ShapedBatch) -> None:
        calls.append((kind, batch.size, len(batch.ids)))

    def capture(batch: ShapedBatch) -> None:
        record("capture", batch)
        step.graph = SimpleNamespace(replay=lambda: record("replay", step.static_batch))
        step.static_batch, step.static_loss = batch, torch.zeros(())

    monkeypatch.setattr(TrainStep, "__call__", lambda self, batch: record("eager", batch))
    monkeypatch.setattr(step, "_side_stream_step", lambda batch: record("warm", batch))
    monkeypatch.setattr(step, "_capture", capture)
    monkeypatch.setattr(step, "_load", lambda batch: None)
    for size, bags in ((43, 43), (64, 64), (64, 70), (64, 64), (64, 64), (64, 64), (43, 43), (64, 64)):
        step(ShapedBatch(size, torch.zeros(bags)))
    assert calls == [
        ("warm", 43, 43),
        ("warm", 64, 64),
        ("eager", 64, 70),
        ("warm", 64, 64),
        ("capture", 64, 64),
        ("replay", 64, 64),
        ("replay", 64, 64),
        ("eager", 43, 43),
        ("replay", 64, 64),
    ]
    assert step.other_shape_steps == 2  # the two eager steps of a shape other than the captured one


def test_graph_inputs_skip_only_the_tensor_copied_in_last_and_unchanged() -> None:
    step = GraphedTrainStep(torch.nn.Linear(1, 1), loss_fn=None, optimizer=None)
    source = array_source()
    first, second, third = list(source.batches(0))[:3]
    step.static_batch = copy.deepcopy(first)
    static = tensors(step.static_batch)
    step._load(second)
    assert all(torch.equal(s, t) for s, t in zip(static, tensors(second)))
    offsets = third.sparse.offsets
    assert offsets is second.sparse.offsets  # the shared one: not copied again
    step.static_batch.sparse.offsets.zero_()  # (a copy would restore it)
    step._load(third)
    assert not torch.equal(static[3], offsets) and torch.equal(static[0], third.dense)
    offsets.add_(0)  # written in place: its version changes, so it is copied in again
    step._load(third)
    assert torch.equal(static[3], offsets)
