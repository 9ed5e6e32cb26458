"""Optimizers for DLRM: sparse row updates for the tables, dense for the rest,
and upstream DLRM's learning-rate policy (linear warm-up, polynomial decay).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adagrad", "adam")
MIN_DECAYED_LR = 1e-7


class CombinedOptimizer:
    """Several torch optimizers stepped, zeroed, saved and restored as one."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        """All parameter groups of all optimizers."""
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self) -> None:
        """Drop all gradients (set to ``None``)."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        """One update of every parameter."""
        for opt in self.optimizers:
            opt.step()

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every group."""
        for group in self.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict:
        """Checkpointable state."""
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output."""
        saved = state["optimizers"]
        if len(saved) != len(self.optimizers):
            raise ValueError(f"checkpoint holds {len(saved)} optimizer states, this run uses {len(self.optimizers)}")
        for opt, s in zip(self.optimizers, saved):
            opt.load_state_dict(s)


def build_optimizer(name: str, lr: float, sparse_params: list[nn.Parameter], dense_params: list[nn.Parameter]) -> CombinedOptimizer:
    """``sgd`` / ``adagrad``: one optimizer over everything (both take sparse gradients).
    ``adam``: ``SparseAdam`` for the tables, ``Adam`` for the rest.
    """
    if name == "sgd":
        return CombinedOptimizer([torch.optim.SGD([*sparse_params, *dense_params], lr=lr)])
    if name == "adagrad":
        return CombinedOptimizer([torch.optim.Adagrad([*sparse_params, *dense_params], lr=lr)])
    if name == "adam":
        return CombinedOptimizer([torch.optim.SparseAdam(sparse_params, lr=lr), torch.optim.Adam(dense_params, lr=lr)])
    raise ValueError(f"unknown optimizer '{name}' (choose from {', '.join(OPTIMIZERS)})")


@dataclass(frozen=True)
class LRPolicy:
    """Upstream DLRM's schedule, without its quirks.

    Step ``s`` (0-based) uses ``base * scale(s)``: ``(s + 1) / warmup`` during the
    first ``warmup`` steps; 1 until ``decay_start``; then ``((D - k) / D) ** 2``
    for the ``k``-th of ``D = decay_steps`` steps, floored at ``1e-7 / base``
    (upstream's minimum learning rate), and held at that floor afterwards.
    """

    base_lr: float
    warmup_steps: int = 0
    decay_start: int = 0
    decay_steps: int = 0

    def lr(self, step: int) -> float:
        """Learning rate of step ``step``."""
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.decay_steps > 0 and step >= self.decay_start:
            done = min(step - self.decay_start, self.decay_steps)
            return max(self.base_lr * ((self.decay_steps - done) / self.decay_steps) ** 2, min(MIN_DECAYED_LR, self.base_lr))
        return self.base_lr
