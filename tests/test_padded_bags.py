"""Multi-hot bags padded to their longest with ids of weight 0, so one CUDA graph takes batches of any total.

The graph itself needs a GPU (``tests/test_gpu.py``); here its capture is stood in for by a copy of the
padded batch and each replay by an eager step on that copy, so the step's choices (what it pads, to what
length, what runs eagerly) and their effect on training are checked on the CPU.
"""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import pytest
import torch
from helpers import random_inputs, small_config

from dlrm_model import DLRM
from mlet.core.batch import Batch, Share, SparseFeatures
from mlet.core.config import ModelConfig
from mlet.data.synthetic import RandomBatches
from mlet.serving.quantize import quantize_tables
from mlet.training.optimizers import build_optimizer
from mlet.training.train_step import GraphedTrainStep, TrainStep, bag_id_count, padded_bags
from mlet_layers import EmbeddingTables

LOSS = torch.nn.functional.binary_cross_entropy_with_logits


def QR(config: ModelConfig) -> ModelConfig:  # noqa: N802  (reads as the flag)
    """``config`` with quotient-remainder tables for its two larger tables (50 and 300 rows)."""
    return dataclasses.replace(config, qr_flag=True, qr_threshold=40, qr_collisions=4)


def random_batch(config: ModelConfig, seed: int, size: int = 48, bag: int = 4) -> Batch:
    """Dense features, bags of 0..``bag`` ids (a different total each seed; ``max_bag`` promised) and labels."""
    dense, features = random_inputs(config, batch=size, seed=seed, bag=bag)
    labels = torch.randint(0, 2, (size,), generator=torch.Generator().manual_seed(seed)).float()
    return Batch(dense, dataclasses.replace(features, max_bag=bag), labels)


def fused_model(config: ModelConfig, optimizer: str) -> tuple[DLRM, object]:
    model = DLRM(config, seed=3)
    fused = model.table_modules()
    return model, build_optimizer(optimizer, 0.2, model.sparse_parameters(), model.dense_parameters(), fused)


def test_padding_gives_every_bag_its_longest_length_with_weight_zero_copies_of_its_first_id() -> None:
    features = SparseFeatures(torch.tensor([3, 1, 4, 9, 2]), torch.tensor([0, 2, 2, 3, 5]), 2, max_bag=3)
    padded = features.padded()
    assert padded.indices.tolist() == [3, 1, 3, 0, 0, 0, 4, 4, 4, 9, 2, 9]
    assert padded.offsets.tolist() == [0, 3, 6, 9, 12] and padded.max_bag == 3
    assert padded.weights is not None and padded.weights.tolist() == [1, 1, 0, 0, 0, 0, 1, 0, 0, 1, 1, 0]
    assert features.indices.tolist() == [3, 1, 4, 9, 2] and features.weights is None  # the original is left alone
    assert padded.select_tables([1]).weights.tolist() == [1, 0, 0, 1, 1, 0]
    assert padded.to("cpu").max_bag == 3 and features.select_tables([0]).max_bag == 3
    with pytest.raises(ValueError, match="needs max_bag"):
        dataclasses.replace(features, max_bag=None).padded()
    with pytest.raises(RuntimeError, match="a bag holds more than max_bag=1 ids"):
        dataclasses.replace(features, max_bag=1).padded()  # a broken promise fails (on a GPU: asynchronously)
    with pytest.raises(ValueError, match="one-hot bags take no per-id weights"):
        SparseFeatures(torch.tensor([1]), torch.tensor([0, 1]), 1, one_hot=True, weights=torch.ones(1))


def test_padded_bags_of_no_ids_embed_as_zeros_and_quantized_tables_refuse_weights() -> None:
    config = small_config()
    model = DLRM(config, seed=1)
    empty = SparseFeatures(torch.zeros(0, dtype=torch.int64), torch.zeros(4 * 3 + 1, dtype=torch.int64), 4, max_bag=2)
    padded = empty.padded()
    assert padded.indices.tolist() == [0] * 24 and padded.weights.sum() == 0
    with torch.no_grad():
        assert torch.equal(model.tables(padded), torch.zeros(3, 4, config.dim))
        with pytest.raises(ValueError, match="quantized tables take no per-id weights"):
            quantize_tables(model.tables, 8)(padded)


def test_a_shares_owned_bags_pad_and_embed_as_before() -> None:
    """A process's share of a batch (multi-process runs): its owned tables' bags pad; a share without tables
    passes through."""
    config = small_config(hidden=16)
    batch = random_batch(config, 5)
    share = Share(0, 2, (3, 1)).of(batch)
    padded = padded_bags(share)
    assert torch.equal(padded.dense, share.dense) and padded.sparse.batch_size == share.sparse.batch_size
    owned = EmbeddingTables.from_config(config, seed=2, table_ids=(3, 1))
    with torch.no_grad():
        torch.testing.assert_close(owned(padded.sparse.features), owned(share.sparse.features), rtol=0, atol=0)
    nothing = Share(1, 2, ()).of(batch)
    assert padded_bags(nothing) is nothing


def test_random_data_promises_its_longest_bag() -> None:
    source = RandomBatches(300, 100, [5, 1000, 1000], 13, indices_per_lookup=6, fixed=False, seed=2)
    for _, features, _ in source:
        assert features.max_bag == 6 and int(features.offsets.diff().max()) <= 6


@pytest.mark.parametrize("tables", ["plain", "mlet", "qr"])
def test_padded_bags_embed_as_the_bags(tables: str) -> None:
    """Plain, MLET and quotient-remainder tables: the same embeddings, empty last bags included."""
    config = small_config(hidden=16 if tables == "mlet" else 0)
    if tables == "qr":
        config = QR(config)
    model = DLRM(config, seed=1)
    for seed in range(3):
        features = random_batch(config, seed, size=32, bag=3).sparse
        with torch.no_grad():
            torch.testing.assert_close(model.tables(features.padded()), model.tables(features), rtol=0, atol=0)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rwsadagrad"])
@pytest.mark.parametrize("hidden", [0, 16])
def test_steps_on_padded_bags_train_as_steps_on_the_bags(optimizer: str, hidden: int) -> None:
    """The fused row updates of padding ids (gradient 0) change nothing: SGD and Adagrad, plain and MLET."""
    config = small_config(hidden)
    (plain, plain_opt), (padded, padded_opt) = fused_model(config, optimizer), fused_model(config, optimizer)
    plain_step, padded_step = TrainStep(plain, LOSS, plain_opt), TrainStep(padded, LOSS, padded_opt)
    for seed in range(6):
        batch = random_batch(config, seed)
        assert torch.equal(plain_step(batch), padded_step(padded_bags(batch)))
    for (name, a), b in zip(plain.named_parameters(), padded.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def fake_graph(monkeypatch, step: GraphedTrainStep) -> list[str]:
    """Stand in for the CUDA graph: capture keeps the batch, a replay is an eager step on it; the calls."""
    calls: list[str] = []
    run = TrainStep.__call__  # the eager step itself

    def capture(batch) -> None:
        calls.append("capture")
        step.static_batch, step.static_loss = copy.deepcopy(batch), torch.zeros(())

        def replay() -> None:
            calls.append("replay")
            step.static_loss = run(step, step.static_batch)

        step.graph = SimpleNamespace(replay=replay)

    def side_stream_step(batch) -> torch.Tensor:
        calls.append("warm")
        return run(step, batch)

    def eager_call(self: TrainStep, batch) -> torch.Tensor:
        if self is step:
            calls.append("eager")
        return run(self, batch)

    monkeypatch.setattr(step, "_capture", capture)
    monkeypatch.setattr(step, "_side_stream_step", side_stream_step)
    monkeypatch.setattr(TrainStep, "__call__", eager_call)
    return calls


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rwsadagrad"])
def test_graphed_step_pads_bags_of_varying_length_into_one_graph(optimizer: str, monkeypatch) -> None:
    """From the first warm-up batch with short bags on, every bag of a full-size batch is padded to its longest
    and, after the warm-up, replayed; the losses and the model are those of eager steps on the unpadded batches."""
    config = small_config(hidden=16)
    (eager_model, eager_opt), (graphed_model, graphed_opt) = (
        fused_model(config, optimizer),
        fused_model(config, optimizer),
    )
    reference = TrainStep(eager_model, LOSS, eager_opt)
    step = GraphedTrainStep(graphed_model, LOSS, graphed_opt, warmup=3)
    calls = fake_graph(monkeypatch, step)
    batches = [random_batch(config, seed) for seed in range(10)] + [random_batch(config, 10, size=20)]
    for batch in batches:
        expected = reference(batch)
        assert torch.equal(step(batch), expected)
    assert calls == ["warm"] * 3 + ["capture"] + ["replay"] * 7 + ["eager"]  # the last, smaller batch
    assert step.padding and step.padded_bag_length == 4 and step.static_batch.sparse.indices.numel() == 48 * 4 * 4
    assert step.other_shape_steps == 1
    assert len({bag_id_count(b) for b in batches[:10]}) > 5  # the totals did vary
    for (name, a), b in zip(eager_model.named_parameters(), graphed_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_graphed_step_runs_bags_of_another_longest_length_eagerly(monkeypatch) -> None:
    """Bags without a promised longest length, or of another one, are another shape."""
    config = small_config()
    model, optimizer = fused_model(config, "sgd")
    step = GraphedTrainStep(model, LOSS, optimizer, warmup=1)
    calls = fake_graph(monkeypatch, step)
    batch = random_batch(config, 0)
    unpromised = Batch(batch.dense, dataclasses.replace(random_batch(config, 1).sparse, max_bag=None), batch.labels)
    for each in (batch, random_batch(config, 1), random_batch(config, 2, bag=5), unpromised, random_batch(config, 3)):
        step(each)
    assert calls == ["warm", "capture", "replay", "eager", "eager", "replay"]
    assert step.other_shape_steps == 2


def fixed_batch(config: ModelConfig, seed: int, size: int = 48, bag: int = 2) -> Batch:
    """Upstream's fixed-length random bags: every bag holds ``bag`` ids (all tables have at least as many rows)."""
    source = RandomBatches(size, size, config.table_sizes, 13, indices_per_lookup=bag, fixed=True, seed=seed)
    return Batch(*source.make_batch(0))


def test_graphed_step_keeps_fixed_length_bags_unpadded(monkeypatch) -> None:
    """Bags that all hold their longest (fixed-length bags) are captured as they are; a batch of another
    total then runs eagerly, as a batch of another shape."""
    config = small_config()
    model, optimizer = fused_model(config, "sgd")
    step = GraphedTrainStep(model, LOSS, optimizer, warmup=2)
    calls = fake_graph(monkeypatch, step)
    for seed in range(4):
        step(fixed_batch(config, seed))
    step(random_batch(config, 1, bag=2))
    assert calls == ["warm", "warm", "capture", "replay", "replay", "eager"]
    assert not step.padding and step.static_batch.sparse.weights is None and step.padded_bag_length is None


def test_short_bags_after_fixed_ones_get_one_padded_warm_up_step_before_the_capture(monkeypatch) -> None:
    """The capture must not be the first run of the padded step (its kernels, e.g. the weighted lookup, would
    first launch inside it): short bags seen only when the warm-up is done add one padded warm-up step."""
    config = small_config()
    model, optimizer = fused_model(config, "sgd")
    step = GraphedTrainStep(model, LOSS, optimizer, warmup=2)
    calls = fake_graph(monkeypatch, step)
    warmed: list[bool] = []
    run = step._side_stream_step
    monkeypatch.setattr(
        step, "_side_stream_step", lambda batch: warmed.append(batch.sparse.weights is not None) or run(batch)
    )
    for batch in (
        fixed_batch(config, 0),
        fixed_batch(config, 1),
        random_batch(config, 2, bag=2),
        random_batch(config, 3, bag=2),
    ):
        step(batch)
    assert calls == ["warm", "warm", "warm", "capture", "replay"]
    assert warmed == [False, False, True] and step.padding


def test_quotient_remainder_tables_are_not_padded(monkeypatch) -> None:
    """Their per-table cut of the bags is made on the host: a graph could not follow a total that moves
    between tables, so their batches keep their shape (and run eagerly when it varies)."""
    model, optimizer = fused_model(QR(small_config()), "sgd")
    step = GraphedTrainStep(model, LOSS, optimizer, warmup=1)
    calls = fake_graph(monkeypatch, step)
    first, second = random_batch(model.config, 0), random_batch(model.config, 1)
    assert bag_id_count(first) != bag_id_count(second)
    for batch in (first, first, second, first):
        step(batch)
    assert calls == ["warm", "capture", "replay", "eager", "replay"]
    assert not step.pads_bags and not step.padding
