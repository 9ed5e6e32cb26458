"""The DLRM network (arXiv 1906.00091) with plain, MLET, quotient-remainder or mixed-dimension tables.

bottom MLP(dense) -> x (B x d); tables(sparse) -> e (B x T x d);
interaction(x, e) -> z; top MLP(z) -> logit. The model returns logits; the
click probability is ``sigmoid(logit)`` (upstream's last-layer sigmoid, moved
into the loss for numerical stability).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlet.core.batch import SparseFeatures
from mlet.core.config import INTERACTIONS, ModelConfig
from mlet.kernels import triton_interaction
from mlet.model import streams
from mlet.model.composite import TableModule
from mlet_layers import EmbeddingTables, build_tables, table_seed

GPU_ALIGN = 8
"""On a GPU the MLPs' first layers take inputs whose width is rounded up to a
multiple of this (zero columns): cuBLAS's tensor-core kernels need rows of 16
bytes, and Kaggle's 13 dense features and the dot interaction's 367 columns
(d=16, 26 tables) otherwise get its slow unaligned kernels (``bench/NOTES.md``)."""


def alignment(x: Tensor) -> int:
    """The width multiple of an MLP input ``x``: :data:`GPU_ALIGN` on a GPU, else 1 (no padding)."""
    return GPU_ALIGN if x.is_cuda else 1


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is at least ``n``."""
    return n + (-n % multiple)


def pad_columns(x: Tensor, multiple: int) -> Tensor:
    """``x`` (B x n) with zero columns appended up to a multiple of ``multiple`` columns."""
    extra = round_up(x.shape[1], multiple) - x.shape[1]
    return F.pad(x, (0, extra)) if extra else x


def run_mlp(mlp: nn.Sequential, x: Tensor, align: int = 1) -> Tensor:
    """``mlp(x)``; with ``align`` > 1 the first layer runs on ``x`` padded with zero columns to a multiple of
    ``align`` (unless it comes padded, as the interaction kernels write it) and on its weight padded with as
    many zero columns, which add nothing to the products. An empty MLP passes ``x`` through."""
    if not len(mlp):
        return x
    first = mlp[0]
    assert isinstance(first, nn.Linear)
    aligned = round_up(first.in_features, align)
    if x.shape[1] not in (first.in_features, aligned):
        raise ValueError(f"the MLP's first layer takes {first.in_features} input columns, got {x.shape[1]}")
    weight = F.pad(first.weight, (0, aligned - first.in_features)) if aligned > first.in_features else first.weight
    return mlp[1:](F.linear(pad_columns(x, align), weight, first.bias))


def make_mlp(widths: Sequence[int], seed: int, salt: int, last_activation: bool) -> nn.Sequential:
    """Linear+ReLU stack with upstream DLRM's init: W ~ N(0, sqrt(2/(m+n))), b ~ N(0, sqrt(1/m))."""
    gen = torch.Generator().manual_seed(table_seed(seed, 10_000 + salt))
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        linear = nn.Linear(n_in, n_out)
        with torch.no_grad():
            linear.weight.normal_(0.0, math.sqrt(2.0 / (n_in + n_out)), generator=gen)
            linear.bias.normal_(0.0, math.sqrt(1.0 / n_out), generator=gen)
        layers.append(linear)
        if i < len(widths) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Interaction(nn.Module):
    """DLRM feature interaction over ``[x, e_1 .. e_T]``.

    ``dot``: x concatenated with the pairwise dot products of the T+1 vectors
    (strictly lower triangle, or including the diagonal when ``itself``).
    ``cat``: all T+1 vectors concatenated.
    """

    flat_pairs: Tensor

    def __init__(self, num_tables: int, kind: str = "dot", itself: bool = False) -> None:
        super().__init__()
        if kind not in INTERACTIONS:
            raise ValueError(f"interaction must be one of {INTERACTIONS}, got '{kind}'")
        self.kind, self.itself = kind, itself
        num_features = num_tables + 1
        rows, cols = torch.tril_indices(num_features, num_features, offset=0 if itself else -1)
        self.register_buffer("flat_pairs", rows * num_features + cols, persistent=False)

    def forward(self, dense: Tensor, embedded: Tensor, align: int = 1) -> Tensor:
        """``dense``: B x d, ``embedded``: B x T x d; the output's width is rounded up to a multiple of
        ``align`` with zero columns. On a GPU the dot interaction is one Triton kernel each way
        (``mlet/kernels/triton_interaction.py``)."""
        if self.kind == "cat":
            return pad_columns(torch.cat([dense, embedded.flatten(1)], dim=1), align)
        if triton_interaction.supported(dense, embedded):
            width = round_up(dense.shape[1] + len(self.flat_pairs), align)
            return triton_interaction.dot_interaction(dense, embedded, self.itself, width)
        features = torch.cat([dense.unsqueeze(1), embedded], dim=1)
        products = torch.bmm(features, features.transpose(1, 2)).flatten(1)
        return pad_columns(torch.cat([dense, products.index_select(1, self.flat_pairs)], dim=1), align)


class DLRM(nn.Module):
    """DLRM: bottom MLP, embedding tables (plain, MLET, or composite: ``mlet_layers.build_tables``), interaction,
    top MLP. ``tables`` may be any module mapping :class:`SparseFeatures` to ``B x T x d`` with ``collapse()``,
    ``table_modules()`` and ``inference_bytes()`` (e.g. quantized tables for serving)."""

    def __init__(
        self,
        config: ModelConfig,
        seed: int = 0,
        device: torch.device | str | None = None,
        tables: TableModule | None = None,
    ) -> None:
        """Build and initialise; ``tables`` replaces the freshly made tables (e.g. collapsed ones)."""
        super().__init__()
        if config.bottom_mlp[-1] != config.dim:
            raise ValueError(f"bottom MLP must end in d={config.dim}, ends in {config.bottom_mlp[-1]}")
        self.config = config
        self.bottom = make_mlp(config.bottom_mlp, seed, salt=0, last_activation=True)
        self.tables: TableModule = tables if tables is not None else build_tables(config, seed=seed, device=device)
        self.interaction = Interaction(len(config.table_sizes), config.interaction, config.interaction_itself)
        self.top = make_mlp([config.interaction_width(), *config.top_mlp], seed, salt=1, last_activation=False)
        self.to(device)

    def forward(self, dense: Tensor, sparse: SparseFeatures) -> Tensor:
        """Logits of shape ``B``. On a GPU the tables run on a stream of their own beside the bottom MLP, and so
        does their backward (``mlet/model/streams.py``)."""
        if not streams.side_stream_usable(dense):
            return self.logits(dense, self.tables(sparse))
        embedded = streams.tables_beside(self.tables, sparse)
        features = self.bottom_features(dense)  # queued on the current stream while the tables run
        return self.head(features, streams.joined(embedded))

    def logits(self, dense: Tensor, embedded: Tensor) -> Tensor:
        """Bottom MLP, interaction and top MLP on the pooled embeddings ``embedded`` (``B x T x d``); on a GPU
        with the first layers' inputs padded to aligned widths (:data:`GPU_ALIGN`)."""
        return self.head(self.bottom_features(dense), embedded)

    def bottom_features(self, dense: Tensor) -> Tensor:
        """The bottom MLP's output (``B x d``): the interaction's dense vector."""
        return run_mlp(self.bottom, dense, alignment(dense))

    def head(self, features: Tensor, embedded: Tensor) -> Tensor:
        """Interaction and top MLP: logits (``B``) from the bottom MLP's ``features`` and ``embedded``."""
        return self.top_logits(self.interaction(features, embedded, alignment(features)))

    def top_logits(self, interactions: Tensor) -> Tensor:
        """The top MLP: logits (``B``) from the interaction's output."""
        return run_mlp(self.top, interactions, alignment(interactions)).squeeze(-1)

    def collapse(self) -> DLRM:
        """The same outputs with MLET folded: a baseline DLRM (plain d-wide tables), or for composite tables the
        same quotient-remainder / mixed-dimension shape with its stored rows collapsed."""
        return self.with_tables(self.tables.collapse(), self.config.collapsed())

    def with_tables(self, tables: TableModule, config: ModelConfig | None = None) -> DLRM:
        """A DLRM with these MLPs (copied) and other ``tables`` (e.g. collapsed or quantized ones)."""
        device = next(self.bottom.parameters()).device
        other = DLRM(config or self.config, device=device, tables=tables)
        other.bottom.load_state_dict(self.bottom.state_dict())
        other.top.load_state_dict(self.top.state_dict())
        return other

    def table_modules(self) -> list[EmbeddingTables]:
        """The table modules whose weights train with row updates (one ``EmbeddingTables``, or a composite's
        groups), in the order of :meth:`sparse_parameters`."""
        return [module for _, module in self.tables.table_modules() if isinstance(module, EmbeddingTables)]

    def dense_parameters(self) -> dict[str, nn.Parameter]:
        """Named parameters with dense gradients: MLPs, the MLET and mixed-dimension projections."""
        sparse = {id(p) for p in self.sparse_parameters().values()}
        return {n: p for n, p in self.named_parameters() if id(p) not in sparse}

    def sparse_parameters(self) -> dict[str, nn.Parameter]:
        """Named parameters with sparse (row) gradients: the concatenated table weight (of each group)."""
        return {
            ".".join(["tables", *([name] if name else []), "weight"]): module.weight
            for name, module in self.tables.table_modules()
            if isinstance(module, EmbeddingTables)
        }
