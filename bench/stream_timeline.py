"""Where a step's wall time goes on the GPU, from a Chrome trace of several steps (``torch.profiler``'s
``export_chrome_trace``, e.g. ``distributed_throughput.py --trace-dir``).

    python3 bench/stream_timeline.py TRACE.json [TRACE.json ...] [--top 12]

For each trace: the step period (first to last GPU activity, over the steps
the trace holds), and per step how long the GPU computed (some non-collective
kernel running on any stream), how long only collectives ran (NCCL kernels and
nothing else: communication on the critical path), and how long nothing ran
(launch and dependency gaps); each stream's busy time; the kernels with the
most time. Reads the trace only, so it runs anywhere (no GPU).
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


@dataclass(frozen=True)
class Span:
    """One GPU activity: start and end in microseconds, its stream, its name."""

    start: float
    end: float
    stream: int
    name: str

    @property
    def collective(self) -> bool:
        """Whether it is a communication kernel (NCCL's)."""
        return "nccl" in self.name.lower()


def gpu_spans(path: Path) -> list[Span]:
    """The GPU activities of a Chrome trace, by start time."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        events = json.load(handle)["traceEvents"]
    spans = [
        Span(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)), int(e.get("tid", 0)), str(e.get("name", "")))
        for e in events
        if e.get("ph") == "X" and e.get("cat") in GPU_CATEGORIES
    ]
    return sorted(spans, key=lambda s: s.start)


def covered(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of ``intervals``."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def summary(spans: list[Span], steps: int) -> dict:
    """Per-step times (microseconds) of a trace's GPU activity over ``steps`` steps."""
    period = (max(s.end for s in spans) - spans[0].start) / steps
    busy = covered([(s.start, s.end) for s in spans]) / steps
    computing = covered([(s.start, s.end) for s in spans if not s.collective]) / steps
    streams: dict[int, list[tuple[float, float]]] = defaultdict(list)
    kernels: dict[str, list[float]] = defaultdict(list)
    for s in spans:
        streams[s.stream].append((s.start, s.end))
        kernels[s.name].append(s.end - s.start)
    return {
        "period_us": period,
        "computing_us": computing,
        "only_collectives_us": busy - computing,
        "idle_us": period - busy,
        "kernels_per_step": len(spans) / steps,
        "stream_busy_us": {stream: covered(intervals) / steps for stream, intervals in sorted(streams.items())},
        "kernels": sorted(((sum(d) / steps, len(d) / steps, name) for name, d in kernels.items()), reverse=True),
    }


def report(path: Path, steps: int, top: int) -> None:
    """Print one trace's summary."""
    spans = gpu_spans(path)
    if not spans:
        print(f"{path}: no GPU activity in the trace")
        return
    s = summary(spans, steps)
    print(f"\n== {path.name}: {s['period_us']:.0f} us a step, {s['kernels_per_step']:.0f} GPU activities")
    print(
        f"   computing {s['computing_us']:.0f} us, only collectives {s['only_collectives_us']:.0f} us,"
        f" idle {s['idle_us']:.0f} us"
    )
    print("   busy per stream: " + ", ".join(f"{k}: {v:.0f} us" for k, v in s["stream_busy_us"].items()))
    for us, count, name in s["kernels"][:top]:
        print(f"   {us:8.1f} us {count:4.1f}x  {name[:100]}")


def main() -> None:
    """Summarize each trace given."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("traces", type=Path, nargs="+")
    parser.add_argument("--steps", type=int, default=10, help="steps each trace holds")
    parser.add_argument("--top", type=int, default=12, help="kernels to list")
    args = parser.parse_args()
    for path in args.traces:
        report(path, args.steps, args.top)


if __name__ == "__main__":
    main()
