"""The embedding tables on a CUDA stream of their own, beside the bottom MLP.

The tables' kernels move rows (memory-bound); the bottom MLP's are GEMMs and small elementwise kernels. On one
stream they take turns; on two the GPU runs them at once. Autograd runs each backward op on its forward op's
stream, so the tables' backward (with the fused row updates) runs beside the bottom MLP's backward too, and the
end of ``backward()`` makes the calling stream wait for it. H200, ``bench/gpu_throughput.py``: 2-5% off the
step, baseline and MLET alike (``bench/NOTES.md``).

Tensors that cross the streams are marked with ``record_stream``, so that the caching allocator does not hand
their memory to one stream's next tensor while the other still reads them: the batch's ids (made on the main
stream, read by the tables forward and backward), the pooled vectors (made on the side stream, read by the
interaction) and their gradient (made on the main stream, read by the tables' backward).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from mlet.core.batch import SparseFeatures


def table_stream(device: torch.device) -> torch.cuda.Stream:
    """The side stream of the tables on CUDA ``device`` (one per device and process; not held by the model,
    which stays copyable)."""
    return _stream_of(torch.cuda.current_device() if device.index is None else device.index)


@functools.cache
def _stream_of(index: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(index)


class _GradientUsedOn(torch.autograd.Function):
    """The identity; its backward marks the incoming gradient as used on ``stream`` (the backward that follows
    runs there, on a gradient the main stream made)."""

    @staticmethod
    def forward(ctx, x: Tensor, stream: torch.cuda.Stream) -> Tensor:
        ctx.stream = stream
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        grad.record_stream(ctx.stream)
        return grad, None


def tables_beside(tables: Callable[[SparseFeatures], Tensor], sparse: SparseFeatures) -> Tensor:
    """``tables(sparse)`` on the side stream of the ids' device, after the current stream's work so far (which
    made the batch); the current stream waits for it at :func:`joined`."""
    stream = table_stream(sparse.indices.device)
    stream.wait_stream(torch.cuda.current_stream(stream.device))
    for ids in (sparse.indices, sparse.offsets, sparse.weights):
        if ids is not None:
            ids.record_stream(stream)
    with torch.cuda.stream(stream):
        return _GradientUsedOn.apply(tables(sparse), stream)


def joined(embedded: Tensor) -> Tensor:
    """``embedded`` (from :func:`tables_beside`) for the current stream, which first waits for the side
    stream's work so far."""
    current = torch.cuda.current_stream(embedded.device)
    current.wait_stream(table_stream(embedded.device))
    embedded.record_stream(current)
    return embedded


def side_stream_usable(dense: Tensor) -> bool:
    """Whether a forward on ``dense``'s device runs the tables beside (a CUDA device, not under tracing or
    compilation, whose graphs would not keep the streams)."""
    return dense.is_cuda and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
