"""Multi-process training: data-parallel MLPs, model-parallel embedding tables.

:class:`MultiProcess` is the ``Parallel`` of a torchrun run (building each process's part of the model, its
share of the batches, the metrics over all processes), and :func:`session` picks it or ``SingleProcess`` from
the launch environment. Below it: ``sharded_model.py`` (one process's model and optimizer),
``exchange.py`` (the all-to-all of pooled embeddings), ``gradient_sum.py`` (the MLPs' all-reduce).

The design (what each process does, gradient scaling, checkpoints, errors): docs/distributed.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from dlrm_model import DLRM, ModelConfig
from mlet.core.batch import Bar, Batches, Share, local_sizes
from mlet.core.launch import launched_world_size
from mlet.data.sources import BatchSource
from mlet.parallel import process_group
from mlet.parallel.process_group import Comm, SharedError, T, agree, training_device, wait_for_all
from mlet.parallel.sharded_model import DistributedDLRM, ShardedOptimizer
from mlet.parallel.sharding import ShardingPlan, table_bytes
from mlet.training.checkpoints import misfit_error
from mlet.training.metrics import ctr_metrics, predict
from mlet.training.optimizers import CombinedOptimizer, FusedOptimizer
from mlet.training.processes import Parallel, SingleProcess, feed


class MultiProcess:
    """A run over ``torch.distributed``: sharded tables, replicated MLPs (see the module docstring).

    Implements :class:`mlet.training.processes.Parallel`, as ``SingleProcess`` does for one process.
    """

    def __init__(self, comm: Comm, optimizer: str, backend: str) -> None:
        self.comm, self.optimizer, self.backend = comm, optimizer, backend
        self.rank, self.world_size, self.is_main, self.device = comm.rank, comm.world_size, comm.is_main, comm.device
        self.layout: tuple[ModelConfig, ShardingPlan] | None = None  # set by build_model

    @property
    def config(self) -> ModelConfig:
        """The model's architecture (known once the model is built)."""
        return self.built()[0]

    @property
    def plan(self) -> ShardingPlan:
        """Which rank owns which table (known once the model is built)."""
        return self.built()[1]

    def built(self) -> tuple[ModelConfig, ShardingPlan]:
        """The model config and sharding plan of :meth:`build_model`."""
        if self.layout is None:
            raise RuntimeError("the sharding plan is made by build_model; build the model first")
        return self.layout

    def build_model(self, config: ModelConfig, seed: int) -> DistributedDLRM:
        """This rank's part of the model, by a byte-balanced plan."""
        self.layout = (config, ShardingPlan.balanced(table_bytes(config, self.optimizer), self.world_size))
        return DistributedDLRM(config, self.comm, self.plan, seed)

    def shard_optimizer(self, optimizer: CombinedOptimizer | FusedOptimizer, model: DLRM) -> ShardedOptimizer:
        """The optimizer, saving and loading state in single-process layout."""
        assert isinstance(model, DistributedDLRM), "a multi-process run shards its model"
        return ShardedOptimizer(optimizer, model)

    def model_from_checkpoint(self, ckpt: dict) -> DistributedDLRM:
        """This rank's part of the model a checkpoint holds (sharded by a new plan)."""
        model = self.build_model(ModelConfig.from_dict(ckpt["model_config"]), seed=0)
        try:
            model.load_state_dict(ckpt["model"])
        except (RuntimeError, ValueError) as error:
            raise misfit_error(error) from None
        return model

    @property
    def share(self) -> Share:
        """What this process needs of each global batch: its samples, its tables' bags."""
        return Share(self.rank, self.world_size, tuple(self.plan.tables_of_rank[self.rank]))

    def batches(self, source: BatchSource, epoch: int, start: int = 0, workers: int = 1) -> Batches:
        """This process's share of each global batch, read as such from ``source`` (no process reads it all)."""
        return source.batches(epoch, start, workers, share=self.share)

    def all_sum(self, value: Tensor | float) -> Tensor:
        """Sum of ``value`` over the ranks (e.g. the losses' shares); a collective."""
        total = torch.as_tensor(value, device=self.device).detach().clone()
        dist.all_reduce(total, group=self.comm.group)
        return total

    def evaluate(self, model: DLRM, source: BatchSource, bf16: bool, workers: int, bar: Bar) -> dict:
        """CTR metrics over the whole test set: predictions are gathered in sample order and
        the metrics computed once, on rank 0, then shared with every rank (``bar``: wraps this process's
        shares)."""
        sizes: list[int] = []

        def counted(shares: Batches) -> Batches:
            for batch in shares:
                sizes.append(batch.size)
                yield batch

        shares = feed(source, counted(self.batches(source, 0, 0, workers)), self.device)
        probs, labels = predict(model, bar(shares), self.device, bf16)
        gathered = self.gather_samples(np.stack([probs, labels]), sizes)
        result = [ctr_metrics(gathered[0], gathered[1]) if gathered is not None else None]
        dist.broadcast_object_list(result, src=0)
        return dict(result[0] or {})

    def gather_samples(self, local: np.ndarray, batch_sizes: Sequence[int]) -> np.ndarray | None:
        """Per-sample rows (``k x n_local``) of every rank, in global sample order, on rank 0."""
        shares = [local_sizes(size, self.world_size) for size in batch_sizes]
        counts = [sum(share[r] for share in shares) for r in range(self.world_size)]
        padded = torch.zeros(local.shape[0], max(counts), dtype=torch.float64)
        padded[:, : local.shape[1]] = torch.from_numpy(local)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)] if self.is_main else None
        dist.gather(padded, parts, dst=0)
        if parts is None:
            return None
        offsets, pieces = [0] * self.world_size, []
        for share in shares:
            for rank, count in enumerate(share):
                pieces.append(parts[rank][:, offsets[rank] : offsets[rank] + count])
                offsets[rank] += count
        return torch.cat(pieces, dim=1).numpy()

    def agree(self, step: Callable[[], T]) -> T:
        """Run ``step`` on every rank; a failure on any stops all (see :func:`agree`)."""
        return agree(step)

    def summary(self) -> list[str]:
        """The plan line and the exchange line printed at the start of the run."""
        config = self.config
        per_sample = len(config.table_sizes) * config.dim * 4
        crossing = per_sample * (self.world_size - 1) / self.world_size
        mlet = (
            f"; MLET tables are projected K={config.mlet_hidden} -> d={config.dim} on their owner "
            f"(K-wide vectors would be {per_sample * config.mlet_hidden // config.dim:,} B/sample)"
            if config.mlet_hidden
            else ""
        )
        return [
            f"processes: {self.world_size} ({self.backend}, {self.device.type}); "
            "MLPs data-parallel (gradients summed by one all-reduce), tables model-parallel",
            self.plan.describe(config.table_sizes, self.optimizer),
            f"embedding exchange: all-to-all of d={config.dim} pooled vectors, "
            f"{len(config.table_sizes)} x {config.dim} x 4 B = {per_sample:,} B/sample forward and the same backward,"
            f" {crossing:,.0f} B/sample of it between processes{mlet}",
        ]

    def record(self) -> dict:
        """The layout, for checkpoints and results."""
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "plan": self.plan.to_dict() if self.layout else None,
        }


@contextmanager
def session(use_gpu: bool, backend: str | None, timeout_s: int, optimizer: str) -> Iterator[Parallel]:
    """The run's processes, from torchrun's environment (one process without it).

    ``backend`` is ``--dist-backend`` (``None``: nccl on GPUs, gloo on CPUs);
    ``optimizer`` sizes the tables' state for the sharding plan.

    A multi-process run ends with every rank waiting for the others, after
    success and after an error every rank shares; after any other error this
    rank leaves at once (a peer may be blocked in a collective with it): it
    exits, and torchrun stops the rest. One session per process: the process
    groups stay up until the process ends (see :func:`exit_process`).
    """
    if launched_world_size() <= 1:
        yield SingleProcess(torch.device("cuda" if use_gpu else "cpu"))
        return
    process_group.start(timeout_s)
    device = agree(lambda: training_device(backend, use_gpu))
    # NCCL on GPUs gets a group of its own; gloo training shares the default group
    group = dist.new_group(backend="nccl", timeout=timedelta(seconds=timeout_s)) if device.type == "cuda" else None
    if group is not None:  # NCCL connects lazily, at its first collective: here, not inside the first training step
        dist.all_reduce(torch.zeros(1, device=device), group=group)
    comm = Comm(dist.get_rank(), dist.get_world_size(), device, group)
    try:
        yield MultiProcess(comm, optimizer, "nccl" if group is not None else "gloo")
    except SharedError:
        wait_for_all(comm)
        raise
    wait_for_all(comm)
