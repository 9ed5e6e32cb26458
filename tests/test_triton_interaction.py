"""The dot interaction's Triton kernels and the aligned first layers against PyTorch's ops: on a GPU where one is
present, else on the CPU in Triton's interpreter."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from dlrm_model import Interaction, make_mlp, pad_columns, run_mlp
from mlet.kernels import triton_interaction as ti
from mlet.kernels import triton_kernels as tk

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(tk.triton is None, reason="triton is not installed")


@pytest.fixture
def interpret(monkeypatch):
    """Run the kernels on CPU tensors (interpreted) in the tests that ask for it."""
    monkeypatch.setattr(tk, "INTERPRET_ON_CPU", True)


def inputs(batch: int, tables: int, dim: int, seed: int, dense_dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(batch, dim, generator=gen).to(DEVICE, dense_dtype).requires_grad_()
    embedded = torch.randn(batch, tables, dim, generator=gen).to(DEVICE).requires_grad_()
    return dense, embedded


def inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation that undoes ``order``."""
    return tuple(sorted(range(len(order)), key=order.__getitem__))


def torch_interaction(layer: Interaction, dense: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
    """The layer's PyTorch ops, whatever the device: the kernels switched off."""
    with mock.patch.object(ti, "supported", return_value=False):
        return layer(dense.float(), embedded)


@needs_triton
@pytest.mark.usefixtures("interpret")
@pytest.mark.parametrize(
    ("batch", "tables", "dim", "itself", "align"),
    [
        (5, 3, 4, False, 1),  # d below the kernels' 16-wide tiles
        (7, 26, 16, False, 8),  # Criteo: 367 columns padded to 368
        (37, 26, 16, False, 8),  # several programs of 8 samples, the last one partly empty
        (4, 26, 16, True, 8),  # with the diagonal: 394 -> 400
        (3, 5, 40, False, 1),  # d over three passes of 16 columns
        (2, 70, 8, True, 8),  # 71 vectors: the 128-wide tile
        (3, 0, 4, False, 8),  # a process that owns no table: the dense vector alone
    ],
)
def test_kernel_matches_pytorch(batch: int, tables: int, dim: int, itself: bool, align: int) -> None:
    layer = Interaction(tables, "dot", itself).to(DEVICE)
    dense, embedded = inputs(batch, tables, dim, seed=batch + tables)
    if tables > 1:  # the tables' output is a view: T x B x d underneath (plain), T x d x B (MLET's projection)
        underneath = (1, 0, 2) if batch % 2 else (1, 2, 0)
        embedded = embedded.detach().permute(underneath).contiguous().permute(inverse(underneath)).requires_grad_()
    ref_dense, ref_embedded = (t.detach().clone().requires_grad_() for t in (dense, embedded))
    out = layer(dense, embedded, align)
    expected = torch_interaction(layer, ref_dense, ref_embedded)
    width = expected.shape[1]
    assert out.shape == (batch, width + (-width % align))
    torch.testing.assert_close(out[:, :width], expected, rtol=1e-5, atol=1e-5)
    assert torch.all(out[:, width:] == 0)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    out.backward(grad)
    expected.backward(grad[:, :width])
    torch.testing.assert_close(dense.grad, ref_dense.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(embedded.grad, ref_embedded.grad, rtol=1e-5, atol=1e-5)


@needs_triton
@pytest.mark.usefixtures("interpret")
def test_kernel_keeps_bfloat16_dense_vectors_in_bfloat16() -> None:
    """Under ``--bf16`` the bottom MLP's output is bfloat16: the output and its gradient keep that dtype, the tables'
    gradient stays float32, and the values are the float32 interaction's to bfloat16 rounding."""
    layer = Interaction(4, "dot").to(DEVICE)
    dense, embedded = inputs(6, 4, 16, seed=3, dense_dtype=torch.bfloat16)
    out = layer(dense, embedded, 8)
    expected = torch_interaction(layer, dense.detach(), embedded.detach())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out[:, : expected.shape[1]].float(), expected, rtol=1e-2, atol=2e-2)
    out.float().sum().backward()
    assert dense.grad.dtype == torch.bfloat16 and embedded.grad.dtype == torch.float32


@needs_triton
@pytest.mark.skipif(DEVICE == "cuda", reason="the CPU's rule; test_gpu.py runs the GPU's path")
def test_kernels_run_only_where_triton_may_and_the_vectors_fit(monkeypatch) -> None:
    """A CPU tensor takes PyTorch's ops unless the tests interpret the kernels (CPU runs never need Triton);
    more than MAX_FEATURES vectors take them too."""
    dense = torch.zeros(2, 4)
    assert not ti.supported(dense, torch.zeros(2, 3, 4))
    monkeypatch.setattr(tk, "INTERPRET_ON_CPU", True)
    assert ti.supported(dense, torch.zeros(2, ti.MAX_FEATURES - 1, 4))
    assert not ti.supported(dense, torch.zeros(2, ti.MAX_FEATURES, 4))


@needs_triton
@pytest.mark.usefixtures("interpret")
@pytest.mark.parametrize(("dense_shape", "embedded_shape"), [((4, 8), (4, 3, 16)), ((4, 16), (2, 3, 16))])
def test_kernel_refuses_inputs_that_do_not_fit(dense_shape, embedded_shape) -> None:
    """A dense vector of another width or batch than the tables' is refused before any kernel writes."""
    with pytest.raises(ValueError, match="dot interaction: dense"):
        ti.dot_interaction(torch.zeros(dense_shape), torch.zeros(embedded_shape), False, 64)


def test_pair_count_is_the_triangle_the_layer_keeps() -> None:
    for tables in (0, 1, 26):
        for itself in (False, True):
            assert ti.pair_count(tables + 1, itself) == len(Interaction(tables, "dot", itself).flat_pairs)


def test_padded_inputs_give_the_first_layer_the_same_outputs_and_gradients() -> None:
    """``run_mlp`` on an input padded with zero columns (the GPU's aligned widths) is the plain MLP: outputs and
    every parameter's gradient to rounding, and the parameters keep their shapes (checkpoints do not change).
    An input of another width is refused, padded or not; an empty MLP passes its input through."""
    mlp = make_mlp([13, 32, 8], seed=0, salt=0, last_activation=True)
    x = torch.randn(64, 13, generator=torch.Generator().manual_seed(0))
    plain = mlp(x)
    plain.square().sum().backward()
    plain_grads = [p.grad.clone() for p in mlp.parameters()]
    mlp.zero_grad()
    assert pad_columns(x, 8).shape == (64, 16)
    padded = run_mlp(mlp, x, 8)
    padded.square().sum().backward()
    torch.testing.assert_close(padded, plain, rtol=1e-6, atol=1e-6)
    for p, expected in zip(mlp.parameters(), plain_grads):
        assert p.grad.shape == p.shape
        torch.testing.assert_close(p.grad, expected, rtol=1e-6, atol=1e-6)
    for width in (12, 14):
        with pytest.raises(ValueError, match="takes 13 input columns, got"):
            run_mlp(mlp, torch.zeros(2, width), 8)
    assert run_mlp(torch.nn.Sequential(), x, 8) is x


@needs_triton
@pytest.mark.usefixtures("interpret")
def test_model_with_kernels_and_aligned_widths_trains_as_plain_model(make_model, monkeypatch) -> None:
    """The whole model with the interaction kernels and padded first layers (what a GPU runs) gives the logits
    and gradients of the plain CPU model."""
    model = make_model(0, seed=1)
    gen = torch.Generator().manual_seed(2)
    dense = torch.randn(16, 13, generator=gen)
    embedded = torch.randn(16, len(model.config.table_sizes), model.config.dim, generator=gen)
    monkeypatch.setattr(tk, "INTERPRET_ON_CPU", False)
    plain = model.logits(dense, embedded)
    plain.sum().backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    monkeypatch.setattr(tk, "INTERPRET_ON_CPU", True)
    aligned = run_mlp(model.top, model.interaction(run_mlp(model.bottom, dense, 8), embedded, 8), 8)
    aligned.squeeze(-1).sum().backward()
    torch.testing.assert_close(aligned.squeeze(-1), plain, rtol=1e-5, atol=1e-5)
    for name, expected in plain_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, expected, rtol=1e-5, atol=1e-5)
