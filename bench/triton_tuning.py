"""Launch-parameter sweep for MLET's Triton kernels on one GPU.

At a Criteo-size step (26 tables, batch 8192, K=64, rows drawn from 33.8M)
this times, for each d, every (BLOCK_M, BLOCK_K, warps) of

* ``project_scatter_sub``: the fused backward + SGD (``-lr * grad_out[t, b] @ W2[t].T``
  added into the K-wide ``W1`` rows with atomics); also timed unfused, as the
  row gradients from ``grouped_matmul`` followed by ``scatter_sub_rows``;
* ``gather_project``: the forward, rows read straight from ``W1``;
* ``gathered_weight_gradient``: ``W2``'s gradient from the same rows (and, with the
  current launch, each number of ranges the batch's reduction is split into);

each against the launch ``triton_kernels`` uses now (``vs_current`` > 1: faster).

    python bench/triton_tuning.py [--batch 8192] [--dims 4 16 64] [--hidden 64] [--tf32] [--out triton_tuning]

``--tf32``: the kernels' products in TF32, as under ``--tf32`` (the default: IEEE float32, as under ``--bf16``
alone, whose autocast leaves MLET's projection in float32).

Writes bench/results/triton_tuning.json.
"""

from __future__ import annotations

import argparse
import functools
import itertools
from collections.abc import Callable
from types import SimpleNamespace

import torch
import triton
from common import OUT_HELP, print_table, save
from reference_dlrm import scaled_cardinalities

from mlet.kernels import triton_kernels as tk

LAUNCHES = list(itertools.product((32, 64, 128), (16, 32, 64), (2, 4, 8)))


def microseconds(fn: Callable[[], object]) -> float:
    """Median time of one call, replayed from a CUDA graph: an eager call's Python launch (tens of us) would
    hide these kernels' own times (it made identical launches differ by up to 2x before)."""
    return 1000 * triton.testing.do_bench_cudagraph(fn)


def sweep_kernel(name: str, launch_fn: Callable[..., object], base: dict, hidden: int) -> list[dict]:
    """Time ``launch_fn(block_m=, block_k=, warps=)`` for every launch, and ``launch_fn()`` as ``current``."""
    current = microseconds(launch_fn)
    rows = [{**base, "kernel": name, "BLOCK_M": "current", "us": current, "vs_current": 1.0}]
    for block_m, block_k, warps in LAUNCHES:
        if block_k > hidden:
            continue
        try:
            us = microseconds(functools.partial(launch_fn, block_m=block_m, block_k=block_k, warps=warps))
        except Exception as error:  # a launch that does not compile (too many registers, ...) is skipped
            print(f"{name} {block_m}x{block_k} {warps} warps: {type(error).__name__}")
            continue
        rows.append(
            {
                **base,
                "kernel": name,
                "BLOCK_M": block_m,
                "BLOCK_K": block_k,
                "warps": warps,
                "us": us,
                "vs_current": current / us,
            }
        )
    return rows


def step_tensors(dim: int, hidden: int, batch: int) -> SimpleNamespace:
    """A Criteo-size step's operands on the GPU."""
    sizes = scaled_cardinalities(1.0)
    device = torch.device("cuda")
    bounds = torch.tensor([0, *itertools.accumulate(sizes)], device=device)
    offsets = bounds[:-1]
    return SimpleNamespace(
        row_bounds=bounds,
        weight=torch.randn(sum(sizes), hidden, device=device) * 0.01,
        ids=(torch.stack([torch.randint(0, n, (batch,), device=device) for n in sizes]) + offsets[:, None]).flatten(),
        grad_out=torch.randn(batch, len(sizes), dim, device=device).transpose(0, 1),  # as autograd hands it over
        projection=torch.randn(len(sizes), hidden, dim, device=device),
        lr=torch.tensor(0.0, device=device),  # the table stays as it is between launches
        base={"d": dim, "K": hidden, "batch": batch, "precision": tk.dot_precision()},
    )


def sweep_launches(x: SimpleNamespace) -> list[dict]:
    """Every kernel's launches, and the unfused backward, at one d."""
    hidden = x.weight.shape[1]

    def unfused() -> None:
        rows = tk.grouped_matmul(x.grad_out, x.projection.transpose(1, 2)).view(-1, hidden)
        tk.scatter_sub_rows(x.weight, x.ids, rows, x.lr)

    rows = sweep_kernel(
        "project_scatter_sub",
        functools.partial(tk.project_scatter_sub, x.weight, x.ids, x.grad_out, x.projection, x.row_bounds, x.lr),
        x.base,
        hidden,
    )
    rows.append({**x.base, "kernel": "unfused backward", "BLOCK_M": "current", "us": microseconds(unfused)})
    rows += sweep_kernel(
        "gather_project", functools.partial(tk.gather_project, x.weight, x.ids, x.projection), x.base, hidden
    )
    rows += sweep_kernel(
        "gathered_weight_gradient",
        functools.partial(tk.gathered_weight_gradient, x.weight, x.ids, x.grad_out),
        x.base,
        hidden,
    )
    return rows


def sweep_splits(x: SimpleNamespace) -> list[dict]:
    """The weight gradient (current launch) for each number of ranges its reduction is split into."""
    rows = [
        {
            **x.base,
            "kernel": "gathered_weight_gradient",
            "BLOCK_M": "current",
            "splits": "current",
            "us": microseconds(functools.partial(tk.gathered_weight_gradient, x.weight, x.ids, x.grad_out)),
        }
    ]
    for splits in (1, 2, 4, 8, 16, 32):
        us = microseconds(functools.partial(tk.gathered_weight_gradient, x.weight, x.ids, x.grad_out, splits=splits))
        rows.append(
            {
                **x.base,
                "kernel": "gathered_weight_gradient",
                "BLOCK_M": "current",
                "splits": splits,
                "us": us,
                "vs_current": rows[0]["us"] / us,
            }
        )
    return rows


def best_launches(rows: list[dict]) -> list[dict]:
    """The fastest launch of each kernel at each d."""
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["kernel"], r["d"])
        if key not in best or r["us"] < best[key]["us"]:
            best[key] = r
    return list(best.values())


def main() -> None:
    """Sweep, print the best launches, write JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--dims", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--out", default="triton_tuning", help=OUT_HELP)
    p.add_argument(
        "--splits-only", action="store_true", help="only the weight gradient's split counts (no launch sweep)"
    )
    p.add_argument("--tf32", action="store_true", help="TF32 products (default: IEEE float32)")
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = args.tf32  # what the kernels' dot_precision() reads
    rows = []
    for dim in args.dims:
        operands = step_tensors(dim, args.hidden, args.batch)
        rows += sweep_splits(operands) if args.splits_only else sweep_launches(operands) + sweep_splits(operands)
    columns = ["kernel", "d", "K", "batch", "precision", "BLOCK_M", "BLOCK_K", "warps", "splits", "us", "vs_current"]
    print_table([r for r in rows if r["BLOCK_M"] == "current"], columns)
    print_table(best_launches([r for r in rows if "splits" not in r]), columns)
    print(f"wrote {save(args.out, {'rows': rows})}")


if __name__ == "__main__":
    main()
