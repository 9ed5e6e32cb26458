"""Tables of several shapes in one module: quotient-remainder pairs, mixed dimensions, plain tables.

A model whose features do not all share one ``n x d`` (or MLET ``n x K``)
weight is a :class:`CompositeTables`. Each feature's table (``TableConfig``)
is stored as one or two *slots*: a plain or mixed-dimension table is one slot
of its own rows; a quotient-remainder pair is two (the quotient, indexed by
``id // c``, and the remainder, indexed by ``id % c``). Slots of the same
shape (stored width, MLET inner width, projected or not) live in one *group*:
one table module of the layer above (``mlet_layers.EmbeddingTables``, passed
in as a factory, or a quantized one for serving), with its fused weight, its
single lookup kernel and its fused row updates. So a batch costs one lookup
per group, whatever the number of features.

After the lookups, a mixed-dimension group is projected to ``d`` by one
stacked ``T_g x d_t x d`` parameter (one batched matmul), and
:meth:`CompositeTables.assemble` combines the slots into ``B x T x d``: a
whole slot is its feature's embedding, a quotient and a remainder slot are
combined by the pair's operation. MLET applies inside each group (``W1 @ W2``
per slot); :meth:`CompositeTables.collapse` folds it group by group and keeps
the composite shape: quotient-remainder pairs stay pairs, mixed-dimension
tables stay ``n x d_t`` with their projections.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from mlet.core.batch import SparseFeatures
from mlet.core.config import ModelConfig
from mlet.model import quotient_remainder
from mlet.model.init import RowFill, fill_from_cpu, init_projection_, symmetric_uniform_, table_seed, uniform_rows_
from mlet.model.mixed_dimension import projection_bound

MD_PROJECTION_SALT = 4


@dataclass(frozen=True)
class Slot:
    """One stored table: part ``part`` (0: whole or quotient, 1: remainder) of feature ``feature``.

    Its ids are ``(id // divisor) % modulus`` of the feature's; it is table
    ``index`` of group ``group``.
    """

    feature: int
    part: int
    rows: int
    divisor: int
    modulus: int
    group: int
    index: int


@dataclass(frozen=True)
class GroupSpec:
    """Slots of one shape: stored ``width``, MLET inner width ``hidden`` (0: none), projected to ``d`` or not."""

    width: int
    hidden: int
    projected: bool
    slots: tuple[Slot, ...]

    @property
    def sizes(self) -> list[int]:
        """Rows of each slot, in group order."""
        return [s.rows for s in self.slots]


@dataclass(frozen=True)
class SlotPlan:
    """Where each feature's table is stored and how the slots combine (a function of the ``ModelConfig``)."""

    dim: int
    operation: str
    groups: tuple[GroupSpec, ...]

    @classmethod
    def of(cls, config: ModelConfig) -> SlotPlan:
        """The plan of ``config``'s tables (``ModelConfig.table_configs``)."""
        shapes: dict[tuple[int, int, bool], list[tuple[int, int, int, int, int]]] = {}
        for t, table in enumerate(config.table_configs()):
            key = (table.width, table.hidden, table.projected)
            if table.collisions:
                quotient, remainder = table.parts
                shapes.setdefault(key, []).append((t, 0, quotient, table.collisions, quotient))
                shapes[key].append((t, 1, remainder, 1, remainder))
            else:
                shapes.setdefault(key, []).append((t, 0, table.rows, 1, table.rows))
        groups = []
        for g, (key, members) in enumerate(sorted(shapes.items(), key=lambda item: (-item[0][0], item[0][1:]))):
            slots = tuple(Slot(t, part, rows, div, mod, g, i) for i, (t, part, rows, div, mod) in enumerate(members))
            groups.append(GroupSpec(key[0], key[1], key[2], slots))
        return cls(config.dim, config.qr_operation, tuple(groups))

    @property
    def slots(self) -> list[Slot]:
        """Every slot, group by group."""
        return [s for g in self.groups for s in g.slots]

    def parts_of(self, feature: int) -> list[Slot]:
        """The slots of one feature, by part."""
        return sorted((s for s in self.slots if s.feature == feature), key=lambda s: s.part)


class TableModule(Protocol):
    """What the DLRM needs of its tables: ``EmbeddingTables``, :class:`CompositeTables`, or quantized tables."""

    @property
    def num_tables(self) -> int:
        """Number of features."""
        ...

    def __call__(self, features: SparseFeatures) -> Tensor:
        """Pooled embeddings, ``B x T x d``."""
        ...

    def collapse(self) -> TableModule:
        """The same function with MLET folded (itself where there is nothing to fold)."""
        ...

    def table_modules(self) -> Sequence[tuple[str, nn.Module]]:
        """``(name, module)`` of each module whose ``weight`` trains with row updates."""
        ...

    def inference_bytes(self) -> int:
        """Bytes of the tables as served."""
        ...


GroupFactory = Callable[[GroupSpec], nn.Module]
"""Builds the table module of a group: ``forward(SparseFeatures) -> B x T_g x width``, ``collapse()``,
``inference_bytes()``; an ``EmbeddingTables`` (``mlet_layers.py``) or a quantized table for serving."""


class CompositeTables(nn.Module):
    """Every feature's table, in groups of like-shaped slots (see the module docstring).

    Args:
        config: the model's architecture (its ``table_configs``).
        groups: one table module per group of :attr:`plan` (uninitialised ones are filled by
            :meth:`reset_parameters`).
        projections: mixed-dimension projections (``T_g x d_t x d``) by group number; new (empty)
            parameters where not given.
        device: where new projections go.
    """

    whole_at: Tensor
    quotient_at: Tensor
    remainder_at: Tensor
    feature_order: Tensor

    def __init__(
        self,
        config: ModelConfig,
        groups: Sequence[nn.Module],
        projections: dict[int, Tensor] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.config, self.plan = config, SlotPlan.of(config)
        self.dim, self.num_tables = config.dim, len(config.table_sizes)
        if len(groups) != len(self.plan.groups):
            raise ValueError(f"the plan has {len(self.plan.groups)} groups, {len(groups)} given")
        self.groups = nn.ModuleList(groups)
        self.md_projections = nn.ParameterDict()
        for g, spec in enumerate(self.plan.groups):
            if spec.projected:
                given = (projections or {}).get(g)
                shape = (len(spec.slots), spec.width, config.dim)
                value = given.detach().clone() if given is not None else torch.empty(shape, device=device)
                self.md_projections[str(g)] = nn.Parameter(value)
        self._register_routing()
        self._offsets_cache: dict[tuple, Tensor] = {}

    @staticmethod
    def plan_of(config: ModelConfig) -> SlotPlan:
        """The slot plan of ``config`` (as :attr:`plan` of its tables)."""
        return SlotPlan.of(config)

    @classmethod
    def build(cls, config: ModelConfig, factory: GroupFactory, seed: int | None, device=None) -> CompositeTables:
        """New tables of ``config``: one ``factory(spec)`` per group, initialised from ``seed`` (None: left empty)."""
        plan = SlotPlan.of(config)
        tables = cls(config, [factory(spec) for spec in plan.groups], device=device)
        if seed is not None:
            tables.reset_parameters(seed)
        return tables

    def _register_routing(self) -> None:
        """Index buffers: each group's source features and id transforms, and where each slot goes in
        :meth:`assemble`."""
        for g, spec in enumerate(self.plan.groups):
            slots = spec.slots
            self.register_buffer(f"source_{g}", torch.tensor([s.feature for s in slots]), persistent=False)
            self.register_buffer(f"divisor_{g}", torch.tensor([s.divisor for s in slots]), persistent=False)
            self.register_buffer(f"modulus_{g}", torch.tensor([s.modulus for s in slots]), persistent=False)
        half = [g for g, spec in enumerate(self.plan.groups) if self.output_width(spec) != self.dim]
        self.full_groups = [g for g in range(len(self.plan.groups)) if g not in half]
        self.half_groups = half
        position = {}
        for kind, groups in (("full", self.full_groups), ("half", self.half_groups)):
            at = 0
            for g in groups:
                for s in self.plan.groups[g].slots:
                    position[(s.feature, s.part)] = (kind, at)
                    at += 1
        whole = [t for t in range(self.num_tables) if len(self.plan.parts_of(t)) == 1]
        pairs = [t for t in range(self.num_tables) if len(self.plan.parts_of(t)) == 2]
        self.pair_source = "half" if pairs and position[(pairs[0], 0)][0] == "half" else "full"
        self.register_buffer("whole_at", torch.tensor([position[(t, 0)][1] for t in whole]), persistent=False)
        self.register_buffer("quotient_at", torch.tensor([position[(t, 0)][1] for t in pairs]), persistent=False)
        self.register_buffer("remainder_at", torch.tensor([position[(t, 1)][1] for t in pairs]), persistent=False)
        order = whole + pairs
        self.register_buffer(
            "feature_order", torch.tensor(sorted(range(len(order)), key=order.__getitem__)), persistent=False
        )
        self.has_pairs = bool(pairs)

    def output_width(self, spec: GroupSpec) -> int:
        """Width of a group's slots after its projection: ``d``, or ``d / 2`` for concatenated halves."""
        return self.dim if spec.projected else spec.width

    # -- initialisation ---------------------------------------------------------------
    def reset_parameters(self, seed: int) -> None:
        """Rows uniform(+-bound) per slot (``quotient_remainder.init_bound``; plain and mixed-dimension tables
        as a plain table, uniform(+-sqrt(1/n))), MLET's ``W2`` per ``--mlet-init``, projections xavier-uniform.

        Slot ``(t, part)`` draws from seeds of ``(seed, t)`` only (salts ``2 * part`` for the rows,
        ``2 * part + 1`` for ``W2``), so a plain feature starts as in a plain model of the same seed.
        """
        with torch.no_grad():
            uniform_rows_([self.slot_rows(g, s, seed) for g, spec in enumerate(self.plan.groups) for s in spec.slots])
            for g, spec in enumerate(self.plan.groups):
                group: Any = self.groups[g]  # an EmbeddingTables (mlet_layers.py): table_weight, w2
                for s in spec.slots:
                    if spec.hidden:
                        gen = torch.Generator().manual_seed(table_seed(seed, s.feature, 2 * s.part + 1))
                        init = functools.partial(init_projection_, spec=self.config.mlet_init, gen=gen)
                        fill_from_cpu(group.w2[s.index], init)
                    if spec.projected:
                        gen = torch.Generator().manual_seed(table_seed(seed, s.feature, MD_PROJECTION_SALT))
                        fill = functools.partial(
                            symmetric_uniform_, bound=projection_bound(spec.width, self.dim), gen=gen
                        )
                        fill_from_cpu(self.md_projections[str(g)][s.index], fill)

    def slot_rows(self, g: int, slot: Slot, seed: int) -> RowFill:
        """A slot's rows, their bound and their seed, for :func:`~mlet.model.init.uniform_rows_`."""
        bound = quotient_remainder.init_bound(self.config.table_sizes[slot.feature], slot.part, self.plan.operation)
        group: Any = self.groups[g]
        return group.table_weight(slot.index), bound, table_seed(seed, slot.feature, 2 * slot.part)

    # -- forward ------------------------------------------------------------------------
    def group_features(self, g: int, features: SparseFeatures) -> SparseFeatures:
        """The bags of group ``g``'s slots: their features' bags, ids mapped to the slots' rows."""
        source = getattr(self, f"source_{g}")
        divisor, modulus = getattr(self, f"divisor_{g}"), getattr(self, f"modulus_{g}")
        count = source.numel()
        if features.one_hot:
            batch = features.batch_size
            ids = features.indices.view(features.num_tables, batch).index_select(0, source)
            if self.has_pairs:
                ids = torch.remainder(torch.div(ids, divisor[:, None], rounding_mode="floor"), modulus[:, None])
            return SparseFeatures(ids.reshape(-1), self._one_hot_offsets(count * batch, ids.device), count, True)
        chosen = features.select_tables(source.tolist())
        if not self.has_pairs:
            return chosen
        lengths = chosen.table_boundaries().diff()
        total = chosen.indices.numel()
        div = divisor.repeat_interleave(lengths, output_size=total)
        mod = modulus.repeat_interleave(lengths, output_size=total)
        ids = torch.remainder(torch.div(chosen.indices, div, rounding_mode="floor"), mod)
        return SparseFeatures(ids, chosen.offsets, count, False, chosen.max_bag, chosen.weights)

    def _one_hot_offsets(self, bags: int, device: torch.device) -> Tensor:
        """``0..bags``, cached per size and kept: each group has its own size, and a captured CUDA graph may
        still read one after another size was asked for."""
        key = (bags, device)
        if key not in self._offsets_cache:
            self._offsets_cache[key] = torch.arange(bags + 1, dtype=torch.int64, device=device)
        return self._offsets_cache[key]

    def project(self, g: int, embedded: Tensor) -> Tensor:
        """Group ``g``'s lookups (``B x T_g x width``) through its mixed-dimension projections, if any."""
        if str(g) not in self.md_projections:
            return embedded
        return torch.bmm(embedded.transpose(0, 1), self.md_projections[str(g)]).transpose(0, 1)

    def assemble(self, outputs: Sequence[Tensor]) -> Tensor:
        """``B x T x d`` from every group's projected outputs (``B x T_g x width``), in feature order."""
        full = torch.cat([outputs[g] for g in self.full_groups], dim=1) if self.full_groups else None
        half = torch.cat([outputs[g] for g in self.half_groups], dim=1) if self.half_groups else None
        parts = []
        if self.whole_at.numel():
            assert full is not None
            parts.append(full.index_select(1, self.whole_at))
        if self.has_pairs:
            source = half if self.pair_source == "half" else full
            assert source is not None
            quotient, remainder = source.index_select(1, self.quotient_at), source.index_select(1, self.remainder_at)
            parts.append(quotient_remainder.combine(quotient, remainder, self.plan.operation))
        return torch.cat(parts, dim=1).index_select(1, self.feature_order)

    def forward(self, features: SparseFeatures) -> Tensor:
        """Pooled embeddings, ``B x T x d``."""
        if features.num_tables != self.num_tables:
            raise ValueError(f"batch has {features.num_tables} sparse features, the model {self.num_tables} tables")
        outputs = [self.project(g, group(self.group_features(g, features))) for g, group in enumerate(self.groups)]
        return self.assemble(outputs)

    # -- shapes, collapse, sizes --------------------------------------------------------
    def map_groups(
        self, transform: Callable[[nn.Module], TableModule], config: ModelConfig | None = None
    ) -> CompositeTables:
        """The same tables with every group module replaced by ``transform(group)`` (projections copied)."""
        projections = {int(g): p for g, p in self.md_projections.items()}
        device = next(iter(self.buffers())).device
        groups = [cast(nn.Module, transform(g)) for g in self.groups]
        return CompositeTables(config or self.config, groups, projections, device)

    def collapse(self) -> CompositeTables:
        """The same function with every MLET group folded into stored rows (``W1 @ W2``); the composite shape
        (pairs, mixed widths, projections) stays."""
        if not self.config.mlet_hidden:
            return self
        return self.map_groups(lambda group: cast(TableModule, group).collapse(), self.config.collapsed())

    def table_modules(self) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` of each group whose weight trains with row updates (``groups.G``)."""
        return [
            (f"groups.{g}", group)
            for g, group in enumerate(self.groups)
            if isinstance(getattr(group, "weight", None), nn.Parameter)
        ]

    def inference_bytes(self) -> int:
        """Bytes of the tables as served: each group's stored (collapsed or quantized) rows plus the projections."""
        projections = sum(p.numel() * p.element_size() for p in self.md_projections.values())
        return sum(cast(TableModule, group).inference_bytes() for group in self.groups) + projections

    def extra_repr(self) -> str:
        kinds = sorted({t.kind for t in self.config.table_configs()})
        return f"tables={self.num_tables}, d={self.dim}, {'+'.join(kinds)}, groups={len(self.groups)}"
