"""Shared helpers of the benchmarks: machine facts, child processes with peak RSS, result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))


def machine() -> dict:
    """What the numbers were measured on."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    memory = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")), 0)
    return {"cpus": os.cpu_count(), "cpu": model, "memory_mib": memory, "python": platform.python_version(), "load_average": os.getloadavg()}


def run_child(code: str, env: dict | None = None) -> tuple[dict, float, int]:
    """Run ``code`` in a fresh Python; it prints one JSON line last.

    Returns (that JSON, with ``cpu_seconds`` (user + system time, which other
    load on a shared machine does not inflate) added unless the child measured
    it; wall seconds; peak RSS bytes).
    """
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, **(env or {})}, text=True
    )
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    out, err = child.stdout.read(), child.stderr.read()
    if status != 0:
        raise RuntimeError(f"child failed ({status}):\n{err[-3000:]}")
    info = json.loads(out.strip().splitlines()[-1])
    info.setdefault("cpu_seconds", usage.ru_utime + usage.ru_stime)
    return info, wall, usage.ru_maxrss * 1024


def save(name: str, payload: dict) -> Path:
    """Write ``bench/results/NAME.json`` with the machine, command and date added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    full = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **payload,
    }
    path.write_text(json.dumps(full, indent=1) + "\n")
    return path


def table(rows: list[list], header: list[str]) -> str:
    """A plain text table."""
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])
