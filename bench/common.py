"""Shared benchmark plumbing: machine facts, timing, child processes with peak RSS, tables, result files, skewed ids."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"


def machine() -> dict:
    """What the numbers were measured on (CPU model, memory, load; torch and GPU where imported)."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    meminfo = Path("/proc/meminfo").read_text().splitlines() if Path("/proc/meminfo").exists() else []
    info = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu": next(
            (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), platform.machine()
        ),
        "memory_mib": next((int(line.split()[1]) // 1024 for line in meminfo if line.startswith("MemTotal")), 0),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
        if torch.cuda.is_available():
            info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count())
    return info


def command() -> str:
    """The command line that produced the results."""
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def time_steps(step: Callable[[int], None], steps: int, warmup: int, sync: Callable[[], None] = lambda: None) -> float:
    """Seconds per call of ``step(i)`` over ``steps`` calls, after ``warmup`` calls."""
    for i in range(warmup):
        step(i)
    sync()
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    sync()
    return (time.perf_counter() - start) / steps


def median_of_rounds(timers: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Run each timer ``rounds`` times, interleaved (A B A B ...), and take medians: drift hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            samples[name].append(timer())
    return {name: statistics.median(values) for name, values in samples.items()}


def run_child(code: str, env: dict | None = None) -> tuple[dict, float, int]:
    """Run ``code`` in a fresh Python, in ``bench/`` (so it imports the benchmarks' modules); it prints one
    JSON line last.

    Returns (that JSON, with ``cpu_seconds`` (user + system time, which other
    load on a shared machine does not inflate) added unless the child measured
    it; wall seconds; peak RSS bytes).
    """
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=BENCH,
        env={**os.environ, **(env or {})},
        text=True,
    )
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    out, err = child.stdout.read(), child.stderr.read()
    if status != 0:
        raise RuntimeError(f"child failed ({status}):\n{err[-3000:]}")
    info = json.loads(out.strip().splitlines()[-1])
    info.setdefault("cpu_seconds", usage.ru_utime + usage.ru_stime)
    return info, wall, usage.ru_maxrss * 1024


def format_cell(value: object) -> str:
    """Numbers with thousands separators and 3 significant digits for floats."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.3g}"


def table(rows: list[list], header: list[str]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(format_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Print dict rows as a markdown table of ``columns``."""
    print(table([[row.get(c, "") for c in columns] for row in rows], columns))


OUT_HELP = "results name under bench/results/ (NAME.json), or a path ending in .json"
"""The benchmarks' ``--out`` help: what :func:`save` accepts."""


def save(name: str, payload: dict) -> Path:
    """Write ``bench/results/NAME.json`` with the machine, command and date added; ``name`` may be a path (relative
    to ``bench/results/``, or absolute), and one ending in ``.json`` gets no second suffix (``--out /tmp/x.json``
    wrote ``/tmp/x.json.json``)."""
    stem = name.removesuffix(".json")
    path = RESULTS / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {
        "benchmark": Path(stem).name,
        "command": command(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **payload,
    }
    path.write_text(json.dumps(full, indent=1) + "\n")
    return path


def harness_sgd_step(model, lr: float):
    """One eager training step of ``model`` as ``dlrm_mlet.py`` trains by default on CPU: SGD with
    the fused table update (``--embedding-update=fused``), BCE on logits; call it with a ``Batch``."""
    import torch.nn.functional as F

    from mlet.training.optimizers import build_optimizer
    from mlet.training.train_step import TrainStep

    optimizer = build_optimizer("sgd", lr, model.sparse_parameters(), model.dense_parameters(), model.tables)
    return TrainStep(model, F.binary_cross_entropy_with_logits, optimizer)


def self_launching(parser: argparse.ArgumentParser, worker: Callable, driver: Callable) -> None:
    """Main of a benchmark that launches itself under torchrun: with ``--worker`` (given by
    :func:`torchrun_rows`) run ``worker(args)``, else ``driver(args, argv)``."""
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        driver(args, sys.argv[1:])


def torchrun_rows(script: str, nproc: int, argv: list[str]) -> list:
    """Run ``script argv`` as ``nproc`` torchrun workers (one thread each unless ``OMP_NUM_THREADS`` says
    otherwise); the JSON rows its rank 0 wrote to ``--out``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        command += [script, *argv, "--worker", f"--out={out}"]
        print("$", " ".join(command), flush=True)
        threads = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        subprocess.run(command, check=True, env={**os.environ, **threads})
        return json.loads(out.read_text())


ZIPF_EXPONENT = 1.05
"""Skew of the benchmarks' click-like ids (the real logs' popular values repeat: a quarter of the 26 x 1,999
lookups in Criteo-Kaggle's first rows are distinct rows)."""


def zipf_ids(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` ids in ``1..n`` whose popularity falls as ``id ** -ZIPF_EXPONENT`` (the continuous law's inverse
    CDF)."""
    u = rng.random(count)
    a = 1.0 - ZIPF_EXPONENT
    return np.minimum(((((n + 1.0) ** a - 1.0) * u + 1.0) ** (1.0 / a)).astype(np.int64), n)
