"""The embedding tables' Triton kernels by class of table: where the row update's time goes, and what the tiny
tables' per-row sums save.

At Kaggle's cardinalities (26 tables, 33.8M rows), d=16, K=64, it times each kernel of a one-hot training
step's tables, replayed from a CUDA graph, on three sets of tables: all 26, the seven of at most
``TINY_TABLE_ROWS`` rows (3 to 27), and the 19 others:

* plain tables: the lookup (``gather_rows``); the SGD row update lookup by lookup (``scatter_sub_rows``,
  the update before tables were known to the kernel), by table with every table lookup by lookup
  (``scatter_sub_table_rows``, ``tiny_rows=0``) and with the tiny tables' per-row sums (the default);
* MLET: the forward (``gather_project``), W2's gradient (``gathered_weight_gradient``), and the fused row
  update (``project_scatter_sub``) without and with the per-row sums.

``sums_speedup`` is the update without the sums over the update with them, both timed in this run.

    python bench/table_kernels.py [--batches 2048 8192] [--ids zipf] [--tf32] [--out table_kernels]

Needs a CUDA GPU. Writes bench/results/table_kernels.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable

import torch
from common import OUT_HELP, print_table, save
from gpu_throughput import make_batches
from reference_dlrm import scaled_cardinalities
from triton_tuning import microseconds

from mlet.kernels import triton_kernels as tk

COLUMNS = ["batch", "tables", "model", "kernel", "us", "sums_speedup"]


def table_classes(sizes: list[int]) -> dict[str, list[int]]:
    """Table numbers of each class: all, the tiny ones (summed per row), the others."""
    tiny = [t for t, n in enumerate(sizes) if n <= tk.TINY_TABLE_ROWS]
    return {"all": list(range(len(sizes))), "tiny": tiny, "others": [t for t in range(len(sizes)) if t not in tiny]}


def operands(sizes: list[int], batch: int, ids: str, seed: int) -> dict[str, torch.Tensor]:
    """One step's operands on the GPU, the tables' rows concatenated as in ``EmbeddingTables``."""
    device = torch.device("cuda")
    bounds = torch.tensor([0, *itertools.accumulate(sizes)], device=device)
    (one_hot,) = make_batches(sizes, batch, 1, device, seed, id_law=ids)  # uniform, or Zipf as click logs
    grad_out = torch.randn(batch, len(sizes), 16, device=device).transpose(0, 1)  # as autograd hands it over
    return {
        "bounds": bounds,
        "ids": one_hot.sparse.indices + bounds[:-1].repeat_interleave(batch),  # table-major global rows
        "grad_out": grad_out,
        "grad_rows": grad_out.reshape(-1, 16),
        "plain": torch.randn(sum(sizes), 16, device=device),
        "w1": torch.randn(sum(sizes), 64, device=device) * 0.01,
        "w2": torch.randn(len(sizes), 64, 16, device=device),
        "lr": torch.tensor(0.0, device=device),  # the tables stay as they are between launches
    }


def kernel_timings(x: dict[str, torch.Tensor]) -> list[tuple[str, str, float]]:
    """(model, kernel, us) of every kernel on these operands."""
    w, w1, w2, ids, g, bounds, lr = x["plain"], x["w1"], x["w2"], x["ids"], x["grad_out"], x["bounds"], x["lr"]
    kernels: list[tuple[str, str, Callable[[], object]]] = [
        ("plain", "lookup", lambda: tk.gather_rows(w, ids)),
        ("plain", "update by lookup", lambda: tk.scatter_sub_rows(w, ids, x["grad_rows"], lr)),
        ("plain", "update by table, no sums", lambda: tk.scatter_sub_table_rows(w, ids, g, bounds, lr, tiny_rows=0)),
        ("plain", "update by table", lambda: tk.scatter_sub_table_rows(w, ids, g, bounds, lr)),
        ("MLET", "forward", lambda: tk.gather_project(w1, ids, w2)),
        ("MLET", "W2 gradient", lambda: tk.gathered_weight_gradient(w1, ids, g)),
        ("MLET", "update, no sums", lambda: tk.project_scatter_sub(w1, ids, g, w2, bounds, lr, tiny_rows=0)),
        ("MLET", "update", lambda: tk.project_scatter_sub(w1, ids, g, w2, bounds, lr)),
    ]
    return [(model, kernel, microseconds(fn)) for model, kernel, fn in kernels]


def class_rows(sizes: list[int], batch: int, name: str, tables: list[int], args: argparse.Namespace) -> list[dict]:
    """The rows of one class of tables at one batch size."""
    x = operands([sizes[t] for t in tables], batch, args.ids, args.seed)
    timed = kernel_timings(x)
    rows = [
        {"batch": batch, "tables": f"{name} ({len(tables)})", "model": m, "kernel": k, "us": us} for m, k, us in timed
    ]
    by_kernel = {(r["model"], r["kernel"]): r for r in rows}
    for model, update in (("plain", "update by table"), ("MLET", "update")):
        by_kernel[model, update]["sums_speedup"] = (
            by_kernel[model, f"{update}, no sums"]["us"] / by_kernel[model, update]["us"]
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--ids", choices=("uniform", "zipf"), default="uniform", help="how the batches' ids are drawn")
    p.add_argument("--tf32", action="store_true", help="the kernels' products in TF32, as under --tf32")
    p.add_argument("--scale", type=float, default=1.0, help="scale Kaggle's cardinalities (1.0: 33.8M rows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="table_kernels", help=OUT_HELP)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("table_kernels.py: needs a CUDA GPU (the kernels are timed replayed from a CUDA graph)")
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    sizes = scaled_cardinalities(args.scale)
    rows = [
        row
        for batch in args.batches
        for name, tables in table_classes(sizes).items()
        for row in class_rows(sizes, batch, name, tables, args)
    ]
    print_table(rows, COLUMNS)
    config = {"d": 16, "K": 64, "ids": args.ids, "precision": tk.dot_precision(), "tiny_rows": tk.TINY_TABLE_ROWS}
    print(f"wrote {save(args.out, {'config': config, 'table_rows': sum(sizes), 'rows': rows})}")


if __name__ == "__main__":
    main()
