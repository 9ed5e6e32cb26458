"""What the CRC-32 check of ``load_checkpoint`` costs on a large checkpoint.

``load_checkpoint`` reads every member of the checkpoint's zip archive once and compares its CRC-32 with the
one torch recorded (a damaged file is refused instead of computing with garbage). This writes an inference
checkpoint of about ``--gib`` GiB (one table of float32 rows) and times, interleaved and warm in the page cache:

* ``crc``: the check alone (``damaged_member``);
* ``torch_load``: ``torch.load(weights_only=True)`` (the baseline: what a load cost without the check);
* ``load_checkpoint``: the whole load (check, ``torch.load``, structure checks);
* the same two with ``mmap=True`` (as ``checkpoint.py info``, ``collapse`` and ``export-onnx`` load).

``vs_baseline`` is each row's seconds over the baseline's of its kind (read or mapped).

    python3 bench/checkpoint_crc.py               # ~1 GiB; writes bench/results/checkpoint_crc.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import OUT_HELP, median_of_rounds, print_table, save

from dlrm_model import DLRM, ModelConfig
from mlet.training.checkpoints import FORMAT, INFERENCE, PLAIN_VERSION, atomic_save, damaged_member, load_checkpoint
from mlet_layers import build_tables

DIM = 16


def write_checkpoint(path: Path, gib: float) -> int:
    """An inference checkpoint whose one table holds about ``gib`` GiB; returns the file's bytes."""
    rows = int(gib * 2**30) // (DIM * 4)
    config = ModelConfig((rows,), DIM, (13, 16, DIM), (8, 1))
    model = DLRM(config, seed=0, tables=build_tables(config, seed=None))
    with torch.no_grad():
        model.tables.weight.uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(0))
    ckpt = {
        "format": FORMAT,
        "version": PLAIN_VERSION,
        "kind": INFERENCE,
        "model_config": config.to_dict(),
        "model": model.state_dict(),
    }
    atomic_save(ckpt, path)
    return path.stat().st_size


def seconds(action: Callable[[], object]) -> Callable[[], float]:
    """A timer of one call of ``action``."""

    def timer() -> float:
        start = time.perf_counter()
        action()
        return time.perf_counter() - start

    return timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="checkpoint size in GiB")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is kept")
    parser.add_argument("--out", default="checkpoint_crc", help=OUT_HELP)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as folder:
        path = Path(folder) / "big.pt"
        size = write_checkpoint(path, args.gib)
        timers = {
            "crc": seconds(lambda: damaged_member(path)),
            "torch_load": seconds(lambda: torch.load(path, weights_only=True)),
            "load_checkpoint": seconds(lambda: load_checkpoint(path)),
            "torch_load_mmap": seconds(lambda: torch.load(path, weights_only=True, mmap=True)),
            "load_checkpoint_mmap": seconds(lambda: load_checkpoint(path, mmap=True)),
        }
        medians = median_of_rounds(timers, args.rounds)
    baseline = {"crc": "torch_load", "load_checkpoint": "torch_load", "load_checkpoint_mmap": "torch_load_mmap"}
    rows = [
        {
            "step": name,
            "seconds": value,
            "GiB/s": size / 2**30 / value,
            "vs_baseline": value / medians[baseline.get(name, name)],
        }
        for name, value in medians.items()
    ]
    print(f"checkpoint of {size / 2**30:.2f} GiB, median of {args.rounds} warm rounds")
    print_table(rows, ["step", "seconds", "GiB/s", "vs_baseline"])
    print(f"wrote {save(args.out, {'file_bytes': size, 'rounds': args.rounds, 'rows': rows})}")


if __name__ == "__main__":
    main()
