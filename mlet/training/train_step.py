"""The training step: eager, or captured once in a CUDA graph and replayed.

A DLRM step is many small kernels (MLP layers, lookups, interaction, loss,
backward, updates); on a GPU, launching them from Python costs more than
running them. With the fused embedding update (``optimizers.FusedOptimizer``)
every shape in the step is static for a given batch shape, so the whole step
- forward, backward, table and dense updates - is captured in one CUDA graph
and replayed with one launch. Multi-hot bags whose total length varies from
batch to batch are padded to one length with ids of weight 0, where the
source promises a longest bag and the tables read weights (plain and MLET
tables). Batches of another shape (the last, smaller batch of an epoch;
other multi-hot bags of another total) run eagerly.
Under ``torchrun`` the graph also holds the step's collectives (the
embedding all-to-all and the MLP gradients' all-reduce,
``mlet/parallel/exchange.py``, ``gradient_sum.py``), whose shapes are static too.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator
from typing import cast

import torch
from torch import Tensor, nn

from mlet.core.batch import SparseFeatures, StepBatch
from mlet.model import lookup
from mlet.training.compilation import compiled
from mlet.training.losses import LossFn
from mlet.training.precision import autocast
from mlet_layers import EmbeddingTables


def batch_loss(loss_fn: LossFn, logits: Tensor, batch: StepBatch) -> Tensor:
    """The mean loss of ``batch``, or this process's share of it when ``batch`` holds part of a
    global batch of ``batch.size`` samples: the local mean weighted by the local share, so the
    shares of all processes add up to the global mean (see ``mlet/parallel/gradient_sum.py``)."""
    local = batch.labels.numel()
    if local == batch.size:
        return loss_fn(logits, batch.labels)
    if local == 0:
        return logits.sum() * 0.0  # no sample here; the backward (and its collectives) still runs
    return loss_fn(logits, batch.labels) * (local / batch.size)


class TrainStep:
    """One eager optimisation step: forward, loss, backward, update (``bf16``: see ``precision.py``).

    ``other_shape_steps`` counts the steps a graphed step (:class:`GraphedTrainStep`) ran eagerly because
    their batch's shape was not the captured one; it stays 0 here, where no step is meant to be replayed.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, optimizer, bf16: bool = False) -> None:
        self.model, self.loss_fn, self.optimizer, self.bf16 = model, loss_fn, optimizer, bf16
        self.device = next(model.parameters()).device
        self.other_shape_steps = 0

    @property
    def padded_bag_length(self) -> int | None:
        """The ids every multi-hot bag is padded to (a graphed step's, :class:`GraphedTrainStep`); None: none is."""
        return None

    def logits(self, batch: StepBatch) -> Tensor:
        """The model's float32 logits for ``batch``."""
        with autocast(self.device, self.bf16):
            logits = self.model(batch.dense, batch.sparse)
        return logits.float()

    def __call__(self, batch: StepBatch) -> Tensor:
        """Train on ``batch`` (already on the model's device); returns the detached loss."""
        loss = batch_loss(self.loss_fn, self.logits(batch), batch)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def fields_of(batch: object) -> list[tuple[str, object]]:
    """``(name, value)`` of each field of a dataclass instance (a batch or a part of one); ``[]`` for anything else."""
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return [(field.name, getattr(batch, field.name)) for field in dataclasses.fields(batch)]
    return []


def batch_tensors(batch: object) -> list[Tensor]:
    """Every tensor of a batch (:class:`Batch`, or a process's ``BatchShard``), in field order; of a
    ``RowsBatch`` (``mlet/data/device.py``) only its rows: the cut happens inside the graph."""
    if isinstance(batch, Tensor):
        return [batch]
    return [t for _, value in fields_of(batch) for t in batch_tensors(value)]


def batch_shape(batch: object, any_bag_length: bool = False) -> object:
    """What a captured graph is specific to: every tensor's shape and the other fields
    (sample counts, table counts, one-hot or not), as a hashable value. A ``RowsBatch``'s source
    compares by identity: the graph reads that source's arrays. ``any_bag_length``: multi-hot bags
    of any total length count as one shape, given their longest bag (they can be padded to one,
    :func:`padded_bags`)."""
    if isinstance(batch, Tensor):
        return tuple(batch.shape)
    if any_bag_length and isinstance(batch, SparseFeatures) and not batch.one_hot and batch.max_bag is not None:
        return ("bags", tuple(batch.offsets.shape), batch.num_tables, batch.max_bag, batch.weights is None)
    if dataclasses.is_dataclass(batch):
        return tuple(batch_shape(value, any_bag_length) for _, value in fields_of(batch))
    return batch


def multi_hot_bags(batch: object) -> list[SparseFeatures]:
    """The batch's multi-hot bags (none for one-hot ones)."""
    if isinstance(batch, SparseFeatures):
        return [] if batch.one_hot else [batch]
    return [bags for _, value in fields_of(batch) for bags in multi_hot_bags(value)]


def bag_id_count(batch: object) -> int:
    """How many ids the batch's multi-hot bags hold (0 for one-hot bags or none)."""
    return sum(bags.indices.numel() for bags in multi_hot_bags(batch))


def short_bags(batch: object) -> bool:
    """Whether a multi-hot bag of the batch holds fewer ids than its source's longest (``max_bag``): the bags'
    lengths vary, so their totals do (fixed-length bags all hold ``max_bag``)."""
    return any(
        bags.max_bag is not None and bags.indices.numel() < (bags.offsets.numel() - 1) * bags.max_bag
        for bags in multi_hot_bags(batch)
    )


def paddable(batch: object) -> bool:
    """Whether every multi-hot bag of the batch promises its longest length (and there is one)."""
    bags = multi_hot_bags(batch)
    return bool(bags) and all(b.max_bag is not None for b in bags)


def padded_bags(batch: object) -> object:
    """``batch`` with each of its multi-hot bags padded to its longest possible (``SparseFeatures.padded``)."""
    if isinstance(batch, SparseFeatures):
        return batch if batch.one_hot else lookup.padded(batch)
    if not multi_hot_bags(batch):
        return batch
    return dataclasses.replace(batch, **{name: padded_bags(value) for name, value in fields_of(batch)})  # type: ignore[type-var]


COMPILED_PARTS = ("bottom_features", "top_logits")
"""The model's methods ``--compile`` compiles: its two MLPs. The interaction and a multi-process model's
embedding exchange run uncompiled between them: inside a compiled part the interaction's Triton kernels and
the exchange's collectives would only break the traced graph. (The PyTorch interaction, used for ``cat``,
over 127 vectors or without Triton, runs eagerly as well; no GPU run of those was timed.)"""


def compiled_parts(model: nn.Module, mode: str) -> dict[str, Callable] | None:
    """:data:`COMPILED_PARTS` of ``model`` under ``--compile`` mode ``mode``, or None for ``none``."""
    if mode == "none":
        return None
    return {name: compiled(cast(Callable, getattr(model, name)), mode) for name in COMPILED_PARTS}


@contextlib.contextmanager
def compiled_from(model: nn.Module, parts: dict[str, Callable] | None) -> Iterator[None]:
    """Inside the block ``model`` computes its logits with the compiled ``parts``, where given."""
    if parts is None:
        yield
        return
    for name, part in parts.items():
        object.__setattr__(model, name, part)  # the instance attribute shadows the method
    try:
        yield
    finally:
        for name in parts:
            delattr(model, name)


class GraphedTrainStep(TrainStep):
    """:class:`TrainStep` replayed from a CUDA graph for the first full batch shape seen.

    Until the capture, a larger batch than the one warming up (after the last,
    smaller batch of an epoch that a resumed run starts with) restarts the
    warm-up on its shape, so that one short batch cannot leave a whole run
    eager. The first ``warmup`` steps of that shape run eagerly on a side stream
    (this initialises cuBLAS handles and lazily allocated state, as CUDA-graph
    capture requires); the next one is captured and replayed; later ones only
    copy the batch into the graph's static inputs and replay. Every step is a
    real training step: capture itself runs nothing, the replay that follows
    it does. The optimizer must keep its learning rate on the device
    (``FusedOptimizer``), since a replay cannot see Python floats change.
    With ``compile`` (``--compile``, ``compilation.py``) the captured shape's
    MLPs run compiled (the first warm-up step compiles them; other shapes run
    them eagerly), and so does the optimizer's dense update.

    Multi-hot bags: when the source promises a longest bag
    (``SparseFeatures.max_bag``), a warm-up batch had shorter ones (their
    totals vary) and the model's tables are ``EmbeddingTables`` (not the
    quotient-remainder and mixed-dimension ones, whose per-table cut is made
    on the host), every bag is padded to that length (:func:`padded_bags`),
    so the one graph takes every batch; one more warm-up step runs padded
    before the capture, so that the capture launches no kernel for the first
    time. Fixed-length bags keep their length, unpadded.
    """

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, optimizer, bf16: bool = False, warmup: int = 3, compile: str = "none"
    ) -> None:
        super().__init__(model, loss_fn, optimizer, bf16)
        self.compiled = compiled_parts(model, compile)
        self.compiled_loss: LossFn | None = None
        if compile != "none":
            # the loss forward and backward: some fifteen one-microsecond kernels eager, a few fused
            self.compiled_loss = compiled(loss_fn, compile)
            optimizer.compile_dense_update(compile)
        self.warmup = warmup
        self.shape: object = None
        self.shape_size = 0  # samples in a batch of that shape
        self.warmed = 0
        self.pads_bags = isinstance(getattr(model, "tables", None), EmbeddingTables)
        self.padding = False  # whether each multi-hot bag is padded to its longest possible
        self.warmed_padded = False  # whether a warm-up step ran padded
        self.bag_total: int | None = None  # unpadded multi-hot bags: the ids' total the graph takes
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_batch: StepBatch | None = None
        self.static_loss: Tensor | None = None
        self.loaded: list[tuple[Tensor, int]] = []  # each input last copied in, with its version then

    def __call__(self, batch: StepBatch) -> Tensor:
        """Train on ``batch``: replay if it has (or is padded to) the captured shape, else run eagerly."""
        shape = batch_shape(batch, any_bag_length=self.pads_bags)
        if self.graph is None and (self.shape is None or batch.size > self.shape_size):  # not captured: a fuller one
            self.shape, self.shape_size, self.warmed = shape, batch.size, 0
            self.padding = self.warmed_padded = False
        if shape != self.shape:
            return self._eager(batch)
        if self.graph is None:
            self.padding = self.padding or (self.pads_bags and paddable(batch) and short_bags(batch))
            if self.warmed < self.warmup or (self.padding and not self.warmed_padded):
                self.warmed += 1
                self.warmed_padded = self.padding
                return self._side_stream_step(cast(StepBatch, padded_bags(batch)) if self.padding else batch)
            self.bag_total = bag_id_count(batch) if multi_hot_bags(batch) else None  # one-hot: the shape says all
        fitted = self._fitted(batch)
        if fitted is None:
            return self._eager(batch)
        if self.graph is None:
            self._capture(fitted)
        self._load(fitted)
        assert self.graph is not None and self.static_loss is not None
        self.graph.replay()
        return self.static_loss

    @property
    def padded_bag_length(self) -> int | None:
        """The ids every multi-hot bag is padded to, once captured; None: none is."""
        return multi_hot_bags(self.static_batch)[0].max_bag if self.padding and self.graph is not None else None

    def _eager(self, batch: StepBatch) -> Tensor:
        self.other_shape_steps += 1
        return super().__call__(batch)

    def _fitted(self, batch: StepBatch) -> StepBatch | None:
        """``batch`` as the graph takes it (padded, where its bags are), or None if it does not fit."""
        if self.padding:
            return cast(StepBatch, padded_bags(batch))  # (the shape holds the longest bag: it fits)
        return batch if self.bag_total is None or bag_id_count(batch) == self.bag_total else None

    def _side_stream_step(self, batch: StepBatch) -> Tensor:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), self._compiled():
            loss = super().__call__(batch)
        torch.cuda.current_stream().wait_stream(side)
        return loss

    @contextlib.contextmanager
    def _compiled(self) -> Iterator[None]:
        """Inside the block the step runs its compiled parts (``--compile``): the model's MLPs and the loss. Only
        the captured shape's warm-up and capture use them; other shapes run eagerly (no recompiling)."""
        with compiled_from(self.model, self.compiled):
            if self.compiled_loss is None:
                yield
                return
            eager, self.loss_fn = self.loss_fn, self.compiled_loss
            try:
                yield
            finally:
                self.loss_fn = eager

    def _capture(self, batch: StepBatch) -> None:
        self.static_batch = copy.deepcopy(batch)  # the graph's own input tensors
        self.optimizer.zero_grad()
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the prefetch thread's pinned allocations must not invalidate the capture
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"), self._compiled():
            loss = batch_loss(self.loss_fn, self.logits(self.static_batch), self.static_batch)
            loss.backward()
            self.optimizer.step()
            self.static_loss = loss.detach()

    def _load(self, batch: StepBatch) -> None:
        """Copy ``batch`` into the graph's inputs, except a tensor that is the very one copied in last time and
        unchanged since (the shared one-hot offsets): its copy would write the same values."""
        tensors = batch_tensors(batch)
        for i, (static, new) in enumerate(zip(batch_tensors(self.static_batch), tensors)):
            if i < len(self.loaded) and self.loaded[i][0] is new and self.loaded[i][1] == new._version:
                continue
            static.copy_(new, non_blocking=True)
        self.loaded = [(t, t._version) for t in tensors]  # held: an id could otherwise be reused


def make_train_step(
    model: nn.Module, loss_fn: LossFn, optimizer, cuda_graph: bool, bf16: bool = False, compile: str = "none"
) -> TrainStep:
    """A graphed step where asked for and possible (CUDA, fused optimizer), else eager (``compile`` needs the
    graphed one: the command line refuses it otherwise)."""
    if cuda_graph:
        return GraphedTrainStep(model, loss_fn, optimizer, bf16, compile=compile)
    return TrainStep(model, loss_fn, optimizer, bf16)
