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

import os
from collections.abc import Callable

import torch


def compiled(fn: Callable, mode: str) -> Callable:
    """``fn`` under ``torch.compile`` in ``--compile`` mode ``mode`` (``default`` or ``max-autotune``): one static
    shape (the graphed batch's); ``max-autotune`` without torch's own CUDA graphs, since the whole step is
    captured in one already."""
    compile_in_this_process()
    torch_mode = "max-autotune-no-cudagraphs" if mode == "max-autotune" else None
    return torch.compile(fn, dynamic=False, mode=torch_mode)


def compile_in_this_process() -> None:
    """Inductor compiles its kernels here rather than in its pool of worker processes, unless the environment
    says otherwise (``TORCHINDUCTOR_COMPILE_THREADS``). The step has a few dozen small kernels: on an H200
    host of 16 cores the pool shortened a cold compile by 0.5 s (12.4 against 12.9 s), and with the caches
    warm, when nothing is left to compile, its start-up held the process ~6 s at exit
    (``bench/results/compile_startup_h200.log``)."""
    if "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        import torch._inductor.config  # here: importing inductor takes seconds, which only --compile pays

        torch._inductor.config.compile_threads = 1
