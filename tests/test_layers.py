"""Embedding tables: MLET forward/backward, collapse, fused layout, init."""

from __future__ import annotations

import pytest
import torch
from helpers import random_inputs, small_config, train_random_steps

from dlrm_model import DLRM
from mlet.core.batch import SparseFeatures
from mlet.model import init, lookup
from mlet.training.optimizers import build_optimizer
from mlet_layers import EmbeddingTables, parse_projection_init, table_seed


def reference_embeddings(tables: EmbeddingTables, features: SparseFeatures) -> torch.Tensor:
    """Per-bag loop over explicit ``W1[idx] @ W2`` (or ``E[idx]``): B x T x d."""
    batch = features.batch_size
    out = torch.zeros(batch, tables.num_tables, tables.dim, dtype=tables.weight.dtype)
    for t in range(tables.num_tables):
        rows = tables.table_weight(t)
        for b in range(batch):
            lo, hi = features.offsets[t * batch + b], features.offsets[t * batch + b + 1]
            idx = features.indices[lo:hi]
            emb = rows[idx] @ tables.projection[t] if tables.is_mlet else rows[idx]
            out[b, t] = emb.sum(0)
    return out


@pytest.mark.parametrize("hidden", [0, 32])
@pytest.mark.parametrize("bag", [1, 3])
def test_forward_matches_per_bag_reference(hidden: int, bag: int) -> None:
    config = small_config(hidden)
    tables = EmbeddingTables(config.table_sizes, config.dim, hidden, seed=3)
    _, features = random_inputs(config, batch=9, seed=11, bag=bag)
    torch.testing.assert_close(tables(features), reference_embeddings(tables, features), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bag", [1, 4])
def test_mlet_gradients_match_explicit_product(bag: int) -> None:
    """Sparse W1 gradient and dense W2 gradient equal autograd through W1[idx] @ W2."""
    config = small_config(32)
    tables = EmbeddingTables(config.table_sizes, config.dim, 32, seed=5)
    _, features = random_inputs(config, batch=7, seed=2, bag=bag)
    upstream = torch.randn(7, tables.num_tables, tables.dim, generator=torch.Generator().manual_seed(9))
    (tables(features) * upstream).sum().backward()
    assert tables.weight.grad.is_sparse
    w1 = tables.weight.detach().clone().requires_grad_(True)
    w2 = tables.projection.detach().clone().requires_grad_(True)
    explicit = EmbeddingTables(config.table_sizes, config.dim, 32, seed=None)
    explicit.weight, explicit.projection = torch.nn.Parameter(w1), torch.nn.Parameter(w2)
    (reference_embeddings(explicit, features) * upstream).sum().backward()
    torch.testing.assert_close(tables.weight.grad.to_dense(), explicit.weight.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tables.projection.grad, explicit.projection.grad, rtol=1e-5, atol=1e-6)
    assert explicit.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bag", [1, 5])
def test_collapsed_model_matches_two_layer_model(make_model, bag: int) -> None:
    model = make_model(64, seed=7)
    with torch.no_grad():  # a trained-looking table: not the small init
        model.tables.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    plain = model.collapse()
    assert not plain.tables.is_mlet and plain.config.mlet_hidden == 0
    assert plain.tables.weight.shape == (sum(model.config.table_sizes), 4)
    dense, features = random_inputs(model.config, batch=256, seed=4, bag=bag)
    with torch.no_grad():
        logits = model(dense, features)
        diff = (logits - plain(dense, features)).abs().max().item()
    assert logits.std() > 0.1  # outputs vary: the comparison is not of constants
    assert diff <= 1e-5
    # the collapsed state loads into a freshly built baseline model
    baseline = DLRM(plain.config, seed=99)
    baseline.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(baseline(dense, features), plain(dense, features), rtol=0, atol=0)


def test_collapse_is_independent_copy(make_model) -> None:
    model = make_model(16)
    plain = model.collapse()
    with torch.no_grad():
        plain.top[0].weight.add_(1.0)
    assert not torch.equal(plain.top[0].weight, model.top[0].weight)


def train_steps(model: DLRM, steps: int, lr: float = 0.5) -> list[float]:
    opt = build_optimizer(
        "sgd", lr, model.sparse_parameters(), {n: p for n, p in model.dense_parameters().items() if p.requires_grad}
    )
    return train_random_steps(model, opt, steps, batch=32)


def test_mlet_with_identity_projection_reproduces_baseline(make_model) -> None:
    """K = d and W2 = I (frozen): same initial rows, same outputs, same training trajectory."""
    baseline, mlet = make_model(0, seed=21), make_model(4, seed=21)
    with torch.no_grad():
        mlet.tables.projection.copy_(torch.eye(4).expand(mlet.tables.num_tables, 4, 4))
    mlet.tables.projection.requires_grad_(False)
    assert torch.equal(baseline.tables.weight, mlet.tables.weight)
    assert train_steps(baseline, 20) == train_steps(mlet, 20)
    assert torch.equal(baseline.tables.weight, mlet.tables.weight)
    assert torch.equal(baseline.top[0].weight, mlet.top[0].weight)


def test_table_init_depends_only_on_seed_and_table_id() -> None:
    full = EmbeddingTables([10, 20, 30], 4, 8, seed=42)
    shard = EmbeddingTables([30, 10], 4, 8, seed=42, table_ids=[2, 0])
    assert torch.equal(shard.table_weight(0), full.table_weight(2))
    assert torch.equal(shard.table_weight(1), full.table_weight(0))
    assert torch.equal(shard.projection[0], full.projection[2])
    bound = (1.0 / 30) ** 0.5
    assert full.table_weight(2).abs().max() <= bound
    assert full.table_weight(2).abs().max() > 0.8 * bound


def test_a_table_of_one_chunk_draws_one_generator_stream() -> None:
    # what EmbeddingTables drew before the rows came in chunks: a seed's tables small enough start as they did
    tables = EmbeddingTables([500, 70], 8, seed=5)
    bound = (1.0 / 500) ** 0.5
    stream = torch.empty(500, 8).uniform_(-bound, bound, generator=torch.Generator().manual_seed(table_seed(5, 0)))
    assert torch.equal(tables.table_weight(0), stream)


def test_table_rows_in_chunks_do_not_depend_on_the_cores(monkeypatch) -> None:
    monkeypatch.setattr(init, "_CHUNK_VALUES", 64)  # 16 rows a chunk at width 4
    many = EmbeddingTables([100, 7, 40], 4, seed=9)
    monkeypatch.setattr(init.os, "sched_getaffinity", lambda _: {0})  # one worker: chunk after chunk
    one = EmbeddingTables([100, 7, 40], 4, seed=9)
    assert torch.equal(many.weight, one.weight)
    rows, bound, seed = many.table_weight(0), (1.0 / 100) ** 0.5, table_seed(9, 0)
    for chunk, start in enumerate(range(0, 100, 16)):
        gen = torch.Generator().manual_seed(init.chunk_seed(seed, chunk))
        expected = torch.empty(min(16, 100 - start), 4).uniform_(-bound, bound, generator=gen)
        assert torch.equal(rows[start : start + 16], expected)
    assert len({init.chunk_seed(seed, c) for c in range(1000)}) == 1000  # no two chunks of a table share a seed


def test_a_failing_chunk_is_reported(monkeypatch) -> None:
    monkeypatch.setattr(init, "_CHUNK_VALUES", 64)
    rows = torch.empty(100, 4, dtype=torch.int64)  # uniform_ refuses integer rows, in a worker thread
    with pytest.raises(RuntimeError):
        init.uniform_rows_([(rows, 0.1, 1)])


@pytest.mark.parametrize(
    ("spec", "kind", "std"),
    [("normal", "normal", 0.25), ("normal-0.1", "normal", 0.1), ("xavier", "xavier", 0.0)],
)
def test_projection_init_specs(spec: str, kind: str, std: float) -> None:
    assert parse_projection_init(spec) == (kind, std)


@pytest.mark.parametrize("spec", ["normal-0", "normal--1", "normal-x", "uniform", "normal-nan"])
def test_bad_projection_init_rejected(spec: str) -> None:
    with pytest.raises(ValueError, match="normal-STD"):
        parse_projection_init(spec)


def test_projection_init_statistics() -> None:
    tables = EmbeddingTables([5] * 8, 16, 256, projection_init="normal-0.1", seed=0)
    assert abs(tables.projection.std().item() - 0.1) < 0.005
    xavier = EmbeddingTables([5] * 8, 16, 256, projection_init="xavier", seed=0)
    bound = (6.0 / (256 + 16)) ** 0.5
    assert xavier.projection.abs().max() <= bound and xavier.projection.abs().max() > 0.95 * bound


def test_select_tables_keeps_bags() -> None:
    config = small_config(0)
    _, features = random_inputs(config, batch=6, seed=8, bag=3)
    tables = EmbeddingTables(config.table_sizes, config.dim, seed=1)
    full = tables(features)
    sub = features.select_tables([2, 0])
    sub_tables = EmbeddingTables([config.table_sizes[2], config.table_sizes[0]], config.dim, seed=1, table_ids=[2, 0])
    torch.testing.assert_close(sub_tables(sub), full[:, [2, 0]], rtol=0, atol=0)


def test_batch_with_wrong_table_count_is_reported() -> None:
    tables = EmbeddingTables([5, 5], 4)
    with pytest.raises(ValueError, match="3 sparse features, the model 2 tables"):
        tables(SparseFeatures.from_ids(torch.zeros(4, 3, dtype=torch.int64)))


def test_one_hot_row_shift_of_a_batch_size_outlives_batches_of_other_sizes() -> None:
    """A CUDA graph captured on one batch size reads that size's row shift at every replay: a batch of another
    size (an epoch's last batch, a test batch) must not free it (it did, and a GPU run's second epoch looked
    rows up at freed memory: an illegal memory access, or silently wrong rows)."""
    row_offsets = torch.tensor([0, 5, 12, 20])
    cache: dict[tuple, torch.Tensor] = {}
    captured = lookup.one_hot_shift(row_offsets, 4, cache)
    for other in (3, 16, 4, 7):
        lookup.one_hot_shift(row_offsets, other, cache)
    assert lookup.one_hot_shift(row_offsets, 4, cache) is captured
    assert captured.tolist() == [0] * 4 + [5] * 4 + [12] * 4
