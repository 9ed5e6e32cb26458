"""Compile every Triton kernel of ``mlet/kernels/`` for an H100/H200 (sm_90) on a machine without a GPU.

The CPU tests run the kernels in Triton's interpreter, which executes their Python and accepts code the
compiler refuses (a name bound under one side of a compile-time ``if`` and read under a run-time one failed
that way on the GPU only). Here each public launcher is called on CPU tensors with the shapes and options the
training code uses; the launch is intercepted and the kernel compiled, through PTX, for sm_90 with the
arguments' types and the launch's constants, instead of run.

    python tests/kernel_compile.py     # without TRITON_INTERPRET; prints one line per compilation

Exits 1 if any compilation fails. Run by ``tests/test_triton_compile.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

HOPPER = GPUTarget("cuda", 90, 32)
POINTER_TYPES = {
    torch.float32: "*fp32",
    torch.bfloat16: "*bf16",
    torch.float16: "*fp16",
    torch.int64: "*i64",
    torch.int32: "*i32",
    torch.bool: "*i1",
}
LAUNCH_OPTIONS = ("num_warps", "num_stages")
compiled: list[str] = []


def argument_type(value: object) -> str:
    """Triton's signature type of one launch argument."""
    if isinstance(value, torch.Tensor):
        return POINTER_TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i64" if abs(value) >= 2**31 else "i32"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__}")


def compile_instead(self: JITFunction, *args: object, grid: object, warmup: bool, **kwargs: object) -> None:
    """``JITFunction.run`` replaced: compile for sm_90 with this launch's types and constants, run nothing."""
    options = {k: kwargs.pop(k) for k in LAUNCH_OPTIONS if k in kwargs}
    bound = dict(zip(self.arg_names, args)) | kwargs
    constants = {name: bound[name] for name, p in zip(self.arg_names, self.params) if p.is_constexpr}
    signature = {name: "constexpr" if name in constants else argument_type(bound[name]) for name in self.arg_names}
    triton.compile(ASTSource(fn=self, signature=signature, constexprs=constants), target=HOPPER, options=options)
    compiled.append(f"{self.__name__} {constants} {options}")


def launches() -> list[tuple[str, Callable[[], object]]]:
    """Each launcher, called as training calls it (the interaction forward and backward through autograd)."""
    from mlet.kernels import triton_batch_cut, triton_interaction
    from mlet.kernels import triton_kernels as tk

    tables, batch, hidden = 3, 64, 64
    weight, rows = torch.zeros(100, hidden), torch.zeros(100, 16)
    ids, bounds = torch.zeros(tables * batch, dtype=torch.int64), torch.tensor([0, 3, 40, 100])
    grad_out, lr = torch.zeros(batch, tables, 16).transpose(0, 1), torch.tensor(0.1)
    grad_out_64, w2_16, w2_64 = (
        torch.zeros(tables, batch, 64),
        torch.zeros(tables, hidden, 16),
        torch.zeros(tables, hidden, 64),
    )
    bag_of_id, id_weights = ids % batch, lr.expand(ids.numel())
    offsets = torch.arange(0, 2 * batch + 1, 2)
    cache_ids, cache_dense, cache_labels = (
        torch.zeros(200, 26, dtype=torch.int32),
        torch.zeros(200, 13),
        torch.zeros(200),
    )

    def interaction(itself: bool, dtype: torch.dtype = torch.float32) -> None:
        dense = torch.zeros(batch, 16, dtype=dtype, requires_grad=True)
        embedded = torch.zeros(batch, 26, 16, dtype=dtype, requires_grad=True)
        width = 16 + triton_interaction.pair_count(27, itself) + 5  # padded, as DLRM pads it
        triton_interaction.dot_interaction(dense, embedded, itself, width).sum().backward()

    return [
        ("gather_rows", lambda: tk.gather_rows(rows, ids)),
        ("scatter_sub_rows", lambda: tk.scatter_sub_rows(rows, ids, torch.zeros(ids.numel(), 16), lr)),
        ("scatter_sub_rows (bags)", lambda: tk.scatter_sub_rows(rows, ids, grad_out[0], lr, bag_of_id, id_weights)),
        ("scatter_sub_table_rows", lambda: tk.scatter_sub_table_rows(rows, ids, grad_out, bounds, lr)),
        ("project_scatter_sub d=16", lambda: tk.project_scatter_sub(weight, ids, grad_out, w2_16, bounds, lr)),
        ("project_scatter_sub d=64", lambda: tk.project_scatter_sub(weight, ids, grad_out_64, w2_64, bounds, lr)),
        ("pad_bags", lambda: tk.pad_bags(ids[: 2 * batch], offsets, 4)),
        ("grouped_matmul", lambda: tk.grouped_matmul(torch.zeros(tables, batch, hidden), w2_16, 2)),
        ("gather_project", lambda: tk.gather_project(weight, ids, w2_16)),
        ("gathered_weight_gradient", lambda: tk.gathered_weight_gradient(weight, ids, grad_out, splits=2)),
        ("dot_interaction", lambda: interaction(False)),
        ("dot_interaction itself", lambda: interaction(True)),
        ("dot_interaction bf16", lambda: interaction(False, torch.bfloat16)),
        ("cut_batch", lambda: triton_batch_cut.cut_batch(torch.arange(batch), cache_ids, cache_dense, cache_labels)),
    ]


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("kernel_compile.py: unset TRITON_INTERPRET (the interpreter's functions do not compile)")
    JITFunction.run = compile_instead  # type: ignore[method-assign]
    failed = 0
    for precision in ("ieee", "tf32"):
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"  # the kernels' PRECISION follows it
        for name, launch in launches():
            try:
                launch()
            except Exception as error:  # report each failure, then go on to the next kernel
                failed += 1
                print(f"FAILED {name} ({precision}): {type(error).__name__}: {str(error)[:2000]}")
    print("\n".join(sorted(set(compiled))))
    print(f"{len(set(compiled))} compilations, {failed} failures")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
