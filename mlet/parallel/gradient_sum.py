"""The replicated MLPs' gradients summed over the processes of a multi-process run: one all-reduce of one flat
buffer, started by a hook while the tables' backward still computes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.distributed as dist
from torch import Tensor


class GradientSum:
    """The MLPs' gradients summed over the processes: one all-reduce of one flat buffer.

    Each process's loss is its share of the global mean, so the sum is the
    gradient of the global mean (DDP would average). The all-reduce starts as
    soon as backward has accumulated the last of these gradients (a
    post-accumulate-grad hook), so that it runs while the tables' backward
    still computes; :meth:`finish`, before the dense update, waits for it.
    Shapes are static, so a CUDA graph can hold it all.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], group: dist.ProcessGroup | None) -> None:
        self.params, self.group = list(params), group
        self.accumulated: set[int] = set()  # ids of the parameters whose gradient this backward has accumulated
        self.pending: PendingSum | None = None
        for param in self.params:
            param.register_post_accumulate_grad_hook(self.accumulate)

    def reset(self) -> None:
        """Forget a backward that ended without :meth:`finish`, and its all-reduce (a new forward begins)."""
        self.accumulated.clear()
        self.pending = None

    def accumulate(self, param: Tensor) -> None:
        """Hook: ``param``'s gradient is complete; the last one starts the all-reduce."""
        self.accumulated.add(id(param))
        if len(self.accumulated) == len(self.params):
            self.accumulated.clear()
            self.start()

    def start(self) -> None:
        """Start the all-reduce of the current gradients (after the current stream's work so far)."""
        if any(p.grad is None for p in self.params):
            raise RuntimeError("a replicated parameter has no gradient: the ranks' all-reduce buffers would differ")
        grads = [cast(Tensor, p.grad) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.pending = PendingSum(grads, flat, dist.all_reduce(flat, group=self.group, async_op=True))

    def finish(self) -> None:
        """Wait for the all-reduce (starting it if backward did not) and put the sums in the gradients it read."""
        if self.pending is None:
            self.start()
        assert self.pending is not None
        pending, self.pending = self.pending, None
        if pending.work is not None:
            pending.work.wait()
        sizes = [g.numel() for g in pending.grads]
        sums = [summed.view_as(grad) for summed, grad in zip(pending.flat.split(sizes), pending.grads)]
        torch._foreach_copy_(pending.grads, sums)  # one kernel for all, instead of a copy per parameter


@dataclass(frozen=True)
class PendingSum:
    """An all-reduce under way: the gradients it read, their flat copy being summed, and its handle."""

    grads: list[Tensor]
    flat: Tensor
    work: dist.Work | None
