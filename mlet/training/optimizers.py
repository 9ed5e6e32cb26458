"""Optimizers for DLRM: sparse row updates for the tables, dense for the rest,
and upstream DLRM's learning-rate policy (linear warm-up, polynomial decay).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mlet.core.config import FUSED_OPTIMIZERS, OPTIMIZERS, TORCH_OPTIMIZERS
from mlet.kernels import host_memory, triton_kernels
from mlet.training.compilation import compiled
from mlet_layers import EmbeddingTables

# Tensors of per-element state each optimizer keeps for a table (Adagrad: sum; Adam: two moments) and, for
# row-wise Adagrad, per row: one float (its dense parameters take Adagrad's one per element).
STATE_SLOTS = {"sgd": 0, "adagrad": 1, "adam": 2, "rwsadagrad": 0}
ROW_STATE_SLOTS = {"rwsadagrad": 1}
DENSE_STATE_SLOTS = {**STATE_SLOTS, "rwsadagrad": 1}


def table_state_elements(optimizer: str, rows: int, width: int) -> int:
    """Elements of ``optimizer``'s state for a table of ``rows`` x ``width``: per element, or per row."""
    return rows * (width * STATE_SLOTS[optimizer] + ROW_STATE_SLOTS.get(optimizer, 0))


def state_bytes(optimizer: str, sparse: Sequence[torch.Tensor], dense: Sequence[torch.Tensor]) -> int:
    """Bytes of ``optimizer``'s state for these table (``sparse``) and dense parameters (float32)."""
    tables = sum(table_state_elements(optimizer, p.shape[0], math.prod(p.shape[1:])) for p in sparse)
    return 4 * (tables + sum(p.numel() for p in dense) * DENSE_STATE_SLOTS[optimizer])


MIN_DECAYED_LR = 1e-7
ADAGRAD_EPS = 1e-10  # torch.optim.Adagrad's default


def check_same_optimizer(saved: dict, name: str) -> None:
    """Refuse optimizer state saved by another optimizer (its slots would be read as this one's)."""
    if saved.get("optimizer") != name:
        raise ValueError(
            f"checkpoint was trained with --optimizer={saved.get('optimizer')}, this run uses --optimizer={name}"
        )


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
        check_same_optimizer(saved, self.name)
        for opt in self.optimizers:
            current = opt.state_dict()
            by_position = {}
            for group, current_group in zip(opt.param_groups, current["param_groups"]):
                for p, position in zip(group["params"], current_group["params"]):
                    if self.names[id(p)] in saved["state"]:
                        by_position[position] = saved["state"][self.names[id(p)]]
            opt.load_state_dict({"state": by_position, "param_groups": current["param_groups"]})


def adagrad_state(param: torch.Tensor) -> dict[str, torch.Tensor]:
    """Fresh Adagrad state in ``torch.optim.Adagrad``'s format (on the parameter's device)."""
    return {
        "step": torch.zeros((), dtype=torch.float32, device=param.device),
        "sum": host_memory.zeros_like_table(param),
    }


def add_rows(target: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``target[rows[i]] += values[i]`` for every ``i`` (repeated rows add up), in place.

    On CPU through ``scatter_add_``: for 2-D tensors torch's CPU ``index_add_``
    loops over the rows one slice at a time, 3-5x slower (bench/NOTES.md).
    """
    if target.device.type == "cpu":
        return target.scatter_add_(0, rows.unsqueeze(1).expand_as(values), values)
    return target.index_add_(0, rows, values)


class RowSGD:
    """Fused SGD on table rows: ``w[r] -= lr * g`` for every occurrence (repeats add up)."""

    def __init__(self, weight: torch.Tensor, lr: torch.Tensor) -> None:
        self.weight, self.lr = weight, lr
        self.state: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, rows: torch.Tensor, grads: torch.Tensor) -> None:
        if triton_kernels.usable(self.weight):
            triton_kernels.scatter_sub_rows(self.weight, rows, grads, self.lr)
        else:  # the rate stays a tensor on the device (no sync; CUDA-graph safe)
            add_rows(self.weight, rows, grads.mul_(-self.lr))

    @torch.no_grad()
    def scatter_bags(
        self, rows: torch.Tensor, grad_pooled: torch.Tensor, bag_of_row: torch.Tensor, scales: torch.Tensor | None
    ) -> None:
        """Multi-hot update in one Triton kernel (callers check ``triton_kernels.usable``):
        ``w[rows[i]] -= lr * scales[i] * grad_pooled[bag_of_row[i]]``, no per-id gradient rows stored; an id of
        scale 0 (padding) adds nothing."""
        triton_kernels.scatter_sub_rows(self.weight, rows, grad_pooled.contiguous(), self.lr, bag_of_row, scales)

    @torch.no_grad()
    def scatter_tables(self, rows: torch.Tensor, grad_out: torch.Tensor, row_bounds: torch.Tensor) -> None:
        """One-hot update of tables in one Triton kernel (callers check ``triton_kernels.usable``):
        ``w[rows[t*B+b]] -= lr * grad_out[t, b]``, table ``t``'s rows in ``row_bounds[t]:row_bounds[t+1]``."""
        triton_kernels.scatter_sub_table_rows(self.weight, rows, grad_out, row_bounds, self.lr)

    @torch.no_grad()
    def scatter_projected(
        self, rows: torch.Tensor, grad_out: torch.Tensor, projection: torch.Tensor, row_bounds: torch.Tensor
    ) -> None:
        """MLET one-hot update from the projected gradient in one Triton kernel (callers check
        ``triton_kernels.usable``): ``w[rows[t*B+b]] -= lr * grad_out[t, b] @ projection[t].T``."""
        triton_kernels.project_scatter_sub(self.weight, rows, grad_out, projection, row_bounds, self.lr)


def summed_by_row(rows: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` sorted, and for each the sum of the gradients of all its occurrences (repeated per occurrence).

    Formed without ``unique`` (which has a data-dependent size): occurrences
    are sorted, segment-summed into a buffer of static size, and the sums read
    back per occurrence. The row gathers here and in the Adagrad updates are
    :func:`~mlet.kernels.triton_kernels.take_rows` (on a GPU torch's ``index_select`` moves short rows far
    below memory speed). A caller that writes new values for every occurrence
    of a row writes the same ones, so the result does not depend on which
    write lands last.
    """
    # stable: a row's gradients sum in batch order, so the zeros of padding ids (SparseFeatures.padded) change
    # nothing, not even the rounding
    sorted_rows, order = torch.sort(rows, stable=True)
    starts = torch.ones_like(sorted_rows, dtype=torch.bool)
    starts[1:] = sorted_rows[1:] != sorted_rows[:-1]
    segment = starts.cumsum(0) - 1
    totals = add_rows(torch.zeros_like(grads), segment, triton_kernels.take_rows(grads, order))
    return sorted_rows, triton_kernels.take_rows(totals, segment)


class RowAdagrad:
    """Fused Adagrad on table rows, equal to ``torch.optim.Adagrad`` on a sparse gradient: one accumulated
    squared gradient per element. Each row's gradient is the sum over its occurrences (:func:`summed_by_row`)."""

    def __init__(self, weight: torch.Tensor, lr: torch.Tensor, eps: float = ADAGRAD_EPS) -> None:
        self.weight, self.lr, self.eps = weight, lr, eps
        self.state = adagrad_state(weight)

    @torch.no_grad()
    def __call__(self, rows: torch.Tensor, grads: torch.Tensor) -> None:
        self.state["step"] += 1
        sorted_rows, g = summed_by_row(rows, grads)
        accumulated = triton_kernels.take_rows(self.state["sum"], sorted_rows).addcmul_(g, g)
        step = g.div_(accumulated.sqrt().add_(self.eps)).mul_(self.lr)
        self.state["sum"].index_copy_(0, sorted_rows, accumulated)
        self.weight.index_copy_(0, sorted_rows, triton_kernels.take_rows(self.weight, sorted_rows).sub_(step))


class RowWiseAdagrad:
    """Fused row-wise Adagrad on table rows (upstream DLRM's ``--optimizer=rwsadagrad``, ``optim/rwsadagrad.py``):
    one accumulator per row, ``m[r] += mean(g_r ** 2)``, then ``w[r] -= lr * g_r / (sqrt(m[r]) + eps)``, with
    ``g_r`` the row's gradient summed over its occurrences (:func:`summed_by_row`). Its state is a float per row,
    not per element: 1/d of Adagrad's (1/K for MLET's K-wide rows)."""

    def __init__(self, weight: torch.Tensor, lr: torch.Tensor, eps: float = ADAGRAD_EPS) -> None:
        self.weight, self.lr, self.eps = weight, lr, eps
        self.state = {
            "step": torch.zeros((), dtype=torch.float32, device=weight.device),
            "momentum": host_memory.zeros_like_table(weight[:, 0]),
        }

    @torch.no_grad()
    def __call__(self, rows: torch.Tensor, grads: torch.Tensor) -> None:
        self.state["step"] += 1
        sorted_rows, g = summed_by_row(rows, grads)
        momentum = self.state["momentum"].index_select(0, sorted_rows).add_(g.square().mean(1))
        step = g.div_(momentum.sqrt().add_(self.eps).unsqueeze(1)).mul_(self.lr)
        self.state["momentum"].index_copy_(0, sorted_rows, momentum)
        self.weight.index_copy_(0, sorted_rows, triton_kernels.take_rows(self.weight, sorted_rows).sub_(step))


ROW_UPDATES = {"sgd": RowSGD, "adagrad": RowAdagrad, "rwsadagrad": RowWiseAdagrad}
"""The fused optimizers' table-row updates."""
DENSE_UPDATES = {"sgd": "sgd", "adagrad": "adagrad", "rwsadagrad": "adagrad"}
"""Their dense parameters' update (:class:`DenseUpdate`): row-wise Adagrad is row-wise for table rows only,
as upstream's."""


class DenseUpdate:
    """SGD or Adagrad on dense parameters with foreach kernels and a tensor learning rate.

    Matches ``torch.optim.SGD`` / ``Adagrad`` (no momentum, decay or weight
    decay); the learning rate lives in a device tensor so a captured CUDA graph
    sees changes to it.
    """

    def __init__(self, name: str, params: list[nn.Parameter], lr: torch.Tensor, eps: float = ADAGRAD_EPS) -> None:
        self.name, self.params, self.lr, self.eps = name, params, lr, eps
        self.states = [adagrad_state(p) if name == "adagrad" else {} for p in params]

    @torch.no_grad()
    def step(self) -> None:
        """Update every parameter that has a gradient."""
        live = [(p, g, s) for p, s in zip(self.params, self.states) if (g := p.grad) is not None]
        if not live:
            return
        params: list[torch.Tensor] = [p for p, _, _ in live]
        grads: list[torch.Tensor] = [g for _, g, _ in live]
        if self.name == "adagrad":
            sums = [s["sum"] for _, _, s in live]
            for _, _, s in live:
                s["step"] += 1
            torch._foreach_addcmul_(sums, grads, grads)
            denominators = torch._foreach_add(torch._foreach_sqrt(sums), self.eps)
            grads = list(torch._foreach_div(grads, list(denominators)))
        if self.lr.device.type == "cpu":  # no graph to capture: one pass, the rate as a number
            torch._foreach_add_(params, grads, alpha=-self.lr.item())
        else:
            torch._foreach_sub_(params, list(torch._foreach_mul(grads, self.lr)))


class FusedOptimizer:
    """SGD/Adagrad/row-wise Adagrad with the table update fused into the backward (``ROW_UPDATES``).

    Same interface and the same name-keyed state format as
    :class:`CombinedOptimizer`, so checkpoints move freely between the two.
    ``tables`` owns the ``sparse`` weights, one module per weight in the same
    order (one ``EmbeddingTables``, or the groups of composite tables).
    """

    def __init__(
        self,
        name: str,
        lr: float,
        tables: EmbeddingTables | Sequence[EmbeddingTables],
        sparse: dict[str, nn.Parameter],
        dense: dict[str, nn.Parameter],
    ) -> None:
        if name not in FUSED_OPTIMIZERS:
            raise ValueError(f"the fused embedding update supports {', '.join(FUSED_OPTIMIZERS)}, not '{name}'")
        modules = [tables] if isinstance(tables, EmbeddingTables) else list(tables)
        if len(modules) != len(sparse):
            raise ValueError(f"{len(sparse)} sparse weights, {len(modules)} table modules")
        self.name = name
        device = next(iter([*sparse.values(), *dense.values()])).device if sparse or dense else torch.device("cpu")
        self.lr = torch.tensor(float(lr), device=device)
        self.table_rows: dict[str, RowSGD | RowAdagrad | RowWiseAdagrad] = {}
        for (table_name, weight), module in zip(sparse.items(), modules):
            rows = ROW_UPDATES[name](weight, self.lr)
            self.table_rows[table_name] = rows
            module.row_update = rows
        self.dense_names = list(dense)
        self.dense = DenseUpdate(DENSE_UPDATES[name], list(dense.values()), self.lr)
        self.dense_step: Callable[[], None] = self.dense.step
        self.param_groups = [{"params": list(dense.values()), "lr": lr}]

    def zero_grad(self) -> None:
        """Drop the dense gradients (the tables have none)."""
        for p in self.dense.params:
            p.grad = None

    def step(self) -> None:
        """Update the dense parameters (the tables were updated during backward)."""
        self.dense_step()

    def compile_dense_update(self, mode: str) -> None:
        """Run the dense update under ``--compile`` mode ``mode``: one fused kernel instead of two ``foreach``
        passes, whose few thread blocks leave most of a GPU idle."""
        self.dense_step = compiled(self.dense.step, mode)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate (a device-side fill, only when it changes: no host sync, graph-safe)."""
        if lr != self.param_groups[0]["lr"]:
            self.lr.fill_(lr)
            self.param_groups[0]["lr"] = lr

    def state_dict(self) -> dict:
        """Name-keyed state, as :meth:`CombinedOptimizer.state_dict`."""
        state = {n: dict(s) for n, s in zip(self.dense_names, self.dense.states) if s}
        for table_name, rows in self.table_rows.items():
            if rows.state:
                state[table_name] = dict(rows.state)
        return {"optimizer": self.name, "state": state}

    def load_state_dict(self, saved: dict) -> None:
        """Restore name-keyed state (from either optimizer implementation)."""
        check_same_optimizer(saved, self.name)
        tables = {table_name: rows.state for table_name, rows in self.table_rows.items()}
        targets = {**dict(zip(self.dense_names, self.dense.states)), **tables}
        for name, target in targets.items():
            for key, value in saved["state"].get(name, {}).items():
                if key in target:
                    target[key].copy_(torch.as_tensor(value))


def build_optimizer(
    name: str,
    lr: float,
    sparse: dict[str, nn.Parameter],
    dense: dict[str, nn.Parameter],
    fused_tables: EmbeddingTables | Sequence[EmbeddingTables] | None = None,
) -> CombinedOptimizer | FusedOptimizer:
    """Optimizer over named parameters; ``sparse`` ones get sparse row gradients.

    With ``fused_tables`` (the ``EmbeddingTables`` owning the sparse weight, or one module per sparse weight):
    a :class:`FusedOptimizer` (sgd/adagrad/rwsadagrad) that updates table rows inside
    the backward. Otherwise torch optimizers: ``sgd`` / ``adagrad`` one over
    everything (both take sparse gradients); ``adam``: ``SparseAdam`` for the
    tables, ``Adam`` for the rest; row-wise Adagrad has no torch optimizer here.
    """
    if fused_tables is not None:
        return FusedOptimizer(name, lr, fused_tables, sparse, dense)
    names = {id(p): n for n, p in [*sparse.items(), *dense.items()]}
    everything = [*sparse.values(), *dense.values()]
    if name == "sgd":
        return CombinedOptimizer(name, [torch.optim.SGD(everything, lr=lr)], names)
    if name == "adagrad":
        return CombinedOptimizer(name, [torch.optim.Adagrad(everything, lr=lr)], names)
    if name == "adam":
        optimizers = [
            *([torch.optim.SparseAdam(list(sparse.values()), lr=lr)] if sparse else []),  # none: quantized tables
            torch.optim.Adam(list(dense.values()), lr=lr),
        ]
        return CombinedOptimizer(name, optimizers, names)
    if name in OPTIMIZERS:
        raise ValueError(
            f"--optimizer {name} runs with the fused table update only (torch's: {', '.join(TORCH_OPTIMIZERS)})"
        )
    raise ValueError(f"unknown optimizer '{name}' (choose from {', '.join(OPTIMIZERS)})")


@dataclass(frozen=True)
class LRPolicy:
    """Upstream DLRM's schedule (its ``LRPolicyScheduler``), iteration by iteration.

    Upstream's torch scheduler has stepped once before the first optimizer step, so
    step ``s`` (0-based) uses its count ``c = s + 1``. Step ``s`` uses ``base * scale``:
    ``c / warmup`` while ``c < warmup``; with ``D = decay_steps > 0`` and ``c >= decay_start``,
    ``((D - k) / D) ** 2`` with ``k = c - decay_start`` (so the decay's first step, at
    ``s = decay_start - 1``, is still the base rate), floored at 1e-7 (upstream's minimum),
    and after the decay the last decayed rate (``base / D**2``) holds; otherwise the base rate.
    One deliberate difference: between warm-up and decay the base rate holds, where upstream
    holds its last warm-up rate, ``(warmup - 1) / warmup`` of the base (and fails when there
    is no warm-up step to hold).
    """

    base_lr: float
    warmup_steps: int = 0
    decay_start: int = 0
    decay_steps: int = 0

    def lr(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based)."""
        count = step + 1
        if count < self.warmup_steps:
            return self.base_lr * count / self.warmup_steps
        if self.decay_steps > 0 and count >= self.decay_start:
            done = min(count - self.decay_start, self.decay_steps - 1)
            return max(
                self.base_lr * ((self.decay_steps - done) / self.decay_steps) ** 2, min(MIN_DECAYED_LR, self.base_lr)
            )
        return self.base_lr
