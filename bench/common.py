"""Shared benchmark plumbing: machine facts, timing, tables, JSON results."""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def machine() -> dict:
    """What the numbers were measured on."""
    info = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def command() -> str:
    """The command line that produced the results."""
    return " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv])


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


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Markdown table of ``rows`` (dicts) restricted to ``columns``."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{row[c]:,.3g}" if isinstance(row[c], float) else f"{row[c]:,}" if isinstance(row[c], int) else str(row[c]) for c in columns]
        print("| " + " | ".join(cells) + " |")


def write_results(name: str, rows: list[dict], extra: dict | None = None) -> Path:
    """Write ``bench/results/NAME.json`` with machine, command, date and rows."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command(),
        "machine": machine(),
        **(extra or {}),
        "rows": rows,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
