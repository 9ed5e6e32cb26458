"""One Triton kernel that cuts a batch out of device-resident data (``--data-on-device``).

A batch of rows held on the GPU (``mlet/data/device.py``) was five kernels:
three ``index_select`` gathers (ids, dense features, labels), the ids'
transpose to table-major order and their conversion to int64. Inside the
graphed step each is a graph node of a few microseconds over a few hundred
kilobytes; at batch 2048 (a 0.2 ms step) they were several percent of it.
:func:`cut_batch` does all of it in one pass over the batch's rows.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch
from torch import Tensor

from mlet.kernels.triton_kernels import block_of, triton, usable

if triton is not None:
    import triton.language as tl

ROWS_PER_PROGRAM = 64


@functools.cache
def _kernels() -> SimpleNamespace:
    """The kernel, defined on first use."""

    @triton.jit
    def _cut_kernel(
        rows,
        ids,
        columns,
        dense,
        labels,
        out_ids,
        out_dense,
        out_labels,
        n,
        num_columns,
        num_dense,
        lo,
        hi,
        stride_ids,
        stride_dense,
        SELECT: tl.constexpr,  # noqa: N803
        BLOCK_N: tl.constexpr,  # noqa: N803
        BLOCK_T: tl.constexpr,  # noqa: N803
        BLOCK_D: tl.constexpr,  # noqa: N803
    ):
        b = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        ok = b < n
        src = tl.load(rows + b, mask=ok, other=0).to(tl.int64)
        t = tl.arange(0, BLOCK_T)
        t_ok = t < num_columns
        if SELECT:  # noqa: SIM108  (a constexpr branch)
            col = tl.load(columns + t, mask=t_ok, other=0).to(tl.int64)
        else:
            col = t.to(tl.int64)
        id_mask = ok[:, None] & t_ok[None, :]
        values = tl.load(ids + src[:, None] * stride_ids + col[None, :], mask=id_mask, other=0)
        # table-major: table t's ids of the batch are out_ids[t * n : (t + 1) * n]
        tl.store(out_ids + t.to(tl.int64)[None, :] * n + b[:, None], values.to(tl.int64), mask=id_mask)
        mine = ok & (b >= lo) & (b < hi)  # the samples whose dense features and labels this process keeps
        d = tl.arange(0, BLOCK_D)
        dense_mask = mine[:, None] & (d < num_dense)[None, :]
        x = tl.load(dense + src[:, None] * stride_dense + d[None, :], mask=dense_mask, other=0.0)
        tl.store(out_dense + (b - lo).to(tl.int64)[:, None] * num_dense + d[None, :], x, mask=dense_mask)
        y = tl.load(labels + src, mask=mine, other=0.0)
        tl.store(out_labels + (b - lo), y, mask=mine)

    return SimpleNamespace(cut=_cut_kernel)


def cut_usable(rows: Tensor, ids: Tensor, dense: Tensor, labels: Tensor) -> bool:
    """Whether :func:`cut_batch` runs on these tensors (where the Triton kernels run; rows of contiguous
    columns)."""
    return rows.numel() > 0 and ids.stride(1) == 1 and dense.stride(1) == 1 and usable(rows, ids, dense, labels)


def cut_batch(
    rows: Tensor,
    ids: Tensor,
    dense: Tensor,
    labels: Tensor,
    columns: Tensor | None = None,
    samples: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The batch of ``rows``: its ids table-major as int64 (``ids[rows][:, columns].t().reshape(-1).long()``),
    and the dense features and labels of ``rows[lo:hi]`` (``samples``; default all of them)."""
    n = rows.numel()
    lo, hi = samples if samples is not None else (0, n)
    num_columns = ids.shape[1] if columns is None else columns.numel()
    num_dense = dense.shape[1]
    out_ids = torch.empty(num_columns * n, dtype=torch.int64, device=ids.device)
    out_dense = torch.empty(hi - lo, num_dense, dtype=dense.dtype, device=dense.device)
    out_labels = torch.empty(hi - lo, dtype=labels.dtype, device=labels.device)
    _kernels().cut[(triton.cdiv(n, ROWS_PER_PROGRAM),)](
        rows,
        ids,
        rows if columns is None else columns,  # (not read without SELECT)
        dense,
        labels,
        out_ids,
        out_dense,
        out_labels,
        n,
        num_columns,
        num_dense,
        lo,
        hi,
        ids.stride(0),
        dense.stride(0),
        SELECT=columns is not None,
        BLOCK_N=ROWS_PER_PROGRAM,
        BLOCK_T=block_of(max(num_columns, 1), 1),
        BLOCK_D=block_of(num_dense, 1),
    )
    return out_ids, out_dense, out_labels
