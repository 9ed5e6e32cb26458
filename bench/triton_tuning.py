"""Launch-parameter sweep for MLET's fused backward kernel (``project_scatter_sub``) on one GPU.

The kernel computes ``-lr * grad_out[t, b] @ W2[t].T`` per sample and table and
adds it into the K-wide ``W1`` rows with atomics. This times it for block
sizes and warp counts at a Criteo-size step (26 tables, batch 8192, K=64,
rows drawn from 33.8M) against ``triton_kernels.project_scatter_sub``'s default launch.

    python bench/triton_tuning.py [--batch 8192] [--dims 4 16] [--hidden 64]

Writes bench/results/triton_tuning.json.
"""

from __future__ import annotations

import argparse
import functools
import itertools

import torch
import triton
from common import print_table, save
from reference_dlrm import scaled_cardinalities

import triton_kernels as tk


def sweep(dim: int, hidden: int, batch: int) -> list[dict]:
    """Microseconds per launch for every (BLOCK_M, BLOCK_K, warps) at one d."""
    sizes = scaled_cardinalities(1.0)
    device = torch.device("cuda")
    weight = torch.zeros(sum(sizes), hidden, device=device)
    offsets = torch.tensor([0, *itertools.accumulate(sizes)][:-1], device=device)
    ids = (torch.stack([torch.randint(0, n, (batch,), device=device) for n in sizes]) + offsets[:, None]).flatten()
    grad_out = torch.randn(batch, len(sizes), dim, device=device).transpose(0, 1)  # as autograd hands it over
    projection = torch.randn(len(sizes), hidden, dim, device=device)
    lr = torch.tensor(0.01, device=device)
    rows = []
    for block_m, block_k, warps in itertools.product((32, 64, 128), (32, 64), (2, 4, 8)):
        if block_k > hidden:
            continue  # project_scatter_sub caps BLOCK_K at K
        us = 1000 * triton.testing.do_bench(functools.partial(tk.project_scatter_sub, weight, ids, grad_out, projection, lr, block_m, block_k, warps))
        rows.append({"d": dim, "K": hidden, "batch": batch, "BLOCK_M": block_m, "BLOCK_K": block_k, "warps": warps, "us": us})
    current = 1000 * triton.testing.do_bench(lambda: tk.project_scatter_sub(weight, ids, grad_out, projection, lr))
    for r in rows:
        r["vs_current"] = current / r["us"]
    rows.append({"d": dim, "K": hidden, "batch": batch, "BLOCK_M": "current", "us": current, "vs_current": 1.0})
    return rows


def main() -> None:
    """Sweep, print the table, write JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--dims", type=int, nargs="+", default=[4, 16])
    p.add_argument("--hidden", type=int, default=64)
    args = p.parse_args()
    rows = [r for dim in args.dims for r in sweep(dim, args.hidden, args.batch)]
    print_table(rows, ["d", "K", "batch", "BLOCK_M", "BLOCK_K", "warps", "us", "vs_current"])
    print(f"wrote {save('triton_tuning', {'rows': rows})}")


if __name__ == "__main__":
    main()
