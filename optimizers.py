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
    """Several torch optimizers stepped, zeroed, saved and restored as one.

    The saved state is keyed by *parameter name* (``{"state": {name: {...}}}``),
    not by torch's positional ids, so it does not depend on how parameters
    were grouped or sharded: a distributed run can gather it table by table
    and a run with another layout can load it.
    """

    def __init__(self, name: str, optimizers: Sequence[torch.optim.Optimizer], names: dict[int, str]) -> None:
        self.name = name
        self.optimizers = list(optimizers)
        self.names = names  # id(parameter) -> parameter name

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
        """Per-parameter optimizer state keyed by parameter name."""
        state: dict[str, dict] = {}
        for opt in self.optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    if opt.state.get(p):
                        state[self.names[id(p)]] = dict(opt.state[p])
        return {"optimizer": self.name, "state": state}

    def load_state_dict(self, saved: dict) -> None:
        """Restore :meth:`state_dict` output (parameters missing from it start fresh)."""
        if saved.get("optimizer") != self.name:
            raise ValueError(f"checkpoint was trained with --optimizer={saved.get('optimizer')}, this run uses --optimizer={self.name}")
        for opt in self.optimizers:
            current = opt.state_dict()
            by_position = {}
            for group, current_group in zip(opt.param_groups, current["param_groups"]):
                for p, position in zip(group["params"], current_group["params"]):
                    if self.names[id(p)] in saved["state"]:
                        by_position[position] = saved["state"][self.names[id(p)]]
            opt.load_state_dict({"state": by_position, "param_groups": current["param_groups"]})


def build_optimizer(name: str, lr: float, sparse: dict[str, nn.Parameter], dense: dict[str, nn.Parameter]) -> CombinedOptimizer:
    """Optimizer over named parameters; ``sparse`` ones get sparse row gradients.

    ``sgd`` / ``adagrad``: one torch optimizer over everything (both take sparse
    gradients). ``adam``: ``SparseAdam`` for the tables, ``Adam`` for the rest.
    """
    names = {id(p): n for n, p in [*sparse.items(), *dense.items()]}
    everything = [*sparse.values(), *dense.values()]
    if name == "sgd":
        return CombinedOptimizer(name, [torch.optim.SGD(everything, lr=lr)], names)
    if name == "adagrad":
        return CombinedOptimizer(name, [torch.optim.Adagrad(everything, lr=lr)], names)
    if name == "adam":
        optimizers = [torch.optim.SparseAdam(list(sparse.values()), lr=lr), torch.optim.Adam(list(dense.values()), lr=lr)]
        return CombinedOptimizer(name, optimizers, names)
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
