"""Post-training row-wise quantization of the tables (int8, int4), for serving on CPU.

Each row is stored as serving stacks (FBGEMM) store it, the layout of torch's
``quantized::embedding_bag_byte_prepack`` / ``embedding_bag_4bit_prepack``:

* int8: ``d`` bytes of ``round((x - min) / scale)``, then the row's scale and
  bias (its minimum) as float32: ``d + 8`` bytes a row, ``scale = (max - min) / 255``;
* int4: two values a byte (the first in the low nibble), then scale and bias
  as float16: ``ceil(d / 2) + 4`` bytes a row, ``scale = (max - min) / 15``.

Lookups run torch's ``quantized::embedding_bag_byte_rowwise_offsets`` /
``embedding_bag_4bit_rowwise_offsets`` kernels on the packed rows (the
tables are never dequantized as a whole). An odd width is packed with its
last column repeated (which leaves each row's min and max, and so its scale,
unchanged) and the extra column is dropped from the lookups.

:func:`quantize_model` turns a (collapsed) float DLRM into one with quantized
tables: plain tables as one :class:`QuantizedTables`, composite tables
(quotient-remainder, mixed dimension) group by group, mixed-dimension
projections and the MLPs left in float32. :func:`quantized_checkpoint` and
:func:`model_from_checkpoint` write and read such models (docs/checkpoints.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from dlrm_model import DLRM
from mlet.core.batch import SparseFeatures
from mlet.core.config import ModelConfig
from mlet.core.errors import UserError
from mlet.core.launch import log
from mlet.model import lookup
from mlet.model.composite import CompositeTables, GroupSpec, TableModule
from mlet.training.checkpoints import FORMAT, INFERENCE, RUN_RECORD, VERSION, misfit_error, trained_hidden
from mlet.training.results import parameter_report
from mlet.training.trainer import Trainer
from mlet_layers import EmbeddingTables

BITS = (8, 4)
LAYOUT = {
    8: "int8 row-wise: d bytes + float32 scale + float32 bias per row (FBGEMM byte rowwise)",
    4: "int4 row-wise: ceil(d/2) bytes (two values a byte, first in the low nibble) + float16 scale + float16 bias "
    "per row (FBGEMM 4-bit rowwise)",
}


def packed_width(dim: int, bits: int) -> int:
    """Bytes of one packed row of ``dim`` values."""
    return dim + 8 if bits == 8 else (dim + 1) // 2 + 4


ROW_OVERHEAD = "each row's scale and bias outweigh its few values"
"""Why row-wise quantized tables can be larger than float ones (narrow rows)."""


def size_change(before: int, after: int, cause: str = "", larger_because: str = ROW_OVERHEAD) -> str:
    """How ``after`` bytes compare with ``before``, the one wording of ``quantize``, ``info`` and the run's log:
    ``3.76x smaller``, ``1.24x larger: <larger_because>``, ``the same size``, or, where the ratio rounds to
    1.00x, the difference in bytes (``96 bytes smaller``). ``cause`` (e.g. ``(int8 tables)``) follows the
    comparison, before the reason."""
    if after == before:
        return "the same size"
    word, ratio = ("smaller", before / after) if after < before else ("larger", after / before)
    amount = f"{ratio:.2f}x" if f"{ratio:.2f}" != "1.00" else f"{abs(before - after):,} bytes"
    text = f"{amount} {word}" + (f" {cause}" if cause else "")
    return f"{text}: {larger_because}" if word == "larger" and larger_because else text


def prepack(rows: Tensor, bits: int) -> Tensor:
    """Row-wise quantize ``rows`` (``n x d`` float) into the packed ``n x packed_width`` uint8 layout."""
    rows = rows.detach().float().cpu().contiguous()
    if bits == 8:
        return torch.ops.quantized.embedding_bag_byte_prepack(rows)
    if rows.shape[1] % 2:
        rows = torch.cat([rows, rows[:, -1:]], dim=1)  # same min and max per row: same scale and bias
    return torch.ops.quantized.embedding_bag_4bit_prepack(rows)


def unpack(packed: Tensor, bits: int, dim: int) -> Tensor:
    """The float rows a packed table stands for (``n x dim``): for tests and analysis, not for lookups."""
    if bits == 8:
        return torch.ops.quantized.embedding_bag_byte_unpack(packed)[:, :dim]
    return torch.ops.quantized.embedding_bag_4bit_unpack(packed)[:, :dim]


class QuantizedTables(nn.Module):
    """Tables stored one after another as packed quantized rows; a lookup is one quantized ``embedding_bag``.

    Takes :class:`SparseFeatures` like ``EmbeddingTables`` and returns the
    pooled bags, ``B x T x dim``. ``weight`` (a buffer) is the packed
    ``sum(n_t) x packed_width`` uint8 tensor.
    """

    weight: Tensor
    row_offsets: Tensor

    def __init__(self, table_sizes: Sequence[int], dim: int, bits: int, packed: Tensor | None = None) -> None:
        super().__init__()
        if bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {bits}")
        self.table_sizes, self.dim, self.bits = [int(n) for n in table_sizes], int(dim), bits
        rows = sum(self.table_sizes)
        if packed is None:
            packed = torch.zeros(rows, packed_width(dim, bits), dtype=torch.uint8)
        if tuple(packed.shape) != (rows, packed_width(dim, bits)) or packed.dtype != torch.uint8:
            raise ValueError(f"packed rows must be uint8 {rows} x {packed_width(dim, bits)}, got {tuple(packed.shape)}")
        self.register_buffer("weight", packed)
        bounds = [0, *itertools.accumulate(self.table_sizes)]
        self.register_buffer("row_offsets", torch.tensor(bounds, dtype=torch.int64), persistent=False)
        self._shift_cache: dict[tuple, Tensor] = {}
        self.lookup_op = (
            torch.ops.quantized.embedding_bag_byte_rowwise_offsets
            if bits == 8
            else torch.ops.quantized.embedding_bag_4bit_rowwise_offsets
        )

    @classmethod
    def from_float(cls, tables: EmbeddingTables, bits: int) -> QuantizedTables:
        """The quantized copy of plain (collapsed) float tables."""
        if tables.is_mlet:
            raise ValueError("quantize collapsed tables (MLET's W1 @ W2 folded first)")
        return cls(tables.table_sizes, tables.dim, bits, prepack(tables.weight, bits))

    @property
    def num_tables(self) -> int:
        """Number of tables held."""
        return len(self.table_sizes)

    def forward(self, features: SparseFeatures) -> Tensor:
        """Pooled (summed) rows of every bag, ``B x T x dim``."""
        if features.weights is not None:
            raise ValueError("quantized tables take no per-id weights (padded bags are for training steps)")
        rows = lookup.global_rows(features, self.row_offsets, self._shift_cache)
        pooled = self.lookup_op(self.weight, rows, features.offsets, False, 0, False, None, None, True)
        return pooled[:, : self.dim].reshape(self.num_tables, features.batch_size, self.dim).transpose(0, 1)

    def dequantized(self) -> Tensor:
        """The float rows the packed ones stand for (``sum(n_t) x dim``)."""
        return unpack(self.weight, self.bits, self.dim)

    def collapse(self) -> QuantizedTables:
        """Itself: quantized tables are already the inference form."""
        return self

    def table_modules(self) -> list[tuple[str, nn.Module]]:
        """None: quantized tables do not train."""
        return []

    def inference_bytes(self) -> int:
        """Bytes of the packed rows (values, scales and biases)."""
        return self.weight.numel() * self.weight.element_size()

    def extra_repr(self) -> str:
        return f"tables={self.num_tables}, rows={self.weight.shape[0]}, d={self.dim}, int{self.bits} row-wise"


def quantize_tables(tables: TableModule | nn.Module, bits: int) -> TableModule:
    """Quantized copies of collapsed float tables: ``EmbeddingTables`` or a composite's groups."""
    if isinstance(tables, CompositeTables):
        return tables.map_groups(lambda group: quantize_tables(group, bits))
    if isinstance(tables, EmbeddingTables):
        return QuantizedTables.from_float(tables, bits)
    raise ValueError(f"cannot quantize {type(tables).__name__}")


def quantize_model(model: DLRM, bits: int) -> DLRM:
    """``model`` (MLET folded first) with row-wise ``bits``-bit tables, on the CPU, in eval mode."""
    if bits not in BITS:
        raise UserError(f"--quantize-emb-with-bit: quantized tables are 4 or 8 bits, got {bits}")
    plain = model.collapse().cpu()
    return plain.with_tables(quantize_tables(plain.tables, bits)).eval()


def quantized_shell(config: ModelConfig, bits: int) -> TableModule:
    """Empty quantized tables shaped for ``config`` (to load a quantized checkpoint's packed rows into)."""
    if not config.is_composite:
        return QuantizedTables(config.table_sizes, config.dim, bits)

    def group(spec: GroupSpec) -> QuantizedTables:
        return QuantizedTables(spec.sizes, spec.width, bits)

    return CompositeTables.build(config, group, seed=None)


def quantized_checkpoint(ckpt: dict, bits: int, model: DLRM) -> dict:
    """The quantized inference checkpoint of float checkpoint ``ckpt`` whose (plain or composite, not two-layer)
    model is ``model``: packed tables and float MLPs, the trained architecture (``collapsed_from``), flags and
    position kept; the float model's last metrics under ``quantized.float_final`` (they are not this model's)."""
    quantized = quantize_model(model, bits)
    history = ckpt.get("history") or []
    kept = {k: ckpt[k] for k in (*RUN_RECORD, "collapsed_from") if k in ckpt}  # not the float model's metrics
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": INFERENCE,
        "model_config": model.config.to_dict(),
        "model": quantized.state_dict(),
        "quantized": {
            "bits": bits,
            "layout": LAYOUT[bits],
            "embedding_bytes": quantized.tables.inference_bytes(),
            "float_embedding_bytes": model.tables.inference_bytes(),
            "float_final": history[-1] if history else None,
            "trained_mlet_hidden": trained_hidden(ckpt),
        },
        "torch": str(torch.__version__),
        **kept,
    }


def model_from_checkpoint(ckpt: dict) -> DLRM:
    """The quantized model a quantized checkpoint holds (CPU, eval mode); a :class:`UserError` if its weights
    (packed tables, float MLPs) do not fit its ``model_config``."""
    config = ModelConfig.from_dict(ckpt["model_config"])
    model = DLRM(config, seed=0, tables=quantized_shell(config, int(ckpt["quantized"]["bits"])))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as error:
        raise misfit_error(error, "the weights (quantized tables, float MLPs)") from None
    return model.eval()


def evaluate_quantized(trainer: Trainer, bits: int) -> dict:
    """The trained model with ``bits``-bit tables, evaluated on the run's test (and validation) split: the
    results' ``quantized`` entry (``bits``, ``final``, ``val``, ``parameters``)."""
    model = quantize_model(trainer.model, bits)
    final = trainer.evaluate(trainer.data.test, trainer.data.eval_split, model)
    val = trainer.data.val
    val_metrics = None if val is None else final if val is trainer.data.test else trainer.evaluate(val, "val", model)
    report = parameter_report(model, trained=trainer.model.config)  # trained as the run's float model
    served, full = report["embedding_inference_bytes"], trainer.model.tables.inference_bytes()
    log(
        f"int{bits} row-wise tables: auc {final['auc']:.4f}, logloss {final['logloss']:.5f}; "
        f"embeddings {served:,} bytes (float32: {full:,}; {size_change(full, served)})"
    )
    return {"bits": bits, "final": final, "val": val_metrics, "parameters": report}


def served_bits(model: DLRM) -> int | None:
    """The bits of ``model``'s quantized tables (every quantized table of a model has the same); None for float
    tables."""
    return next((m.bits for m in model.modules() if isinstance(m, QuantizedTables)), None)


def log_served_sizes(model: DLRM, path: str, all_sum: Callable[[int], Tensor | float] | None = None) -> None:
    """The evaluated model's exact sizes: its tables in memory (packed ones for a quantized model; a two-layer
    MLET model's ``W1`` and ``W2``, with the collapsed size beside them) and ``path``.

    ``all_sum``: under torchrun, where each process holds its own tables, the sum over the processes
    (``Parallel.all_sum``, a collective) that makes the table bytes the whole model's; the MLPs are in each."""

    def whole(count: int) -> int:
        return int(all_sum(count) if all_sum is not None else count)

    bits = served_bits(model)
    precision = "float32" if bits is None else f"int{bits} row-wise"
    tables = whole(model.tables.inference_bytes())
    collapsed = ""
    if model.config.mlet_hidden:  # evaluated as trained: the tables in memory are the two layers
        collapsed = f" (two-layer MLET; collapsed: {tables:,} bytes, checkpoint.py collapse)"
        tables = whole(
            sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n.startswith("tables."))
        )
    total = tables + sum(
        p.numel() * p.element_size() for n, p in model.named_parameters() if not n.startswith("tables.")
    )
    log(
        f"served model: {precision} tables {tables:,} bytes in memory{collapsed}, {total:,} bytes with the MLPs; "
        f"{path}: {Path(path).stat().st_size:,} bytes on disk"
    )
