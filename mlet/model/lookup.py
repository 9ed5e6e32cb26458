"""Row numbers of a batch's ids in tables stored one after another (one weight, per-table row offsets)."""

from __future__ import annotations

from torch import Tensor

from mlet.core.batch import SparseFeatures
from mlet.kernels import triton_kernels


def global_rows(features: SparseFeatures, row_offsets: Tensor, shift_cache: dict[tuple, Tensor]) -> Tensor:
    """Rows of the concatenated weight for each local id in ``features`` (table ``t`` starts at
    ``row_offsets[t]``); the one-hot shift is kept in ``shift_cache`` per batch size."""
    if features.one_hot:
        return features.indices + one_hot_shift(row_offsets, features.batch_size, shift_cache)
    counts = features.table_boundaries().diff()
    shift = row_offsets[:-1].repeat_interleave(counts, output_size=features.indices.numel())
    return features.indices + shift


def one_hot_shift(row_offsets: Tensor, batch_size: int, cache: dict[tuple, Tensor]) -> Tensor:
    """Row offset of each position of a one-hot batch (cached per batch size).

    Every size's shift stays cached for the life of ``cache``: a CUDA graph captured on one batch size
    reads its shift's memory at every replay, so dropping it when a batch of another size comes (an
    epoch's last, smaller batch; a test batch) would free memory the graph still reads; the next replays
    then looked rows up at whatever was written there (a run on the GPU ended with an illegal memory
    access in its second epoch). A source has few batch sizes, so the cache stays small.
    """
    key = (batch_size, row_offsets.device)
    if key not in cache:
        cache[key] = row_offsets[:-1].repeat_interleave(batch_size)
    return cache[key]


def padded(features: SparseFeatures) -> SparseFeatures:
    """``features.padded()``: every bag padded to ``max_bag`` ids with ids of weight 0; on a GPU in one Triton
    kernel (some twenty small PyTorch kernels otherwise, a step's padding outside its CUDA graph)."""
    if features.weights is None and features.indices.numel() and triton_kernels.usable(features.indices):
        width = features.checked_max_bag()
        ids, weights = triton_kernels.pad_bags(features.indices, features.offsets, width)
        return features.padded_as(ids, weights, width)
    return features.padded()
