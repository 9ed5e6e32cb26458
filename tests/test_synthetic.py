"""Generated data: random batches and the synthetic click model, and learning on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import dlrm_mlet
from mlet.core.config import RandomConfig
from mlet.data import synthetic as synthetic_data
from mlet.data.synthetic import ClickModel, ClickModelConfig, RandomBatches

SMALL = "2000-1000-500-200-100-50-20-5"


@pytest.mark.slow
def test_click_model_is_deterministic_and_calibrated() -> None:
    config = ClickModelConfig(table_sizes=(500, 40, 7), seed=3)
    a = ClickModel(config).sample(20_000, seed=1)
    b = ClickModel(config).sample(20_000, seed=1)
    c = ClickModel(config).sample(20_000, seed=2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])
    counts, ids, labels = a
    assert counts.dtype == np.int64 and (counts >= 0).all() and counts.shape == (20_000, 13)
    assert ids.shape == (20_000, 3) and (ids >= 0).all() and (ids < np.array([500, 40, 7])).all()
    assert abs(labels.mean() - 0.25) < 0.02


def test_click_model_popularity_is_long_tailed() -> None:
    _, ids, _ = ClickModel(ClickModelConfig(table_sizes=(5000,), seed=0)).sample(50_000, seed=0)
    frequency = np.sort(np.bincount(ids[:, 0], minlength=5000))[::-1]
    assert frequency[:50].sum() > 0.3 * len(ids)  # a head ...
    assert (frequency == 0).sum() > 500  # ... and a tail of unseen values


def test_chunked_sampling_equals_one_piece(monkeypatch) -> None:
    monkeypatch.setattr(synthetic_data, "SAMPLE_CHUNK", 300)
    model = ClickModel(ClickModelConfig(table_sizes=(100, 10), seed=5))
    chunks = list(model.sample_chunks(1000, seed=4))
    assert [len(c[2]) for c in chunks] == [300, 300, 300, 100]
    whole = model.sample(1000, seed=4)
    for i, part in enumerate(whole):
        np.testing.assert_array_equal(part, np.concatenate([c[i] for c in chunks]))


def test_random_batches_any_order_and_bag_sizes() -> None:
    source = RandomBatches(100, 32, [50, 5], 13, indices_per_lookup=3, fixed=False, seed=1)
    assert len(source) == 4
    dense, sparse, labels = source.make_batch(3)
    assert dense.shape == (4, 13) and labels.shape == (4,) and sparse.batch_size == 4
    again = source.make_batch(3)[1]
    assert torch.equal(sparse.indices, again.indices) and torch.equal(sparse.offsets, again.offsets)
    lengths = sparse.offsets.diff()
    assert lengths.min() >= 1 and lengths.max() <= 3
    bounds = sparse.table_boundaries()
    assert sparse.indices[bounds[1] :].max() < 5


def upstream_gaussian_ids(draws: np.ndarray, low: float, high: float, rows: np.ndarray) -> np.ndarray:
    """Upstream's rule on standard-normal-scaled ``draws``: clip to [low, high], truncate (astype); and here the
    table's rows bound them too."""
    return np.minimum(np.clip(draws, low, high).astype(np.int64), rows - 1)


@pytest.mark.parametrize(("low", "high", "mu", "sigma"), [(0.0, 1.0, -1.0, 1.0), (2.0, 40.0, 9.5, 6.0)])
def test_gaussian_ids_follow_upstreams_rule(low: float, high: float, mu: float, sigma: float) -> None:
    """Each id is N(mu, sigma) (mu -1: the middle of [low, high]) clipped and truncated as upstream's numpy code
    does, on the same draws; a table smaller than --rand-data-max bounds its ids."""
    random = RandomConfig("gaussian", low, high, mu, sigma)
    source = RandomBatches(10, 10, [100], 13, random=random)
    rows = torch.tensor([100] * 3000 + [7] * 3000)
    ids = source.draw_ids(rows, torch.Generator().manual_seed(5))
    centre = (low + high) / 2 if mu == -1 else mu
    draws = torch.randn(6000, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * sigma + centre
    np.testing.assert_array_equal(ids.numpy(), upstream_gaussian_ids(draws.numpy(), low, high, rows.numpy()))
    assert ids.min() >= low and ids[:3000].max() <= high and ids[3000:].max() <= 6
    if mu != -1:  # mostly inside [low, high]: the mean of truncated N(9.5, 6) is near 9
        assert abs(ids[:3000].float().mean().item() - 9.0) < 0.5


def test_random_ids_uniform_by_default_and_gaussian_when_asked() -> None:
    """Uniform ids spread over the table; gaussian ids of upstream's defaults (N(0.5, 1) within [0, 1]) are 0 or 1."""
    uniform = RandomBatches(2000, 2000, [1000], 13, indices_per_lookup=1).make_batch(0)[1].indices
    assert uniform.max() > 900 and uniform.unique().numel() > 500
    gaussian = RandomBatches(2000, 2000, [1000], 13, indices_per_lookup=1, random=RandomConfig("gaussian"))
    ids = gaussian.make_batch(0)[1].indices
    assert set(ids.unique().tolist()) == {0, 1}


def test_random_labels_soft_unless_rounded() -> None:
    """Upstream's labels: a uniform draw per sample, rounded to 0/1 with --round-targets (the same draws)."""
    soft = RandomBatches(4000, 4000, [50], 13, seed=3).make_batch(0)[2]
    hard = RandomBatches(4000, 4000, [50], 13, seed=3, random=RandomConfig(round_targets=True)).make_batch(0)[2]
    assert soft.min() >= 0 and soft.max() < 1 and soft.unique().numel() > 3000
    assert torch.equal(hard, soft.round()) and set(hard.unique().tolist()) == {0.0, 1.0}
    assert abs(hard.mean().item() - 0.5) < 0.05


def train_synthetic(tmp_path, dim: int) -> dict:
    out = tmp_path / f"d{dim}.json"
    argv = [
        "--data-generation=synthetic",
        f"--arch-embedding-size={SMALL}",
        f"--arch-sparse-feature-size={dim}",
        f"--arch-mlp-bot=13-32-{dim}",
        "--arch-mlp-top=64-32-1",
        "--data-size=100000",
        "--test-data-size=20000",
        "--mini-batch-size=256",
        "--optimizer=adagrad",
        "--learning-rate=0.05",
        "--progress=false",
        f"--results-json={out}",
    ]
    assert dlrm_mlet.main(argv) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_synthetic_model_is_learnt_and_width_matters(tmp_path) -> None:
    wide, narrow = train_synthetic(tmp_path, 16), train_synthetic(tmp_path, 2)
    assert wide["final"]["auc"] > 0.75
    assert wide["final"]["auc"] - narrow["final"]["auc"] > 0.03
    assert "synthetic click model" in wide["data"]
