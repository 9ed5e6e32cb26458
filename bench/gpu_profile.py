"""Where a training step's GPU time goes: kernel totals for one step of a ``gpu_throughput.py`` variant.

    python bench/gpu_profile.py [--dim 16] [--batch 8192] [--hidden 64] [--variant fused]

Prints, for the baseline and the MLET model, the kernels sorted by total GPU
time over 20 steps (Kaggle cardinalities, random one-hot batches), and how
many kernels a step runs. The ``graph`` variants are profiled as they run, from
the CUDA graph's replays. Used to pick and check the levers recorded in
bench/NOTES.md.
"""

from __future__ import annotations

import argparse

import torch
from gpu_throughput import VARIANTS, make_batches, our_step
from reference_dlrm import scaled_cardinalities
from torch.profiler import ProfilerActivity, profile

from dlrm_model import DLRM, ModelConfig


def kernel_table(
    dim: int, hidden: int, batch: int, scale: float, variant: str, id_law: str = "uniform", steps: int = 20
) -> None:
    """Profile ``steps`` steps of ``variant`` and print the top kernels."""
    sizes = scaled_cardinalities(scale)
    device = torch.device("cuda")
    batches = make_batches(sizes, batch, 4, device, id_law=id_law)
    config = ModelConfig(tuple(sizes), dim, (13, 512, 256, 64, dim), (512, 256, 1), mlet_hidden=hidden)
    torch.backends.cuda.matmul.allow_tf32 = "tf32" in variant
    step = our_step(DLRM(config, seed=0, device=device), variant)
    for i in range(5):
        step(batches[i % 4])
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            step(batches[i % 4])
        torch.cuda.synchronize()
    events = prof.key_averages()
    key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    total = sum(getattr(e, key) for e in events)
    model_name = f"MLET K={hidden}" if hidden else "baseline"
    kernels = sum(e.count for e in events if getattr(e, key) > 0) / steps
    per_step = f"{total / steps / 1000:.3f} ms GPU time, {kernels:.0f} kernels"
    print(f"\n== {model_name} d={dim} batch={batch} {variant}, {id_law} ids: {per_step} per step")
    for e in sorted(events, key=lambda e: -getattr(e, key))[:25]:
        us = getattr(e, key) / steps
        if us > 0:
            print(f"{us:9.1f} us/step {e.count // steps:4d}x  {e.key[:110]}")


def main() -> None:
    """Profile baseline and MLET."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--variant", default="fused", choices=[v for v in VARIANTS if v not in ("reference", "autograd")])
    p.add_argument("--ids", choices=("uniform", "zipf"), default="uniform", help="how the batches' ids are drawn")
    args = p.parse_args()
    for hidden in (0, args.hidden):
        kernel_table(args.dim, hidden, args.batch, args.scale, args.variant, args.ids)


if __name__ == "__main__":
    main()
