"""Mixed precision (``--bf16``): the MLPs and the interaction in bfloat16, everything else in float32.

Under ``--bf16`` the forward passes run inside ``torch.autocast(dtype=bfloat16)``:
the matrix products of the bottom and top MLPs and the interaction's batched
product take bfloat16 inputs (tensor cores, half the bytes), while the
parameters stay float32 (the optimizer updates float32 master weights), the
embedding tables and MLET's projection stay float32 (``EmbeddingTables``
turns autocast off: row updates of a few ids per step would lose them to
bfloat16's 8-bit mantissa), and the loss is taken on float32 logits.
``cache_enabled=False``: a captured CUDA graph must cast the current weights
at every replay, not keep the casts of the step it was captured in.
"""

from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """The forward pass's precision context: bfloat16 autocast under ``--bf16``, else nothing."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
