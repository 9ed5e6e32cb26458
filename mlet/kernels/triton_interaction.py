"""DLRM's dot interaction as one Triton kernel forward and one backward.

In PyTorch the interaction is a chain of small kernels: concatenate the dense
vector with the table vectors, a batched product of 27 x 16 matrices, pick the
lower triangle (``index_select``), concatenate the dense vector in front; its
backward adds ``index_add`` into a zeroed buffer (23 us per step at batch
8192 on an H200, more than the forward's product), two batched products and
the concatenations' slices (``bench/NOTES.md``). Here one program per sample
loads the sample's ``T + 1`` vectors once, forms their products with
``tl.dot`` and writes the output row - dense vector, lower triangle and the
zero columns that round its width up to an aligned one - directly; the
backward reads the triangle back as a symmetric matrix and multiplies it by
the same vectors. Products accumulate in float32 (TF32 exactly when
``--tf32`` lets PyTorch's matmuls use it); the output has the dense vector's
dtype (bfloat16 under ``--bf16``), the gradients their inputs' dtypes.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch
from torch import Tensor

from mlet.kernels.triton_kernels import dot_precision, triton, usable

if triton is not None:
    import triton.language as tl

    # Helpers the kernels call: module globals, where Triton resolves the names a kernel uses.
    @triton.jit
    def _load_features(x, e, b, kk, f, num_features, d, s_xb, s_eb, s_et):
        """The sample's vectors as rows (FP x BD, float32): row 0 the dense vector, rows 1..T the tables'."""
        k_ok = kk < d
        dense = tl.load(x + b * s_xb + kk, mask=k_ok, other=0.0).to(tl.float32)
        table = tl.maximum(f - 1, 0).to(tl.int64)
        rows_ok = (f >= 1) & (f < num_features)
        tables = tl.load(
            e + b * s_eb + table[:, None] * s_et + kk[None, :], mask=rows_ok[:, None] & k_ok[None, :], other=0.0
        ).to(tl.float32)
        return dense, tl.where((f == 0)[:, None], dense[None, :], tables)

    @triton.jit
    def _pair_position(i, j, ITSELF: tl.constexpr):  # noqa: N803
        """Column (after the dense vector) of the product of vectors i >= j, in ``tril_indices`` order."""
        if ITSELF:
            return i * (i + 1) // 2 + j
        return i * (i - 1) // 2 + j


MAX_FEATURES = 128
"""Most vectors (tables + 1) the kernels take: a program holds their square
of products in registers. Wider interactions use PyTorch's ops."""


@torch.compiler.disable  # under --compile the kernels run as they are, between the compiled MLPs
def supported(dense: Tensor, embedded: Tensor) -> bool:
    """True when the kernels can compute this interaction (device, and at most :data:`MAX_FEATURES` vectors)."""
    return usable(dense, embedded) and embedded.shape[1] + 1 <= MAX_FEATURES


def pair_count(num_features: int, itself: bool) -> int:
    """How many products the interaction keeps: the strict lower triangle, or with the diagonal when ``itself``."""
    return num_features * (num_features + 1) // 2 if itself else num_features * (num_features - 1) // 2


@functools.cache
def _kernels() -> SimpleNamespace:
    """The kernels, defined on first use."""

    @triton.jit
    def _interaction_forward_kernel(
        x,
        e,
        out,
        num_features,
        d,
        width,
        padded_width,
        s_xb,
        s_eb,
        s_et,
        FP: tl.constexpr,  # noqa: N803
        BD: tl.constexpr,  # noqa: N803
        PAD: tl.constexpr,  # noqa: N803
        ITSELF: tl.constexpr,  # noqa: N803
        PRECISION: tl.constexpr,  # noqa: N803
    ):
        b = tl.program_id(0).to(tl.int64)
        f = tl.arange(0, FP)
        row = out + b * padded_width
        products = tl.zeros((FP, FP), dtype=tl.float32)
        for k0 in range(0, d, BD):
            kk = k0 + tl.arange(0, BD)
            dense, features = _load_features(x, e, b, kk, f, num_features, d, s_xb, s_eb, s_et)
            products += tl.dot(features, tl.trans(features), input_precision=PRECISION)
            tl.store(row + kk, dense.to(out.dtype.element_ty), mask=kk < d)
        i, j = f[:, None], f[None, :]
        if ITSELF:  # noqa: SIM108 - a branch on a constexpr, resolved when the kernel compiles
            keep = (j <= i) & (i < num_features)
        else:
            keep = (j < i) & (i < num_features)
        tl.store(row + d + _pair_position(i, j, ITSELF), products.to(out.dtype.element_ty), mask=keep)
        p = width + tl.arange(0, PAD)
        tl.store(row + p, tl.zeros((PAD,), dtype=out.dtype.element_ty), mask=p < padded_width)

    @triton.jit
    def _interaction_backward_kernel(
        x,
        e,
        grad,
        grad_x,
        grad_e,
        num_features,
        d,
        padded_width,
        s_xb,
        s_eb,
        s_et,
        FP: tl.constexpr,  # noqa: N803
        BD: tl.constexpr,  # noqa: N803
        ITSELF: tl.constexpr,  # noqa: N803
        PRECISION: tl.constexpr,  # noqa: N803
    ):
        b = tl.program_id(0).to(tl.int64)
        f = tl.arange(0, FP)
        row = grad + b * padded_width
        i, j = f[:, None], f[None, :]
        valid = (i < num_features) & (j < num_features)
        if not ITSELF:
            valid = valid & (i != j)
        # The gradient of sum_{i>=j} g_ij <v_i, v_j> with respect to the vectors is S @ V, S symmetric with
        # S_ij = S_ji = g_ij off the diagonal and S_ii = 2 g_ii.
        position = _pair_position(tl.maximum(i, j), tl.minimum(i, j), ITSELF)
        s = tl.load(row + d + position, mask=valid, other=0.0).to(tl.float32)
        s = tl.where(i == j, 2.0 * s, s)
        table = tl.maximum(f - 1, 0).to(tl.int64)
        table_ok = (f >= 1) & (f < num_features)
        for k0 in range(0, d, BD):
            kk = k0 + tl.arange(0, BD)
            k_ok = kk < d
            _, features = _load_features(x, e, b, kk, f, num_features, d, s_xb, s_eb, s_et)
            grad_features = tl.dot(s, features, input_precision=PRECISION)
            direct = tl.load(row + kk, mask=k_ok, other=0.0).to(tl.float32)
            through_products = tl.sum(tl.where((f == 0)[:, None], grad_features, 0.0), axis=0)
            tl.store(grad_x + b * d + kk, (direct + through_products).to(grad_x.dtype.element_ty), mask=k_ok)
            tl.store(
                grad_e + b * (num_features - 1) * d + table[:, None] * d + kk[None, :],
                grad_features.to(grad_e.dtype.element_ty),
                mask=table_ok[:, None] & k_ok[None, :],
            )

    return SimpleNamespace(forward=_interaction_forward_kernel, backward=_interaction_backward_kernel)


def _tiles(num_features: int, d: int) -> tuple[int, int, int]:
    """Block sizes: FP vectors (>= 16 for ``tl.dot``), BD columns per pass, and warps."""
    fp = max(16, triton.next_power_of_2(num_features))
    bd = 16 if fp >= 64 else min(32, max(16, triton.next_power_of_2(d)))
    return fp, bd, 4 if fp <= 32 else 8


class DotInteraction(torch.autograd.Function):
    """``[dense, lower triangle of V V^T, zeros]`` for ``V = [dense, e_1 .. e_T]`` per sample (B x padded_width)."""

    @staticmethod
    def forward(ctx, dense: Tensor, embedded: Tensor, itself: bool, padded_width: int) -> Tensor:
        batch, num_tables, d = embedded.shape
        num_features = num_tables + 1
        width = d + pair_count(num_features, itself)
        dense, embedded = dense.contiguous(), embedded.contiguous()
        out = dense.new_empty(batch, padded_width)
        fp, bd, warps = _tiles(num_features, d)
        pad = triton.next_power_of_2(max(1, padded_width - width))
        if batch:
            _kernels().forward[(batch,)](
                dense, embedded, out, num_features, d, width, padded_width,
                dense.stride(0), embedded.stride(0), embedded.stride(1),
                FP=fp, BD=bd, PAD=pad, ITSELF=itself, PRECISION=dot_precision(), num_warps=warps,
            )  # fmt: skip
        ctx.save_for_backward(dense, embedded)
        ctx.itself = itself
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None, None]:
        dense, embedded = ctx.saved_tensors
        batch, num_tables, d = embedded.shape
        grad = grad.contiguous()
        grad_dense, grad_embedded = torch.empty_like(dense), torch.empty_like(embedded)
        fp, bd, warps = _tiles(num_tables + 1, d)
        if batch:
            _kernels().backward[(batch,)](
                dense, embedded, grad, grad_dense, grad_embedded, num_tables + 1, d, grad.shape[1],
                dense.stride(0), embedded.stride(0), embedded.stride(1),
                FP=fp, BD=bd, ITSELF=ctx.itself, PRECISION=dot_precision(), num_warps=warps,
            )  # fmt: skip
        return grad_dense, grad_embedded, None, None


@torch.compiler.disable
def dot_interaction(dense: Tensor, embedded: Tensor, itself: bool, padded_width: int) -> Tensor:
    """The dot interaction of ``dense`` (B x d) and ``embedded`` (B x T x d), ``padded_width`` columns wide
    (at least ``d`` + the products; the columns beyond are zero). Needs :func:`supported`."""
    return DotInteraction.apply(dense, embedded, itself, padded_width)
