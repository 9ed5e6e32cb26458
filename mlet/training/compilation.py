"""``--compile``: parts of the graphed GPU step under ``torch.compile``.

The graphed step replays every kernel of a step with one launch, so what is
left is the kernels' own time, and many of them are small: each MLP layer's
bias gradient is a separate reduction, each ReLU and its backward a separate
elementwise pass, and the dense update two ``foreach`` passes over a few
blocks. ``torch.compile`` fuses those (the bias sums into the ReLU backward,
the update into one kernel); the step's tables, MLET's projection and the
interaction keep their own Triton kernels. Compiling happens in the first
warm-up step: seconds in ``default`` mode, minutes in ``max-autotune``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def compiled(fn: Callable, mode: str) -> Callable:
    """``fn`` under ``torch.compile`` in ``--compile`` mode ``mode`` (``default`` or ``max-autotune``): one static
    shape (the graphed batch's); ``max-autotune`` without torch's own CUDA graphs, since the whole step is
    captured in one already."""
    torch_mode = "max-autotune-no-cudagraphs" if mode == "max-autotune" else None
    return torch.compile(fn, dynamic=False, mode=torch_mode)
