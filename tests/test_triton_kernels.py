"""Triton kernels against the PyTorch ops they replace: compiled on a GPU where one is present, else on the CPU
in Triton's interpreter."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import random_inputs, train_random_steps

import mlet_layers
from dlrm_model import DLRM
from mlet.core.batch import SparseFeatures
from mlet.core.config import ModelConfig
from mlet.kernels import triton_kernels as tk
from mlet.model import lookup
from mlet.training.optimizers import RowSGD, build_optimizer

pytestmark = pytest.mark.skipif(tk.triton is None, reason="triton is not installed")


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    """Run the kernels on CPU tensors (interpreted) in this module's tests only."""
    monkeypatch.setattr(tk, "INTERPRET_ON_CPU", True)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
cpu_interpreter_only = pytest.mark.skipif(
    DEVICE == "cuda", reason="runs the CPU model in the interpreter; tests/test_gpu.py covers the GPU path"
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int) -> torch.Tensor:
    """Seeded standard normal values on :data:`DEVICE`."""
    return torch.randn(*shape, generator=gen(seed)).to(DEVICE)


def test_gather_rows_equals_indexing() -> None:
    weight = randn(300, 20, seed=0)
    ids = torch.randint(0, 300, (257,), generator=gen(1)).to(DEVICE)
    assert torch.equal(tk.gather_rows(weight, ids), weight[ids])


def test_take_rows_equals_indexing_for_any_rows_and_layout() -> None:
    x = randn(40, 16, seed=4)
    rows = torch.randperm(40, generator=gen(5)).to(DEVICE)
    assert torch.equal(tk.take_rows(x, rows), x[rows])
    assert tk.take_rows(x, rows[:0]).shape == (0, 16)
    columns_strided = randn(16, 40, seed=6).t()  # not the kernel's layout: index_select takes it
    assert torch.equal(tk.take_rows(columns_strided, rows), columns_strided[rows])


def test_scatter_sub_rows_with_repeated_rows() -> None:
    weight = randn(50, 7, seed=2)
    ids = torch.tensor([3, 9, 3, 3, 49, 0], device=DEVICE)
    grads = randn(6, 7, seed=3)
    expected = weight.clone().index_add_(0, ids, grads * -0.25)
    tk.scatter_sub_rows(weight, ids, grads, torch.tensor(0.25, device=DEVICE))
    torch.testing.assert_close(weight, expected, rtol=1e-6, atol=1e-6)


def test_padding_bags_in_one_kernel_equals_the_torch_padding() -> None:
    """The kernel's layout is ``SparseFeatures.padded``'s: ids, weights and offsets, empty bags included."""
    lengths = torch.tensor([3, 0, 1, 10, 7, 0, 2, 10, 5])
    indices = torch.randint(0, 1000, (int(lengths.sum()),), generator=gen(8))
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    features = SparseFeatures(indices.to(DEVICE), offsets.to(DEVICE), num_tables=3, max_bag=10)
    expected = features.padded()
    ids, weights = tk.pad_bags(features.indices, features.offsets, 10)
    assert torch.equal(ids, expected.indices) and torch.equal(weights, expected.weights)
    got = lookup.padded(features)  # the kernel's, not the PyTorch layout's (which would give the same)
    assert torch.equal(got.indices, ids) and torch.equal(got.offsets, expected.offsets)
    assert (got.num_tables, got.max_bag) == (3, 10)


def test_padding_on_a_kernel_device_takes_the_kernel(monkeypatch) -> None:
    features = SparseFeatures(torch.tensor([4, 2]).to(DEVICE), torch.tensor([0, 1, 2]).to(DEVICE), 1, max_bag=3)
    monkeypatch.setattr(SparseFeatures, "padded", lambda self: pytest.fail("the PyTorch padding ran"))
    assert lookup.padded(features).indices.tolist() == [4, 4, 4, 2, 2, 2]


def test_scatter_sub_rows_takes_each_ids_source_row_and_scale() -> None:
    """A multi-hot backward's form: each id takes its bag's gradient row, times its weight; an id of weight 0
    (padding) adds nothing, not even a signed zero."""
    weight = randn(50, 7, seed=6)
    ids = torch.tensor([3, 9, 3, 3, 49, 0, 12], device=DEVICE)
    bag_grads = randn(3, 7, seed=7)
    sources = torch.tensor([0, 0, 1, 2, 2, 1, 0], device=DEVICE)
    scales = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 1.0, 0.0], device=DEVICE)
    expected = weight.clone().index_add_(0, ids, bag_grads[sources] * scales[:, None] * -0.25)
    weight[12] = -0.0
    expected[12] = -0.0
    tk.scatter_sub_rows(weight, ids, bag_grads, torch.tensor(0.25, device=DEVICE), sources, scales)
    torch.testing.assert_close(weight, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(weight[12].signbit(), torch.ones(7, dtype=torch.bool, device=DEVICE))  # untouched


@pytest.mark.parametrize(
    ("groups", "m", "k", "n", "splits"), [(3, 50, 64, 4, 1), (2, 33, 20, 16, 1), (2, 64, 300, 5, 3)]
)
def test_grouped_matmul_equals_bmm(groups: int, m: int, k: int, n: int, splits: int) -> None:
    a = randn(groups, m, k, seed=4)
    b = randn(groups, k, n, seed=5)
    torch.testing.assert_close(tk.grouped_matmul(a, b, splits), torch.bmm(a, b), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(
        tk.grouped_matmul(b.transpose(1, 2), a.transpose(1, 2)),
        torch.bmm(b.transpose(1, 2), a.transpose(1, 2)),
        rtol=1e-5,
        atol=1e-4,
    )


@pytest.mark.parametrize(("tables", "batch", "hidden", "dim"), [(3, 50, 64, 4), (2, 2100, 20, 16), (2, 7, 8, 64)])
def test_gathered_projection_and_weight_gradient_equal_bmm(tables: int, batch: int, hidden: int, dim: int) -> None:
    """MLET's forward and projection gradient straight from the table rows equal bmm on gathered rows
    (rows repeat; the batch of 2100 splits the gradient's reduction in two)."""
    weight = randn(400, hidden, seed=11)
    ids = torch.randint(0, 400, (tables * batch,), generator=gen(12)).to(DEVICE)
    projection = randn(tables, hidden, dim, seed=13)
    grad_out = randn(batch, tables, dim, seed=14).transpose(0, 1)  # strided, as autograd hands it over
    pooled = weight[ids].view(tables, batch, hidden)
    torch.testing.assert_close(
        tk.gather_project(weight, ids, projection), torch.bmm(pooled, projection), rtol=1e-5, atol=1e-4
    )
    expected_grad = torch.bmm(pooled.transpose(1, 2).double(), grad_out.double()).float()
    # sums of up to 2100 unit-size products: float32 rounding alone reaches ~1e-4, a wrong row O(1)
    torch.testing.assert_close(tk.gathered_weight_gradient(weight, ids, grad_out), expected_grad, rtol=1e-5, atol=1e-3)


def test_kernels_follow_the_tf32_flag() -> None:
    """IEEE products by default; TF32 exactly when PyTorch's matmuls may use it (``--tf32``),
    and then the results stay within TF32 rounding of the float64 product."""
    assert tk.dot_precision() == "ieee"
    weight, projection = randn(300, 64, seed=15), randn(2, 64, 16, seed=16)
    ids = torch.randint(0, 300, (2 * 100,), generator=gen(17)).to(DEVICE)
    expected = torch.bmm(weight[ids].view(2, 100, 64).double(), projection.double()).float()
    ieee = tk.gather_project(weight, ids, projection)
    torch.backends.cuda.matmul.allow_tf32 = True  # the torch object does not support monkeypatch's undo
    try:
        assert tk.dot_precision() == "tf32"
        tf32 = tk.gather_project(weight, ids, projection)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.testing.assert_close(tf32, expected, rtol=1e-2, atol=5e-2)
    if DEVICE == "cuda":  # the interpreter computes in float32 whatever the precision asked for
        assert not torch.equal(tf32, ieee)


@pytest.mark.parametrize(
    "projection_fn", [tk.GroupedProjection.apply, mlet_layers._BatchedProjection.apply], ids=["triton", "torch"]
)
@pytest.mark.parametrize("d", [4, 16])
def test_projection_gradients_equal_bmm(projection_fn, d: int) -> None:
    pooled = randn(3, 40, 8, seed=6).requires_grad_(True)
    projection = randn(3, 8, d, seed=7).requires_grad_(True)
    upstream = randn(40, 3, d, seed=8).transpose(0, 1)  # as the model's (B, T, d) view hands it back
    out = projection_fn(pooled, projection)
    out.backward(upstream)
    p2, w2 = pooled.detach().clone().requires_grad_(True), projection.detach().clone().requires_grad_(True)
    expected = torch.bmm(p2, w2)
    expected.backward(upstream)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled.grad, p2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(projection.grad, w2.grad, rtol=1e-5, atol=1e-5)


@cpu_interpreter_only
@pytest.mark.parametrize(
    ("hidden", "bag", "optimizer"),
    [(0, 1, "sgd"), (16, 1, "sgd"), (0, 4, "sgd"), (16, 4, "sgd"), (16, 1, "adagrad"), (0, 4, "rwsadagrad")],
)
def test_fused_training_with_kernels_equals_pytorch_ops(
    make_model, monkeypatch, hidden: int, bag: int, optimizer: str
) -> None:
    """Five steps: kernels (interpreted) vs the PyTorch ops they replace; multi-hot bags (``bag`` 4) take the SGD
    update fed the bag gradients (``RowSGD.scatter_bags``), one-hot plain tables the update by table
    (``RowSGD.scatter_tables``); the Adagrads gather their rows with ``take_rows``."""
    reference = make_model(hidden, seed=5)
    model = copy.deepcopy(reference)
    losses = {}
    calls: dict[str, list[int]] = {"scatter_bags": [], "scatter_tables": []}
    for method, seen in calls.items():
        original = getattr(RowSGD, method)
        monkeypatch.setattr(RowSGD, method, lambda *a, seen=seen, original=original: seen.append(1) or original(*a))
    for name, net, use_kernels in (("torch", reference, False), ("triton", model, True)):
        monkeypatch.setattr(tk, "INTERPRET_ON_CPU", use_kernels)
        opt = build_optimizer(optimizer, 0.2, net.sparse_parameters(), net.dense_parameters(), fused_tables=net.tables)
        losses[name] = train_random_steps(net, opt, 5, batch=24, bag=bag)
    assert len(calls["scatter_bags"]) == (5 if bag > 1 and optimizer == "sgd" else 0)
    assert len(calls["scatter_tables"]) == (5 if bag == 1 and hidden == 0 and optimizer == "sgd" else 0)
    assert max(abs(a - b) for a, b in zip(losses["torch"], losses["triton"])) < 1e-5
    for (n, a), b in zip(reference.named_parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=n)


@pytest.mark.parametrize(
    "reduction",
    [
        {"qr_flag": True, "qr_threshold": 10, "qr_collisions": 4},  # remainder tables of 4 rows: summed per row
        {"qr_flag": True, "qr_threshold": 10, "qr_collisions": 4, "mlet_hidden": 8},
        {"md_dims": (4, 2, 4, 2)},
    ],
    ids=["qr", "mlet-qr", "md"],
)
def test_composite_tables_train_with_kernels_as_with_pytorch_ops(monkeypatch, reduction: dict) -> None:
    """Quotient-remainder and mixed-dimension groups take the one-hot updates by table too (their groups'
    own row bounds): five SGD steps equal the PyTorch ops'."""
    config = ModelConfig(table_sizes=(50, 7, 300, 2), dim=4, bottom_mlp=(13, 16, 4), top_mlp=(8, 1), **reduction)
    reference = DLRM(config, seed=3)
    model = copy.deepcopy(reference)
    losses = {}
    for name, net, use_kernels in (("torch", reference, False), ("triton", model, True)):
        monkeypatch.setattr(tk, "INTERPRET_ON_CPU", use_kernels)
        tables = net.table_modules()  # as the trainer hands them over: a composite's groups
        opt = build_optimizer("sgd", 0.2, net.sparse_parameters(), net.dense_parameters(), fused_tables=tables)
        losses[name] = train_random_steps(net, opt, 5, batch=24)
    assert max(abs(a - b) for a, b in zip(losses["torch"], losses["triton"])) < 1e-5
    for (n, a), b in zip(reference.named_parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=n)


def table_major_ids(sizes: list[int], batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Global rows of a one-hot batch of ``batch`` lookups per table (tables of ``sizes`` rows), table-major,
    and the tables' row bounds."""
    bounds = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()])
    ids = torch.cat([torch.randint(0, n, (batch,), generator=gen(seed + t)) + bounds[t] for t, n in enumerate(sizes)])
    return ids.to(DEVICE), bounds.to(DEVICE)


SIZES = [3, 40, 30]  # 3 and 30 rows: tiny tables, summed per row first; 40: the atomic add per lookup
assert SIZES[1] > tk.TINY_TABLE_ROWS >= SIZES[2]


@pytest.mark.parametrize("tiny_rows", [tk.TINY_TABLE_ROWS, 0])  # 0: every table lookup by lookup
@pytest.mark.parametrize("d", [4, 64])  # 64: the launch with a narrower K chunk
def test_project_scatter_sub_equals_explicit_update(d: int, tiny_rows: int) -> None:
    batch, hidden = 150, 24  # 150: three programs of 64, the last one part-filled
    weight = randn(sum(SIZES), hidden, seed=9)
    projection = randn(len(SIZES), hidden, d, seed=10)
    ids, bounds = table_major_ids(SIZES, batch, seed=11)
    grad_out = randn(batch, len(SIZES), d, seed=12).transpose(0, 1)  # non-contiguous, as autograd gives it
    rows = torch.bmm(grad_out, projection.transpose(1, 2)).reshape(-1, hidden)
    expected = weight.clone().index_add_(0, ids, rows * -0.1)
    lr = torch.tensor(0.1, device=DEVICE)
    tk.project_scatter_sub(weight, ids, grad_out, projection, bounds, lr, tiny_rows=tiny_rows)
    torch.testing.assert_close(weight, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tiny_rows", [tk.TINY_TABLE_ROWS, 0])
@pytest.mark.parametrize("d", [7, 16])
def test_scatter_sub_table_rows_equals_explicit_update(d: int, tiny_rows: int) -> None:
    batch = 150  # three programs of 64, the last one part-filled
    weight = randn(sum(SIZES) + 5, d, seed=13)  # rows past the last table stay as they are
    ids, bounds = table_major_ids(SIZES, batch, seed=14)
    grad_out = randn(batch, len(SIZES), d, seed=15).transpose(0, 1)
    expected = weight.clone().index_add_(0, ids, grad_out.reshape(-1, d) * -0.1)
    tk.scatter_sub_table_rows(weight, ids, grad_out, bounds, torch.tensor(0.1, device=DEVICE), tiny_rows=tiny_rows)
    torch.testing.assert_close(weight, expected, rtol=1e-5, atol=1e-5)


def test_tiny_rows_beyond_the_kernels_slots_is_refused() -> None:
    weight = randn(10, 4, seed=16)
    ids, bounds = table_major_ids([10], 8, seed=17)
    with pytest.raises(ValueError, match=r"tiny_rows must be in 0\.\.32, got 33"):
        tk.scatter_sub_table_rows(weight, ids, randn(1, 8, 4, seed=18), bounds, torch.tensor(0.1), tiny_rows=33)


@cpu_interpreter_only
def test_second_pending_fused_mlet_backward_fails_loudly(make_model) -> None:
    """Two forwards, then two backwards: the first updates W1 in place, so the second would
    form W2's gradient from updated rows; it must raise instead of training on wrong gradients."""
    model = make_model(16)
    build_optimizer("sgd", 0.1, model.sparse_parameters(), model.dense_parameters(), fused_tables=model.tables)
    dense, sparse = random_inputs(model.config, batch=8, seed=0)
    first, second = model(dense, sparse).sum(), model(dense, sparse).sum()
    first.backward()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        second.backward()


@cpu_interpreter_only
def test_fused_mlet_path_is_taken(make_model, monkeypatch) -> None:
    model = make_model(16)
    build_optimizer("sgd", 0.1, model.sparse_parameters(), model.dense_parameters(), fused_tables=model.tables)
    _, one_hot = random_inputs(model.config, batch=8, seed=0)
    _, multi_hot = random_inputs(model.config, batch=8, seed=0, bag=2)
    assert model.tables._fused_mlet_path(one_hot)
    assert not model.tables._fused_mlet_path(multi_hot)
    monkeypatch.setattr(tk, "INTERPRET_ON_CPU", False)
    assert not model.tables._fused_mlet_path(one_hot)
