"""The one-kernel batch cut of device-resident data (``mlet/kernels/triton_batch_cut.py``) against the torch
gathers it replaces: compiled on a GPU where one is present, else on the CPU in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from mlet.core.batch import Share
from mlet.data.device import DeviceArraySource
from mlet.kernels import triton_kernels as tk
from mlet.kernels.triton_batch_cut import cut_batch, cut_usable

pytestmark = pytest.mark.skipif(tk.triton is None, reason="triton is not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROWS, TABLES, DENSE = 500, 5, 13


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (int32, ``ROWS x TABLES``), dense features and labels, on :data:`DEVICE`."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 10_000, (ROWS, TABLES), generator=gen, dtype=torch.int32)
    dense = torch.rand(ROWS, DENSE, generator=gen)
    labels = torch.randint(0, 2, (ROWS,), generator=gen).float()
    return ids.to(DEVICE), dense.to(DEVICE), labels.to(DEVICE)


def some_rows(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randperm(ROWS, generator=torch.Generator().manual_seed(seed))[:n].to(DEVICE)


@pytest.fixture
def kernels(monkeypatch) -> None:
    """Run the kernels on CPU tensors too (interpreted)."""
    monkeypatch.setattr(tk, "INTERPRET_ON_CPU", True)


@pytest.mark.parametrize("n", [1, 64, 150])  # under, at and over one program's rows
def test_the_cut_equals_the_gathers_transpose_and_conversion(n: int, kernels) -> None:
    ids, dense, labels = data()
    rows = some_rows(n)
    assert cut_usable(rows, ids, dense, labels)
    out_ids, out_dense, out_labels = cut_batch(rows, ids, dense, labels)
    assert out_ids.dtype == torch.int64
    assert torch.equal(out_ids, ids[rows].t().reshape(-1).long())
    assert torch.equal(out_dense, dense[rows]) and torch.equal(out_labels, labels[rows])


def test_a_shares_cut_keeps_its_tables_for_every_sample_and_its_samples_dense_features_and_labels(kernels) -> None:
    ids, dense, labels = data(seed=2)
    rows = some_rows(150, seed=3)
    columns = torch.tensor([4, 1, 2], device=DEVICE)
    out_ids, out_dense, out_labels = cut_batch(rows, ids, dense, labels, columns, (70, 140))
    assert torch.equal(out_ids, ids[rows][:, columns].t().reshape(-1).long())
    assert torch.equal(out_dense, dense[rows[70:140]]) and torch.equal(out_labels, labels[rows[70:140]])


@pytest.mark.parametrize("tables", [None, (0, 3)])
def test_device_sources_cut_the_same_batches_and_shares_with_the_kernel_as_without(tables, monkeypatch) -> None:
    """``DeviceArraySource`` takes the kernel where the kernels run, the torch gathers elsewhere: same batches."""
    ids, dense, labels = data(seed=4)
    held = ids if tables is None else ids[:, list(tables)].contiguous()
    source = DeviceArraySource(dense, held, labels, batch_size=96, shuffle=True, seed=5, tables=tables)
    rows = some_rows(96, seed=6)
    share = Share(rank=1, world_size=2, tables=(0, 3))

    def cuts() -> list[torch.Tensor]:
        shard = source.make_share(rows, share)
        assert shard.sparse.features is not None
        parts = [shard.dense, shard.sparse.features.indices, shard.sparse.features.offsets, shard.labels]
        if tables is None:
            batch = source.make_batch(rows)
            parts += [batch.dense, batch.sparse.indices, batch.sparse.offsets, batch.labels]
        return parts

    expected = cuts()
    monkeypatch.setattr(tk, "INTERPRET_ON_CPU", True)
    assert cut_usable(rows, held, dense, labels)
    for got, want in zip(cuts(), expected, strict=True):
        assert torch.equal(got, want)
