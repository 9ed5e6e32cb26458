"""Triton kernels for the GPU hot spots of a DLRM training step.

Profiling the step on an H100/H200 (``bench/gpu_profile.py``, numbers in
``bench/NOTES.md``) showed three places where PyTorch's own kernels are far
from the memory-bandwidth floor, all on the embedding side:

* the lookup of one row per bag (``embedding_bag``'s generic kernel), and the
  row update (``index_add_``, which falls back to a slow 64-bit-index kernel
  once the table has more than 2**31 elements, as MLET's K-wide Criteo table does);
* MLET's per-table projection ``(T, B, K) @ (T, K, d)`` and its gradients,
  for which cuBLAS picks small-tile SIMT kernels (d is narrow).

Each kernel here is a drop-in for one PyTorch op, in float32 (IEEE products,
or TF32 exactly when PyTorch's matmuls may use it: ``--tf32``), so results
match PyTorch's to rounding. They are used on CUDA
tensors when Triton is importable, and everywhere under ``TRITON_INTERPRET=1``
(how the tests run them on a CPU); otherwise callers use the PyTorch op.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import torch
from torch import Tensor

try:  # Triton ships with CUDA builds of PyTorch; CPU installs may lack it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


INTERPRET_ON_CPU = False
"""Run the kernels on CPU tensors too (in Triton's interpreter: needs
``TRITON_INTERPRET=1`` in the environment before ``triton`` is imported, as the
tests' ``conftest.py`` does). Slow; for testing only."""


def usable(*tensors: Tensor) -> bool:
    """True when the kernels can run on these tensors (CUDA; CPU under ``INTERPRET_ON_CPU``)."""
    if triton is None:
        return False
    return all(t.is_cuda for t in tensors) or (INTERPRET_ON_CPU and os.environ.get("TRITON_INTERPRET") == "1")


PLAIN, GATHER_ROWS, GATHER_REDUCTION = 0, 1, 2
"""How the grouped matmul reads ``A``: as laid out; its rows picked by ``ids``
(MLET's forward); its reduction index picked by ``ids`` (MLET's W2 gradient)."""


def dot_precision() -> str:
    """The kernels' matrix-product precision: TF32 where PyTorch's own GEMMs may use it
    (``torch.backends.cuda.matmul.allow_tf32``, set by ``--tf32``), else IEEE float32."""
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def block_of(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= ``n`` (and >= ``minimum``)."""
    return max(minimum, 1 << max(0, (n - 1).bit_length()))


if triton is not None:  # a helper the kernels call: Triton resolves it among the module's names

    @triton.jit
    def _add_to_rows(
        weight,
        stride_w,
        dst,
        row_ok,
        g,
        projection_t,
        s_pk,
        s_pd,
        neg_lr,
        k,
        d,
        BLOCK_K: tl.constexpr,  # noqa: N803
        BLOCK_D: tl.constexpr,  # noqa: N803
        PROJECT: tl.constexpr,  # noqa: N803
        PRECISION: tl.constexpr,  # noqa: N803
    ):
        """``weight[dst[i]] += neg_lr * g[i]`` (PROJECT: ``neg_lr * g[i] @ W2[t].T``, K-wide) with atomics."""
        rd = tl.arange(0, BLOCK_D)
        d_ok = rd < d
        if PROJECT:
            for k0 in range(0, k, BLOCK_K):
                rk = k0 + tl.arange(0, BLOCK_K)
                k_ok = rk < k
                w_t = tl.load(
                    projection_t + rk[None, :] * s_pk + rd[:, None] * s_pd,
                    mask=d_ok[:, None] & k_ok[None, :],
                    other=0.0,
                )
                rows = tl.dot(g, w_t, input_precision=PRECISION)
                tl.atomic_add(
                    weight + dst[:, None] * stride_w + rk[None, :],
                    rows * neg_lr,
                    mask=row_ok[:, None] & k_ok[None, :],
                    sem="relaxed",
                )
        else:
            tl.atomic_add(
                weight + dst[:, None] * stride_w + rd[None, :],
                g * neg_lr,
                mask=row_ok[:, None] & d_ok[None, :],
                sem="relaxed",
            )


@functools.cache
def _kernels() -> SimpleNamespace:
    """The kernels, defined on first use (importing this module costs nothing where they are never used)."""

    @triton.jit
    def _gather_rows_kernel(weight, ids, out, n, width, stride_w, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):  # noqa: N803
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_W)
        row_ok = rows < n
        mask = row_ok[:, None] & (cols < width)[None, :]
        src = tl.load(ids + rows, mask=row_ok, other=0).to(tl.int64)
        values = tl.load(weight + src[:, None] * stride_w + cols[None, :], mask=mask)
        tl.store(out + rows.to(tl.int64)[:, None] * width + cols[None, :], values, mask=mask)

    @triton.jit
    def _scatter_sub_rows_kernel(
        weight,
        ids,
        grads,
        sources,
        scales,
        lr,
        n,
        width,
        stride_w,
        stride_g,
        GATHERED: tl.constexpr,  # noqa: N803
        SCALED: tl.constexpr,  # noqa: N803
        BLOCK_N: tl.constexpr,  # noqa: N803
        BLOCK_W: tl.constexpr,  # noqa: N803
    ):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_W)
        row_ok = rows < n
        if SCALED:
            scale = tl.load(scales + rows, mask=row_ok, other=0.0)
            row_ok = row_ok & (scale != 0.0)  # weight 0 (padding): no add, no memory traffic
        else:
            scale = tl.full((BLOCK_N,), 1.0, tl.float32)
        if GATHERED:  # noqa: SIM108  (a branch on a constexpr, chosen when the kernel is compiled)
            src = tl.load(sources + rows, mask=row_ok, other=0).to(tl.int64)
        else:
            src = rows.to(tl.int64)
        mask = row_ok[:, None] & (cols < width)[None, :]
        dst = tl.load(ids + rows, mask=row_ok, other=0).to(tl.int64)
        g = tl.load(grads + src[:, None] * stride_g + cols[None, :], mask=mask) * (scale * -tl.load(lr))[:, None]
        tl.atomic_add(weight + dst[:, None] * stride_w + cols[None, :], g, mask=mask, sem="relaxed")

    @triton.jit
    def _pad_bags_kernel(
        indices,
        offsets,
        out_ids,
        out_weights,
        bags,
        WIDTH: tl.constexpr,  # noqa: N803
        BLOCK_B: tl.constexpr,  # noqa: N803
        BLOCK_L: tl.constexpr,  # noqa: N803
    ):
        bag = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        bag_ok = bag < bags
        start = tl.load(offsets + bag, mask=bag_ok, other=0)
        length = tl.load(offsets + bag + 1, mask=bag_ok, other=0) - start
        slot = tl.arange(0, BLOCK_L)
        keep = bag_ok[:, None] & (slot < WIDTH)[None, :]
        real = keep & (slot[None, :] < length[:, None])
        first = tl.load(indices + start, mask=bag_ok & (length > 0), other=0)  # an empty bag's padding: id 0
        ids = tl.where(real, tl.load(indices + start[:, None] + slot[None, :], mask=real, other=0), first[:, None])
        dst = bag.to(tl.int64)[:, None] * WIDTH + slot[None, :]
        tl.store(out_ids + dst, ids, mask=keep)
        tl.store(out_weights + dst, real.to(tl.float32), mask=keep)

    @triton.jit
    def _grouped_matmul_kernel(
        a,
        b,
        c,
        ids,
        m,
        k,
        n,
        k_per_split,
        s_at,
        s_am,
        s_ak,
        s_bt,
        s_bk,
        s_bn,
        s_ct,
        s_cs,
        s_cm,
        s_cn,
        BLOCK_M: tl.constexpr,  # noqa: N803
        BLOCK_K: tl.constexpr,  # noqa: N803
        BLOCK_N: tl.constexpr,  # noqa: N803
        GATHER: tl.constexpr,  # noqa: N803
        PRECISION: tl.constexpr,  # noqa: N803
    ):
        pid_m, group, split = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        a_base = a + group * s_at
        b_base = b + group * s_bt
        a_rows = rm.to(tl.int64)
        if GATHER == 1:  # GATHER_ROWS: A's rows are table rows, A[g, i, :] = a[ids[g * m + i], :]
            a_rows = tl.load(ids + group * m + rm, mask=rm < m, other=0).to(tl.int64)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        k_start = split * k_per_split
        k_stop = tl.minimum(k_start + k_per_split, k)
        for k0 in range(k_start, k_stop, BLOCK_K):
            kk = k0 + rk
            k_ok = kk < k_stop
            a_cols = kk.to(tl.int64)
            if GATHER == 2:  # GATHER_REDUCTION: the reduction runs over table rows, A[g, :, j] = a[ids[g * k + j], :]
                a_cols = tl.load(ids + group * k + kk, mask=k_ok, other=0).to(tl.int64)
            a_tile = tl.load(
                a_base + a_rows[:, None] * s_am + a_cols[None, :] * s_ak,
                mask=(rm < m)[:, None] & k_ok[None, :],
                other=0.0,
            )
            b_tile = tl.load(
                b_base + kk.to(tl.int64)[:, None] * s_bk + rn[None, :] * s_bn,
                mask=k_ok[:, None] & (rn < n)[None, :],
                other=0.0,
            )
            acc += tl.dot(a_tile, b_tile, input_precision=PRECISION)
        out = c + group * s_ct + split * s_cs + rm.to(tl.int64)[:, None] * s_cm + rn[None, :] * s_cn
        tl.store(out, acc, mask=(rm < m)[:, None] & (rn < n)[None, :])

    @triton.jit
    def _table_rows_update_kernel(
        grad_out,
        projection,
        ids,
        row_bounds,
        weight,
        lr,
        batch,
        k,
        d,
        tiny_rows,
        s_gt,
        s_gb,
        s_gd,
        s_pt,
        s_pk,
        s_pd,
        stride_w,
        BLOCK_M: tl.constexpr,  # noqa: N803
        BLOCK_K: tl.constexpr,  # noqa: N803
        BLOCK_D: tl.constexpr,  # noqa: N803
        SLOTS: tl.constexpr,  # noqa: N803
        PROJECT: tl.constexpr,  # noqa: N803
        PRECISION: tl.constexpr,  # noqa: N803
    ):
        pid_m, table = tl.program_id(0), tl.program_id(1).to(tl.int64)
        rb = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rd = tl.arange(0, BLOCK_D)
        row_ok, d_ok = rb < batch, rd < d
        g = tl.load(
            grad_out + table * s_gt + rb.to(tl.int64)[:, None] * s_gb + rd[None, :] * s_gd,
            mask=row_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        dst = tl.load(ids + table * batch + rb, mask=row_ok, other=0).to(tl.int64)
        neg_lr = -tl.load(lr)
        projection_t = projection + table * s_pt
        first = tl.load(row_bounds + table)
        if tl.load(row_bounds + table + 1) - first <= tiny_rows:  # tiny_rows <= SLOTS
            # A table of a few rows gets the batch's every lookup on them: thousands of atomic adds on the same
            # addresses, which the memory system serialises. Summed here first, one add per row and program.
            slot = tl.arange(0, SLOTS)
            hits = ((dst - first)[:, None] == slot[None, :]) & row_ok[:, None]
            # float32 sums of g: IEEE products, so the 0/1 factors round nothing (TF32 would round g)
            summed = tl.dot(tl.trans(hits.to(tl.float32)), g, input_precision="ieee")
            present = tl.max(hits.to(tl.int32), axis=0) > 0
            _add_to_rows(weight, stride_w, first + slot, present, summed, projection_t, s_pk, s_pd, neg_lr, k, d,
                         BLOCK_K, BLOCK_D, PROJECT, PRECISION)  # fmt: skip
        else:
            _add_to_rows(weight, stride_w, dst, row_ok, g, projection_t, s_pk, s_pd, neg_lr, k, d,
                         BLOCK_K, BLOCK_D, PROJECT, PRECISION)  # fmt: skip

    return SimpleNamespace(
        gather=_gather_rows_kernel,
        scatter_sub=_scatter_sub_rows_kernel,
        pad_bags=_pad_bags_kernel,
        grouped=_grouped_matmul_kernel,
        table_rows_update=_table_rows_update_kernel,
    )


def gather_rows(weight: Tensor, ids: Tensor) -> Tensor:
    """``weight[ids]`` (``ids``: 1-D integer tensor)."""
    n, width = ids.numel(), weight.shape[1]
    out = torch.empty(n, width, dtype=weight.dtype, device=weight.device)
    block_w = block_of(width, 1)
    block_n = max(1, 4096 // block_w)
    _kernels().gather[(triton.cdiv(n, block_n),)](
        weight, ids, out, n, width, weight.stride(0), BLOCK_N=block_n, BLOCK_W=block_w
    )
    return out


def take_rows(x: Tensor, rows: Tensor) -> Tensor:
    """``x[rows]`` for a 2-D ``x`` whose rows are contiguous: :func:`gather_rows` where the kernels run,
    ``index_select`` elsewhere. On an H200 torch 2.11's ``index_select`` moved 16-float rows at about
    100 GB/s (``bench/NOTES.md``), the kernel at memory speed."""
    if rows.numel() and x.stride(-1) == 1 and usable(x, rows):
        return gather_rows(x, rows)
    return x.index_select(0, rows)


def scatter_sub_rows(
    weight: Tensor,
    ids: Tensor,
    grads: Tensor,
    lr: Tensor,
    sources: Tensor | None = None,
    scales: Tensor | None = None,
) -> None:
    """``weight.index_add_(0, ids, grads * -lr)`` in place (an SGD row update); ``lr`` a one-element tensor.

    ``sources``: the row of ``grads`` each id takes (default: its own position), so a multi-hot backward
    hands each bag's gradient to its ids without materialising one row per id; ``scales``: a factor per id
    (per-id weights of padded bags, ``SparseFeatures.padded``), an id of factor 0 adding nothing.
    """
    n, width = ids.numel(), weight.shape[1]
    block_w = block_of(width, 1)
    block_n = max(1, 4096 // block_w)
    _kernels().scatter_sub[(triton.cdiv(n, block_n),)](
        weight,
        ids,
        grads,
        ids if sources is None else sources,  # (not read without GATHERED)
        grads if scales is None else scales,  # (not read without SCALED)
        lr,
        n,
        width,
        weight.stride(0),
        grads.stride(0),
        GATHERED=sources is not None,
        SCALED=scales is not None,
        BLOCK_N=block_n,
        BLOCK_W=block_w,
    )


def pad_bags(indices: Tensor, offsets: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """``SparseFeatures.padded``'s ids and weights in one kernel: bag ``k`` (``indices[offsets[k]:offsets[k+1]]``,
    at most ``width`` ids) at ``k * width``, its ids of weight 1, then copies of its first id (0 if it is
    empty) of weight 0."""
    bags = offsets.numel() - 1
    ids = torch.empty(bags * width, dtype=indices.dtype, device=indices.device)
    weights = torch.empty(bags * width, dtype=torch.float32, device=indices.device)
    block_l = block_of(width, 1)
    block_b = max(1, 2048 // block_l)
    _kernels().pad_bags[(triton.cdiv(bags, block_b),)](
        indices, offsets, ids, weights, bags, WIDTH=width, BLOCK_B=block_b, BLOCK_L=block_l
    )
    return ids, weights


TINY_TABLE_ROWS = 32
"""Tables of at most this many rows have their one-hot row updates summed per row in each program before the
atomic adds. Criteo-Kaggle has seven (3 to 27 rows), and quotient-remainder tables' remainder parts have
``--qr-collisions`` rows (4 by default). At batch 8192 each of their rows gets hundreds to thousands of
lookups, whose atomic adds on the same addresses the memory system serialises: they took most of the row
update's time, MLET's and the plain tables' alike (``bench/NOTES.md``)."""


def scatter_sub_table_rows(
    weight: Tensor,
    ids: Tensor,
    grad_out: Tensor,
    row_bounds: Tensor,
    lr: Tensor,
    block_m: int = 64,
    warps: int = 4,
    tiny_rows: int = TINY_TABLE_ROWS,
) -> None:
    """One-hot SGD update of tables laid out table-major: ``weight[ids[t*B+b]] -= lr * grad_out[t, b]``.

    ``grad_out``: (T, B, d); ``row_bounds``: the T+1 first rows of the tables in ``weight`` (``ids`` of table
    ``t`` lie in ``row_bounds[t]:row_bounds[t+1]``). Equal to :func:`scatter_sub_rows` up to the order of the
    additions. A table of at most ``tiny_rows`` rows (0: none; at most :data:`TINY_TABLE_ROWS`) gets one
    atomic add per row and program. Kaggle's tables at d=16 on an H200, replayed from a CUDA graph: 10.3 us
    at batch 8192 and 4.1 us at 2048, against 23.4 and 6.1 us for :func:`scatter_sub_rows` (``bench/NOTES.md``).
    """
    width = block_of(grad_out.shape[2])
    _update_table_rows(weight, ids, grad_out, None, row_bounds, lr, (block_m, width, warps), tiny_rows)


def project_scatter_sub(
    weight: Tensor,
    ids: Tensor,
    grad_out: Tensor,
    projection: Tensor,
    row_bounds: Tensor,
    lr: Tensor,
    block_m: int = 64,
    block_k: int | None = None,
    warps: int = 2,
    tiny_rows: int = TINY_TABLE_ROWS,
) -> None:
    """MLET's fused one-hot backward + SGD: ``weight[ids[t*B+b]] -= lr * grad_out[t, b] @ projection[t].T``.

    ``grad_out``: (T, B, d) gradient of the projected embeddings; ``ids``: the T*B global rows (table-major),
    those of table ``t`` in ``row_bounds[t]:row_bounds[t+1]``. The K-wide row gradients never touch memory. A
    table of at most ``tiny_rows`` rows (as in :func:`scatter_sub_table_rows`) sums its gradients per row first.
    Blocks of 64 lookups (128 before those sums, tuned on an H100). Kaggle's tables, d=16, K=64, H200, replayed
    from a CUDA graph: 19.8 us at batch 8192 and 6.9 us at 2048, against 36.7 and 10.2 with blocks of 128, and
    47.2 and 18.7 before the sums (``bench/NOTES.md``). K chunks of 16 at d = 64 (``bench/triton_tuning.py``,
    H100: 171 us against 295 us with 32); at d <= 32, 32 for TF32 products and 64 for IEEE ones (H200, d=16,
    batch 8192: in IEEE 36.8 us with 64 against 51.3 with 32; in TF32 22.8 with 64 against 19.9 with 32).
    """
    d, k = grad_out.shape[2], projection.shape[1]
    block_k = min(block_k or (16 if d > 32 else 32 if dot_precision() == "tf32" else 64), block_of(k))
    _update_table_rows(weight, ids, grad_out, projection, row_bounds, lr, (block_m, block_k, warps), tiny_rows)


def _update_table_rows(
    weight: Tensor,
    ids: Tensor,
    grad_out: Tensor,
    projection: Tensor | None,
    row_bounds: Tensor,
    lr: Tensor,
    launch: tuple[int, int, int],
    tiny_rows: int,
) -> None:
    """Launch the one-hot row update of :func:`scatter_sub_table_rows` (``projection`` None) or
    :func:`project_scatter_sub`; ``launch``: BLOCK_M, BLOCK_K and warps."""
    if not 0 <= tiny_rows <= TINY_TABLE_ROWS:
        raise ValueError(f"tiny_rows must be in 0..{TINY_TABLE_ROWS}, got {tiny_rows}")
    block_m, block_k, warps = launch
    tables, batch, d = grad_out.shape
    project = projection is not None
    w2 = projection if projection is not None else grad_out  # not read without PROJECT; a valid pointer
    k = w2.shape[1] if project else d
    grid = (triton.cdiv(batch, block_m), tables)
    _kernels().table_rows_update[grid](
        grad_out, w2, ids.contiguous(), row_bounds, weight, lr, batch, k, d, tiny_rows,
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        w2.stride(0), w2.stride(1), w2.stride(2),
        weight.stride(0),
        BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_D=block_of(d), SLOTS=TINY_TABLE_ROWS, PROJECT=project,
        PRECISION=dot_precision(), num_warps=warps,
    )  # fmt: skip


def grouped_matmul(a: Tensor, b: Tensor, splits: int = 1) -> Tensor:
    """``torch.bmm(a, b)`` for ``a``: (G, M, K), ``b``: (G, K, N), any strides.

    ``splits`` > 1 cuts the K dimension into that many ranges computed in
    parallel and summed afterwards (in a fixed order: deterministic), for
    products with a long K and a small output, such as MLET's weight gradient.
    """
    (g, m, k), (sg, sm, sk) = a.shape, a.stride()
    return _grouped(a, (g, m, k), (sg, sm, sk), b, splits)


def gather_project(
    weight: Tensor,
    ids: Tensor,
    projection: Tensor,
    block_m: int | None = None,
    block_k: int | None = None,
    warps: int | None = None,
) -> Tensor:
    """MLET's one-hot forward in one kernel: ``torch.bmm(weight[ids].view(T, B, K), projection)``.

    ``ids``: the T*B global rows, table-major. The K-wide rows go from the
    table into the product without being written out (against a gather kernel
    writing them and the projection reading them back). The launch is the
    grouped matmul's tile, with 2 warps for TF32 products and 4 for IEEE ones, which
    the tensor cores do not run (``bench/triton_tuning.py``, H200, Kaggle's tables, d=16,
    K=64: 15.1 us against 19.9 with 4 warps at batch 8192 in TF32; 28.5 against 30.0 with 2 in IEEE).
    """
    tables, hidden, _ = projection.shape
    shape = (tables, ids.numel() // tables, hidden)
    strides = (0, weight.stride(0), weight.stride(1))
    warps = warps or (2 if dot_precision() == "tf32" else 4)
    return _grouped(weight, shape, strides, projection, 1, ids, GATHER_ROWS, block_m, block_k, warps)


def gathered_weight_gradient(
    weight: Tensor,
    ids: Tensor,
    grad_out: Tensor,
    block_m: int | None = None,
    block_k: int = 64,
    warps: int | None = None,
    splits: int | None = None,
) -> Tensor:
    """MLET's projection gradient from the table rows: ``weight[ids].view(T, B, K).transpose(1, 2) @ grad_out``.

    Reads the rows straight from ``weight`` (call it before they are updated). The batch's reduction is split
    into ranges of 256 samples, at most 16 (``splits``: any other count). Launch: tiles of 64 x 64 with 2 warps
    at d <= 32, 32 x 64 with 4 warps at d = 64. On an H200 (``bench/triton_tuning.py``, Kaggle's tables, d=16,
    K=64, batch 8192) 19.4 us in TF32 and 27.3 in IEEE, against 23.1 and 37.3 with the H100's 32 x 64, 4 warps
    and at most 8 ranges; at batch 2048, 9.1 and 12.0 against 9.6 and 12.9.
    """
    tables, batch, d = grad_out.shape
    shape = (tables, weight.shape[1], batch)
    splits = splits or weight_gradient_splits(batch, at_most=16)
    block_m = block_m or (64 if d <= 32 else 32)
    warps = warps or (2 if d <= 32 else 4)
    strides = (0, weight.stride(1), weight.stride(0))
    return _grouped(weight, shape, strides, grad_out, splits, ids, GATHER_REDUCTION, block_m, block_k, warps)


def _grouped(
    a: Tensor,
    shape: tuple[int, int, int],
    strides: tuple[int, int, int],
    b: Tensor,
    splits: int,
    ids: Tensor | None = None,
    gather: int = PLAIN,
    block_m: int | None = None,
    block_k: int | None = None,
    warps: int = 4,
) -> Tensor:
    """Launch the grouped matmul of ``A`` (``shape``: (G, M, K), laid out in ``a`` by ``strides``;
    rows or reduction index picked through ``ids`` per ``gather``) by ``b``: (G, K, N)."""
    groups, m, k = shape
    n = b.shape[2]
    k_per_split = triton.cdiv(triton.cdiv(k, splits), 64) * 64
    splits = triton.cdiv(k, k_per_split)
    c = torch.empty(groups, splits, m, n, dtype=torch.float32, device=a.device)
    block_n = block_of(n)
    block_m = block_m or (64 if m >= 64 else block_of(m))
    block_k = block_k or (32 if block_n <= 32 else 16)
    grid = (triton.cdiv(m, block_m), groups, splits)
    ids = a if ids is None else ids.contiguous()  # PLAIN never reads it; a valid pointer all the same
    _kernels().grouped[grid](
        a, b, c, ids, m, k, n, k_per_split,
        *strides,
        b.stride(0), b.stride(1), b.stride(2),
        c.stride(0), c.stride(1), c.stride(2), c.stride(3),
        BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_N=block_n, GATHER=gather, PRECISION=dot_precision(), num_warps=warps,
    )  # fmt: skip
    return c[:, 0] if splits == 1 else c.sum(dim=1)


class GroupedProjection(torch.autograd.Function):
    """MLET's per-table projection ``(T, B, K) @ (T, K, d)`` with Triton forward and backward."""

    @staticmethod
    def forward(ctx, pooled: Tensor, projection: Tensor) -> Tensor:
        ctx.save_for_backward(pooled, projection)
        return grouped_matmul(pooled, projection)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None]:
        pooled, projection = ctx.saved_tensors
        grad_pooled = grouped_matmul(grad_out, projection.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        splits = weight_gradient_splits(pooled.shape[1])
        grad_projection = grouped_matmul(pooled.transpose(1, 2), grad_out, splits) if ctx.needs_input_grad[1] else None
        return grad_pooled, grad_projection


def weight_gradient_splits(batch: int, at_most: int = 8) -> int:
    """How many ranges to split MLET's weight gradient (a reduction over the batch) into.

    The output is small (T x K x d), so without splits a few hundred programs
    loop over the whole batch; ranges of 256 samples, at most ``at_most`` (the partial
    sums cost a reduction), keep the GPU busy at batch 2048 too.
    """
    return min(at_most, max(1, batch // 256))
