"""ONNX export of a DLRM for serving.

The graph takes the :class:`~mlet.core.batch.SparseFeatures` layout directly:

* ``dense``: ``[B, D]`` float32 dense features;
* ``indices``: ``[N]`` int64 local row ids of every bag, table-major;
* ``offsets``: ``[T*B + 1]`` int64 bag starts (bag ``t * B + b`` is table ``t``,
  sample ``b``), ending with ``N``;

and returns ``probabilities``: ``[B]`` float32 click probabilities. The batch
size and the bag sizes (multi-hot, empty bags included) are dynamic.

The model's own lookup (``F.embedding_bag`` after a per-table index shift made
with a data-dependent ``repeat_interleave``) does not trace with dynamic
shapes, so the graph uses an equivalent formulation: each index's bag number
is a cumulative sum of bag-start marks, the rows are gathered, and the bags are
summed with ``index_add`` (ONNX ``ScatterND`` with ``reduction=add``). The
torch model is unchanged; the exported graph agrees with it to float32
rounding (the sums run in another order).

The exporter is torch's ``torch.export``-based one (``dynamo=True``, the
default since torch 2.9): it keeps the relation ``offsets = T*B + 1`` as a
symbolic shape and exports ``index_add`` with duplicate indices correctly; the
legacy TorchScript exporter turns ``index_add`` into a ``ScatterND`` without
reduction, which silently drops all but one row of a multi-hot bag.
Models whose weights exceed ``EXTERNAL_DATA_THRESHOLD`` are written with ONNX
external data (``OUT`` plus ``OUT.data``), as protobuf cannot hold 2 GiB.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dlrm_model import DLRM
from mlet.core.batch import SparseFeatures
from mlet.core.errors import UserError
from mlet.core.signals import signals_held
from mlet.data.synthetic import RandomBatches
from mlet.model.composite import CompositeTables, GroupSpec
from mlet_layers import EmbeddingTables

INPUT_NAMES = ("dense", "indices", "offsets")
OUTPUT_NAMES = ("probabilities",)
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**27  # 2 GiB protobuf limit, less room for the graph itself
VERIFY_BATCH_SIZES = (1, 7, 64)
VERIFY_TOLERANCE = 1e-5
QUIET_LOGGERS = ("torch.onnx", "torch.export", "onnx_ir", "onnxscript")  # progress and advice, not errors


class ServingDLRM(nn.Module):
    """``DLRM`` + sigmoid on ``(dense, indices, offsets)``, in an exportable formulation.

    Plain and MLET tables are one weight; composite tables (quotient-remainder,
    mixed dimensions) are summed group by group: every bag of every feature is
    looked up in each group, the ids of features without a slot there pointing
    at an appended zero row, and the group's own slots are kept. Then the
    composite's projections and ``assemble`` run as in training.
    """

    def __init__(self, model: DLRM) -> None:
        super().__init__()
        self.model = model.eval()
        tables = model.tables
        if isinstance(tables, CompositeTables):
            for g, spec in enumerate(tables.plan.groups):
                for name, values in group_routing(spec, tables.num_tables).items():
                    self.register_buffer(f"{name}_{g}", values, persistent=False)
        elif not isinstance(tables, EmbeddingTables):
            raise UserError(f"export-onnx: tables of kind {type(tables).__name__} are not exported")

    def forward(self, dense: Tensor, indices: Tensor, offsets: Tensor) -> Tensor:
        """Click probabilities, ``B``."""
        m = self.model
        batch_size = dense.shape[0]
        bag = bag_numbers(indices, offsets)
        tables = m.tables
        if isinstance(tables, CompositeTables):
            outputs = [self.group_output(tables, g, indices, bag, batch_size) for g in range(len(tables.groups))]
            embedded = tables.assemble(outputs)
        else:
            assert isinstance(tables, EmbeddingTables)
            rows = indices + per_bag(tables.row_offsets[:-1], batch_size).index_select(0, bag)
            pooled = bag_sums(tables.weight, rows, bag, tables.num_tables, batch_size)
            embedded = (torch.bmm(pooled, tables.w2) if tables.is_mlet else pooled).transpose(0, 1)
        logits = m.top(m.interaction(m.bottom(dense), embedded)).squeeze(-1)
        return torch.sigmoid(logits)

    def group_output(
        self, tables: CompositeTables, g: int, indices: Tensor, bag: Tensor, batch_size: int | torch.SymInt
    ) -> Tensor:
        """Group ``g``'s slots, ``B x T_g x width`` after the MLET and mixed-dimension projections."""
        group = tables.groups[g]
        assert isinstance(group, EmbeddingTables)
        weight = torch.cat([group.weight, group.weight.new_zeros(1, group.weight.shape[1])])
        parts = []
        for part in range(2):
            members = getattr(self, f"members{part}_{g}", None)
            if members is None:
                continue
            base, divisor, modulus = (
                per_bag(getattr(self, f"{name}{part}_{g}"), batch_size).index_select(0, bag)
                for name in ("base", "divisor", "modulus")
            )
            rows = base + torch.remainder(torch.div(indices, divisor, rounding_mode="floor"), modulus)
            sums = bag_sums(weight, rows, bag, tables.num_tables, batch_size)
            parts.append(sums.index_select(0, members))
        pooled = torch.cat(parts).index_select(0, getattr(self, f"order_{g}"))
        if group.is_mlet:
            pooled = torch.bmm(pooled, group.w2)
        return tables.project(g, pooled.transpose(0, 1))


def group_routing(spec: GroupSpec, num_tables: int) -> dict[str, Tensor]:
    """Constants of one group for :class:`ServingDLRM`: per part, each feature's first row in the group (the
    appended zero row for features without a slot), divisor and modulus of its ids, the features that have a
    slot; and the order that puts the parts' slots back in group order."""
    starts = [0, *itertools.accumulate(spec.sizes)]
    zero_row = starts[-1]
    routing: dict[str, Tensor] = {}
    listed = []
    for part in range(2):
        slots = [s for s in spec.slots if s.part == part]
        if not slots:
            continue
        base, divisor, modulus = [zero_row] * num_tables, [1] * num_tables, [1] * num_tables
        for s in slots:
            base[s.feature], divisor[s.feature], modulus[s.feature] = starts[s.index], s.divisor, s.modulus
        routing |= {
            f"base{part}": torch.tensor(base),
            f"divisor{part}": torch.tensor(divisor),
            f"modulus{part}": torch.tensor(modulus),
            f"members{part}": torch.tensor([s.feature for s in slots]),
        }
        listed += [s.index for s in slots]
    routing["order"] = torch.tensor(sorted(range(len(listed)), key=listed.__getitem__))
    return routing


def bag_numbers(indices: Tensor, offsets: Tensor) -> Tensor:
    """The bag number of every index: a cumulative sum of bag-start marks (integer arithmetic only, no
    division, so bag numbers stay exact at any size)."""
    starts = offsets[1:-1]
    marks = torch.zeros(indices.shape[0] + 1, dtype=torch.int64, device=indices.device).index_add(
        0, starts, torch.ones_like(starts)
    )
    return marks.cumsum(0)[: indices.shape[0]]


def per_bag(values: Tensor, batch_size: int | torch.SymInt) -> Tensor:
    """A per-table value repeated for each of the table's ``batch_size`` bags (``T * B``, table-major)."""
    return values.unsqueeze(1).expand(values.shape[0], batch_size).reshape(-1)


def bag_sums(weight: Tensor, rows: Tensor, bag: Tensor, num_tables: int, batch_size: int | torch.SymInt) -> Tensor:
    """Sum-pooled ``weight`` rows of every bag, ``T x B x width`` (gather, then ``index_add`` by bag)."""
    gathered = weight.index_select(0, rows)
    sums = torch.zeros(num_tables * batch_size, gathered.shape[1], dtype=gathered.dtype, device=gathered.device)
    return sums.index_add(0, bag, gathered).view(num_tables, batch_size, -1)


def example_inputs(model: DLRM, batch_size: int, max_bag: int = 3, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Random ``(dense, indices, offsets)`` with bags of 1..``max_bag`` ids."""
    config = model.config
    batches = RandomBatches(
        batch_size,
        batch_size,
        config.table_sizes,
        config.bottom_mlp[0],
        indices_per_lookup=max_bag,
        fixed=False,
        seed=seed,
    )
    dense, sparse, _ = batches.make_batch(0)
    return dense, sparse.indices, sparse.offsets


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters (the ONNX initializers)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def to_onnx_program(model: DLRM) -> torch.onnx.ONNXProgram:
    """Export ``model`` (eval mode, CPU) with dynamic batch size and bag sizes."""
    serving = ServingDLRM(model).eval()
    batch = torch.export.Dim("batch", min=1)
    dynamic = {
        "dense": {0: batch},
        "indices": {0: torch.export.Dim("num_indices", min=1)},
        "offsets": {0: len(model.config.table_sizes) * batch + 1},
    }
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                serving,
                example_inputs(model, 4),
                dynamo=True,
                dynamic_shapes=dynamic,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                verbose=False,
            )
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)
    assert program is not None, "dynamo export returns a program"
    return program


def verify(model: DLRM, path: str | os.PathLike, shown: str | os.PathLike | None = None) -> float:
    """Largest ``|onnxruntime - torch|`` over ``VERIFY_BATCH_SIZES`` with multi-hot bags.

    NaN (or infinity) when onnxruntime's outputs are not finite where torch's
    are: a non-finite difference is never taken for agreement. Raises
    :class:`UserError`, naming ``shown`` (default ``path``), when torch's own
    outputs are not finite (the model's weights diverged), as there is then
    nothing to compare with.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    differences = []
    for i, size in enumerate(VERIFY_BATCH_SIZES):
        dense, indices, offsets = example_inputs(model, size, seed=1000 + i)
        with torch.no_grad():
            features = SparseFeatures(indices, offsets, model.tables.num_tables)
            expected = torch.sigmoid(model(dense, features)).numpy()
        if not np.isfinite(expected).all():
            raise UserError(
                f"{shown or path}: written, but not checked: the model's outputs are not finite (diverged weights?); "
                "--no-verify skips the check"
            )
        (got,) = session.run(
            list(OUTPUT_NAMES), {"dense": dense.numpy(), "indices": indices.numpy(), "offsets": offsets.numpy()}
        )
        differences.append(np.abs(got - expected).max())
    return float(np.max(differences))  # np.max keeps a NaN, where max() would drop it


def check_agreement(path: str | os.PathLike, max_abs_diff: float) -> None:
    """A :class:`UserError` unless ``max_abs_diff`` (from :func:`verify`) is within ``VERIFY_TOLERANCE``; NaN fails."""
    if not math.isfinite(max_abs_diff):
        raise UserError(f"{path}: onnxruntime's outputs are not finite where torch's are")
    if max_abs_diff > VERIFY_TOLERANCE:
        raise UserError(
            f"{path}: onnxruntime's outputs differ from torch's by {max_abs_diff:.3g} (> {VERIFY_TOLERANCE})"
        )


def export_onnx(model: DLRM, path: str | os.PathLike, verify_outputs: bool = True) -> dict:
    """Write ``model`` as ONNX to ``path``; returns what was written and, with ``verify_outputs``, the
    onnxruntime check.

    The model is written into a private temporary folder beside ``path``, checked there and then renamed into
    place (its external data first), so a run checks its own file even when another run exports to the same
    name, and a reader never sees a half-written model. Raises :class:`UserError` if the path cannot be
    written, onnxruntime disagrees with torch beyond ``VERIFY_TOLERANCE`` or either's outputs are not finite
    (the file is put in place then).
    """
    model = model.cpu().eval()
    if isinstance(model.tables, CompositeTables):
        model = model.collapse()  # the same function; the export holds the inference tables
    target = Path(path)
    external = parameter_bytes(model) > EXTERNAL_DATA_THRESHOLD
    program = to_onnx_program(model)
    data = target.with_name(target.name + ".data")
    report: dict[str, object] = {
        "path": str(target),
        "external_data": str(data) if external else None,
        "max_abs_diff": None,
        "batch_sizes": list(VERIFY_BATCH_SIZES),
    }
    staging = staging_folder(target)
    failure: UserError | None = None
    try:
        staged = staging / target.name
        try:
            program.save(staged, external_data=external)
        except OSError as error:
            raise UserError(f"{target}: cannot write the ONNX model ({error.strerror or error})") from None
        if verify_outputs:
            try:
                report["max_abs_diff"] = difference = verify(model, staged, shown=target)
                check_agreement(target, difference)
            except UserError as error:
                failure = error
        with signals_held():  # Ctrl-C and SIGTERM wait: a model is never put beside another's external data
            if external:
                os.replace(staged.with_name(data.name), data)
            os.replace(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if failure is not None:
        raise failure
    return report


def staging_folder(target: Path) -> Path:
    """A new private folder beside ``target`` (``.NAME.XXXXXXXX.tmp``) to write and check it in; a
    :class:`UserError` if the folder cannot be made."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as error:
        raise UserError(f"{target}: cannot write the ONNX model ({error.strerror or error})") from None
