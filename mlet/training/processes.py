"""How a run's work is split between processes, as the training loop sees it.

:class:`Parallel` is what :class:`~mlet.training.trainer.Trainer` and the
command line drive: build (or load) the model, shard batches, sum losses,
evaluate, gather checkpoints. :class:`SingleProcess` is the one-process
implementation; :class:`mlet.parallel.distributed.MultiProcess` is the one
for runs under torchrun (sharded tables, replicated MLPs; docs/distributed.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import torch
from torch import Tensor

from dlrm_model import DLRM
from mlet.core.batch import Bar, Batches, Share
from mlet.core.config import ModelConfig
from mlet.core.pipeline import prefetch
from mlet.data.sources import BatchSource
from mlet.training.checkpoints import model_from_checkpoint
from mlet.training.metrics import ctr_metrics, predict
from mlet.training.optimizers import CombinedOptimizer, FusedOptimizer

T = TypeVar("T")


class Parallel(Protocol):
    """The processes of a run: one (:class:`SingleProcess`) or several (``MultiProcess``)."""

    rank: int
    world_size: int
    is_main: bool
    device: torch.device

    @property
    def share(self) -> Share | None:
        """What this process reads of each global batch (``None``: all of it)."""
        ...

    def build_model(self, config: ModelConfig, seed: int) -> DLRM:
        """This process's part of a freshly initialised model."""
        ...

    def model_from_checkpoint(self, ckpt: dict) -> DLRM:
        """This process's part of the model a checkpoint holds."""
        ...

    def shard_optimizer(self, optimizer: CombinedOptimizer | FusedOptimizer, model: DLRM):
        """The optimizer as the training loop uses it (saving and loading whole-model state)."""
        ...

    def batches(self, source: BatchSource, epoch: int, start: int = 0, workers: int = 1) -> Batches:
        """This process's part of each batch ``start..`` of ``epoch`` of ``source``."""
        ...

    def all_sum(self, value: Tensor | float) -> Tensor | float:
        """``value`` summed over the processes."""
        ...

    def evaluate(self, model: DLRM, source: BatchSource, bf16: bool, workers: int, bar: Bar) -> dict:
        """CTR metrics over every sample of ``source`` (``bf16``: the forward passes as ``--bf16`` trains),
        its batches assembled by ``workers`` threads and passed through ``bar`` on their way to the
        model."""
        ...

    def agree(self, step: Callable[[], T]) -> T:
        """Run ``step`` on every process; an error on one stops all."""
        ...

    def summary(self) -> list[str]:
        """Lines for the start of the run's log."""
        ...

    def record(self) -> dict | None:
        """The layout, for checkpoints and results."""
        ...


class SingleProcess:
    """A one-process run: the training loop's hooks do nothing special."""

    rank, world_size, is_main = 0, 1, True
    share: Share | None = None

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device if device is not None else torch.device("cpu")

    def build_model(self, config: ModelConfig, seed: int) -> DLRM:
        """The whole model on this device."""
        return DLRM(config, seed=seed, device=self.device)

    def shard_optimizer(
        self, optimizer: CombinedOptimizer | FusedOptimizer, model: DLRM
    ) -> CombinedOptimizer | FusedOptimizer:
        """The optimizer as is."""
        return optimizer

    def model_from_checkpoint(self, ckpt: dict) -> DLRM:
        """The model a checkpoint holds, on this device."""
        return model_from_checkpoint(ckpt, self.device)

    def batches(self, source: BatchSource, epoch: int, start: int = 0, workers: int = 1) -> Batches:
        """The whole batches."""
        return source.batches(epoch, start, workers)

    def all_sum(self, value: Tensor | float) -> Tensor | float:
        """The value itself (there is no other process)."""
        return value

    def evaluate(self, model: DLRM, source: BatchSource, bf16: bool, workers: int, bar: Bar) -> dict:
        """CTR metrics over every sample of ``source``, on the device ``model`` is on: a quantized copy's is the
        CPU (its lookups are CPU kernels) whatever the run's, and there in float32 (``--bf16`` is the GPU's)."""
        device = next(model.parameters()).device
        batches = feed(source, self.batches(source, 0, 0, workers), device)
        return ctr_metrics(*predict(model, bar(batches), device, bf16 and device.type == "cuda"))

    def agree(self, step: Callable[[], T]) -> T:
        """Run ``step``."""
        return step()

    def summary(self) -> list[str]:
        """No extra start-of-run lines."""
        return []

    def record(self) -> dict | None:
        """Nothing to store in checkpoints and results."""
        return None


def feed(source: BatchSource, batches: Batches, device: torch.device) -> Batches:
    """``batches`` as a loop takes them: host batches made ahead by a thread (page-locked for a GPU);
    device batches as they are (their rows, cut when first read, inside the CUDA graph for a graphed
    step: a thread would only add a hand-over and contention for the interpreter lock)."""
    if source.device is not None:
        return batches
    return prefetch(batches, pin=needs_pinning(source, device))


def needs_pinning(source: BatchSource, device: torch.device) -> bool:
    """Whether ``source``'s batches travel to ``device`` (host batches to a GPU): then they are page-locked,
    for asynchronous copies."""
    return device.type == "cuda" and source.device is None
