"""DLRM's dot interaction as one Triton kernel forward and one backward.

In PyTorch the interaction is a chain of small kernels: concatenate the dense
vector with the table vectors, a batched product of 27 x 16 matrices, pick the
lower triangle (``index_select``), concatenate the dense vector in front; its
backward adds ``index_add`` into a zeroed buffer (23 us per step at batch
8192 on an H200, more than the forward's product), two batched products and
the concatenations' slices (``bench/NOTES.md``). Here a program takes a block
of samples, accumulates their vectors' products column by column in
registers and writes each output row - dense vector, lower triangle and the
zero columns that round its width up to an aligned one - directly; the
backward reads the triangle back as a symmetric matrix S and forms S @ V the
same way. The products are float32 multiply-adds (no TF32: there are too few
of them for tensor cores to matter); the output has the dense vector's dtype
(bfloat16 under ``--bf16``), the gradients their inputs' dtypes and layouts.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mlet.kernels.triton_kernels import triton, usable

if triton is not None:
    import triton.language as tl

    # Helpers the kernels call: module globals, where Triton resolves the names a kernel uses.
    @triton.jit
    def _pair_position(i, j, ITSELF: tl.constexpr):  # noqa: N803
        """Column (after the dense vector) of the product of vectors i >= j, in ``tril_indices`` order."""
        if ITSELF:
            return i * (i + 1) // 2 + j
        return i * (i - 1) // 2 + j

    @triton.jit
    def _vector_column(x, e, b, b_ok, f, k, num_features, s_xb, s_xd, s_eb, s_et, s_ed):
        """Column ``k`` of each sample's vectors (BB x FP, float32): vector 0 the dense one, 1..T the tables'."""
        dense = tl.load(x + b * s_xb + k * s_xd, mask=b_ok, other=0.0).to(tl.float32)
        table = tl.maximum(f - 1, 0).to(tl.int64)
        table_ok = (f >= 1) & (f < num_features)
        tables = tl.load(
            e + b[:, None] * s_eb + table[None, :] * s_et + k * s_ed, mask=b_ok[:, None] & table_ok[None, :], other=0.0
        ).to(tl.float32)
        return tl.where((f == 0)[None, :], dense[:, None], tables)


MAX_FEATURES = 128
"""Most vectors (tables + 1) the kernels take: a program holds their square
of products in registers. Wider interactions use PyTorch's ops."""


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
        batch,
        num_features,
        d,
        width,
        padded_width,
        s_xb,
        s_xd,
        s_eb,
        s_et,
        s_ed,
        BB: tl.constexpr,  # noqa: N803
        FP: tl.constexpr,  # noqa: N803
        BD: tl.constexpr,  # noqa: N803
        PAD: tl.constexpr,  # noqa: N803
        ITSELF: tl.constexpr,  # noqa: N803
    ):
        b = (tl.program_id(0) * BB + tl.arange(0, BB)).to(tl.int64)
        b_ok = b < batch
        f = tl.arange(0, FP)
        products = tl.zeros((BB, FP, FP), dtype=tl.float32)
        for k in range(0, d):
            column = _vector_column(x, e, b, b_ok, f, k, num_features, s_xb, s_xd, s_eb, s_et, s_ed)
            products += column[:, :, None] * column[:, None, :]
        row = out + b * padded_width
        for k0 in range(0, d, BD):
            kk = k0 + tl.arange(0, BD)
            mask = b_ok[:, None] & (kk < d)[None, :]
            dense = tl.load(x + b[:, None] * s_xb + kk[None, :] * s_xd, mask=mask)
            tl.store(row[:, None] + kk[None, :], dense.to(out.dtype.element_ty), mask=mask)
        i, j = f[None, :, None], f[None, None, :]
        if ITSELF:  # noqa: SIM108 - a branch on a constexpr, resolved when the kernel compiles
            keep = (j <= i) & (i < num_features)
        else:
            keep = (j < i) & (i < num_features)
        position = d + _pair_position(i, j, ITSELF)
        tl.store(row[:, None, None] + position, products.to(out.dtype.element_ty), mask=keep & b_ok[:, None, None])
        p = width + tl.arange(0, PAD)
        zeros = tl.zeros((BB, PAD), dtype=out.dtype.element_ty)
        tl.store(row[:, None] + p[None, :], zeros, mask=b_ok[:, None] & (p < padded_width)[None, :])

    @triton.jit
    def _interaction_backward_kernel(
        x,
        e,
        grad,
        grad_x,
        grad_e,
        batch,
        num_features,
        d,
        padded_width,
        s_xb,
        s_xd,
        s_eb,
        s_et,
        s_ed,
        s_gxb,
        s_gxd,
        s_geb,
        s_get,
        s_ged,
        BB: tl.constexpr,  # noqa: N803
        FP: tl.constexpr,  # noqa: N803
        BD: tl.constexpr,  # noqa: N803
        ITSELF: tl.constexpr,  # noqa: N803
    ):
        # The gradient of sum_{i>=j} g_ij <v_i, v_j> with respect to the vectors is S @ V, S symmetric with
        # S_ij = S_ji = g_ij off the diagonal and S_ii = 2 g_ii.
        b = (tl.program_id(0) * BB + tl.arange(0, BB)).to(tl.int64)
        b_ok = b < batch
        f = tl.arange(0, FP)
        row = grad + b * padded_width
        table = tl.maximum(f - 1, 0).to(tl.int64)
        table_ok = (f >= 1) & (f < num_features)
        for k0 in range(0, d, BD):
            kk = k0 + tl.arange(0, BD)
            k_ok = kk < d
            acc = tl.zeros((BB, FP, BD), dtype=tl.float32)
            for jj in range(0, num_features):
                valid = f < num_features
                if not ITSELF:
                    valid = valid & (f != jj)
                position = d + _pair_position(tl.maximum(f, jj), tl.minimum(f, jj), ITSELF)
                s = tl.load(row[:, None] + position[None, :], mask=b_ok[:, None] & valid[None, :], other=0.0)
                s = tl.where((f == jj)[None, :], 2.0 * s.to(tl.float32), s.to(tl.float32))
                mask = b_ok[:, None] & k_ok[None, :]
                dense = tl.load(x + b[:, None] * s_xb + kk[None, :] * s_xd, mask=mask & (jj == 0), other=0.0)
                table_j = tl.zeros((1,), dtype=tl.int64) + (jj - 1)  # int64: x stride can pass 2**31 (MLET's layout)
                vector_j = e + b[:, None] * s_eb + table_j[None, :] * s_et + kk[None, :] * s_ed
                tables = tl.load(vector_j, mask=mask & (jj > 0), other=0.0)
                vector = dense.to(tl.float32) + tables.to(tl.float32)  # vector jj of each sample (one load is masked)
                acc += s[:, :, None] * vector[:, None, :]
            mask = b_ok[:, None] & k_ok[None, :]
            direct = tl.load(row[:, None] + kk[None, :], mask=mask, other=0.0).to(tl.float32)
            through_products = tl.sum(tl.where((f == 0)[None, :, None], acc, 0.0), axis=1)
            tl.store(
                grad_x + b[:, None] * s_gxb + kk[None, :] * s_gxd,
                (direct + through_products).to(grad_x.dtype.element_ty),
                mask=mask,
            )
            tl.store(
                grad_e + b[:, None, None] * s_geb + table[None, :, None] * s_get + kk[None, None, :] * s_ged,
                acc.to(grad_e.dtype.element_ty),
                mask=b_ok[:, None, None] & table_ok[None, :, None] & k_ok[None, None, :],
            )

    return SimpleNamespace(forward=_interaction_forward_kernel, backward=_interaction_backward_kernel)


def _tiles(num_features: int, d: int) -> tuple[int, int, int, int]:
    """Samples per program (BB), vectors padded to a power of two (FP), columns per pass (BD), and warps: a
    program's BB x FP x FP products (forward) and BB x FP x BD gradients (backward) stay within 8,192 values,
    and BB within 64 (Criteo's 27 vectors: 8 samples a program)."""
    fp = triton.next_power_of_2(num_features)
    bd = min(16, triton.next_power_of_2(d))
    return min(64, max(1, 8192 // (fp * max(fp, bd)))), fp, bd, 4 if fp <= 32 else 8


class DotInteraction(torch.autograd.Function):
    """``[dense, lower triangle of V V^T, zeros]`` for ``V = [dense, e_1 .. e_T]`` per sample (B x padded_width)."""

    @staticmethod
    def forward(ctx, dense: Tensor, embedded: Tensor, itself: bool, padded_width: int) -> Tensor:
        batch, num_tables, d = embedded.shape
        num_features = num_tables + 1
        width = d + pair_count(num_features, itself)
        if dense.shape != (batch, d) or padded_width < width:
            raise ValueError(
                f"dot interaction: dense {tuple(dense.shape)} and embedded {tuple(embedded.shape)} need a dense"
                f" B x d, embedded B x T x d and an output of at least {width} columns (asked for {padded_width})"
            )
        out = dense.new_empty(batch, padded_width)
        bb, fp, bd, warps = _tiles(num_features, d)
        pad = triton.next_power_of_2(max(1, padded_width - width))
        if batch:
            _kernels().forward[(triton.cdiv(batch, bb),)](
                dense, embedded, out, batch, num_features, d, width, padded_width,
                *dense.stride(), *embedded.stride(),
                BB=bb, FP=fp, BD=bd, PAD=pad, ITSELF=itself, num_warps=warps,
            )  # fmt: skip
        ctx.save_for_backward(dense, embedded)
        ctx.itself = itself
        return out

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None, None]:
        dense, embedded = ctx.saved_tensors
        batch, num_tables, d = embedded.shape
        grad = grad.contiguous()
        # The inputs are read in any layout (the tables' output is a transposed view, MLET's one with the batch
        # innermost); empty_like gives their gradients the same layouts, so nothing is copied either way.
        grad_dense, grad_embedded = torch.empty_like(dense), torch.empty_like(embedded)
        bb, fp, bd, warps = _tiles(num_tables + 1, d)
        if batch:
            _kernels().backward[(triton.cdiv(batch, bb),)](
                dense, embedded, grad, grad_dense, grad_embedded, batch, num_tables + 1, d, grad.shape[1],
                *dense.stride(), *embedded.stride(), *grad_dense.stride(), *grad_embedded.stride(),
                BB=bb, FP=fp, BD=bd, ITSELF=ctx.itself, num_warps=warps,
            )  # fmt: skip
        return grad_dense, grad_embedded, None, None


def dot_interaction(dense: Tensor, embedded: Tensor, itself: bool, padded_width: int) -> Tensor:
    """The dot interaction of ``dense`` (B x d) and ``embedded`` (B x T x d), ``padded_width`` columns wide
    (at least ``d`` + the products; the columns beyond are zero). Needs :func:`supported`. Not for code that
    ``torch.compile`` traces: ``--compile`` runs it between the compiled MLPs (``COMPILED_PARTS`` in
    ``mlet/training/train_step.py``)."""
    return DotInteraction.apply(dense, embedded, itself, padded_width)
