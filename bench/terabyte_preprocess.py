"""Criteo Terabyte preprocessing: rows/s and peak memory, one reading process vs one per core (not a test).

    .venv/bin/python bench/terabyte_preprocess.py [--days 4] [--rows 1000000] [--scale 0.01] [--folder /tmp/bench/tb]

Generated day files (``data_utils.py generate terabyte``: the real column
layout, Criteo Terabyte's cardinalities times ``--scale``, gzip as downloaded)
are preprocessed in fresh processes, alternately with
``DLRM_MLET_PREPROCESS_WORKERS=1`` (the days one after another in one
process: the baseline) and with one reading process per core. Reported: rows/s,
CPU seconds, the peak RSS of the main process and of the largest reading
process, and their sum for the processes that run at once (an upper bound of
the build's memory). The vocabulary at the real cardinalities is estimated
from the hash tables' sizing rule (a projection, not a measurement).
Writes ``bench/results/terabyte_preprocess.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import time
from pathlib import Path

from common import ROOT, run_child, save, table

FULL_TERABYTE_ROWS = 4_373_472_329  # the 24 days, as published with the data set

BUILD = """
import json, resource, sys, time
from mlet.data.preprocessing.cache import prepare
start = time.perf_counter()
data = prepare({folder!r}, {out!r}, "terabyte", "dlrm", progress=False, log=lambda m: print(m, file=sys.stderr))
seconds = time.perf_counter() - start
own = resource.getrusage(resource.RUSAGE_SELF)
children = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({{
    "seconds": seconds,
    "rows": data.meta["physical_rows"],
    "cpu_seconds": own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
    "main_peak_rss_bytes": own.ru_maxrss * 1024,
    "largest_worker_peak_rss_bytes": children.ru_maxrss * 1024,
    "workers": data.meta["split"]["workers"],
    "vocabulary_values": sum(data.meta["vocabulary_sizes"]),
}}))
"""


def generate(folder: Path, days: int, rows: int, scale: float) -> float:
    """Write the day files if missing; seconds it took (0 if they existed)."""
    if all((folder / f"day_{d}.gz").exists() for d in range(days)):
        return 0.0
    from mlet.data.preprocessing.raw_generate import RawGenerator

    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    RawGenerator("terabyte", rows, seed=0, scale=scale).write_days(str(folder / "day.gz"), days)
    return time.perf_counter() - start


def vocabulary_bytes(cardinalities: list[int]) -> int:
    """Bytes of the merged vocabulary's hash tables for these distinct-value counts: per feature, a power-of-two
    table at most 60% full of 12-byte slots (int64 key, int32 index), and int64 counts."""
    total = 0
    for n in cardinalities:
        slots = 1 << max(10, math.ceil(math.log2(max(n, 1) / 0.6)))
        total += slots * 12 + n * 8
    return total


def one_build(folder: Path, workers: int) -> dict:
    """A fresh-process build with ``workers`` reading processes."""
    out = folder.with_name(folder.name + f".processed-{workers}")
    shutil.rmtree(out, ignore_errors=True)
    info, _, _ = run_child(
        BUILD.format(folder=str(folder), out=str(out)), env={"DLRM_MLET_PREPROCESS_WORKERS": str(workers)}
    )
    shutil.rmtree(out, ignore_errors=True)
    running = info["workers"] if info["workers"] > 1 else 0
    return {
        **info,
        "rows_per_second": info["rows"] / info["seconds"],
        "rows_per_cpu_second": info["rows"] / info["cpu_seconds"],
        "peak_rss_upper_bound_bytes": info["main_peak_rss_bytes"] + running * info["largest_worker_peak_rss_bytes"],
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per day file")
    parser.add_argument("--scale", type=float, default=0.01, help="table sizes as a share of Criteo Terabyte's")
    parser.add_argument("--folder", type=str, default="/tmp/bench/terabyte")
    parser.add_argument("--repeat", type=int, default=2, help="alternating rounds of both builds (median)")
    args = parser.parse_args()
    folder = Path(args.folder)
    generated = generate(folder, args.days, args.rows, args.scale)
    parallel_workers = min(args.days, os.cpu_count() or 1)
    runs: dict[str, list[dict]] = {"1 process": [], f"{parallel_workers} processes": []}
    for _ in range(args.repeat):
        runs["1 process"].append(one_build(folder, 1))
        runs[f"{parallel_workers} processes"].append(one_build(folder, parallel_workers))
    summary = {}
    for name, found in runs.items():
        ordered = sorted(found, key=lambda r: r["rows_per_second"])
        median = ordered[len(ordered) // 2]
        summary[name] = {
            "rows_per_second": median["rows_per_second"],
            "rows_per_cpu_second": median["rows_per_cpu_second"],
            "main_peak_rss_bytes": max(r["main_peak_rss_bytes"] for r in found),
            "largest_worker_peak_rss_bytes": max(r["largest_worker_peak_rss_bytes"] for r in found),
            "peak_rss_upper_bound_bytes": max(r["peak_rss_upper_bound_bytes"] for r in found),
            "runs": found,
        }
    baseline, parallel = summary["1 process"], summary[f"{parallel_workers} processes"]
    speedup = parallel["rows_per_second"] / baseline["rows_per_second"]
    from mlet.data.preprocessing.raw_generate import TERABYTE_CARDINALITIES

    projection = {
        "full_terabyte_rows": FULL_TERABYTE_ROWS,
        "hours_at_parallel_rate_here": FULL_TERABYTE_ROWS / parallel["rows_per_second"] / 3600,
        "vocabulary_bytes_at_real_cardinalities": vocabulary_bytes(list(TERABYTE_CARDINALITIES)),
        "note": (
            "the real days hold about 182M rows each and up to ~290M distinct values in one feature; the merged "
            "vocabulary's tables are sized by the rule in vocabulary.KeyTable (estimate, not measured)"
        ),
    }
    results = {
        "data": {
            "folder": str(folder),
            "days": args.days,
            "rows_per_day": args.rows,
            "scale": args.scale,
            "bytes": sum(p.stat().st_size for p in folder.glob("day_*")),
            "generated_seconds": generated,
        },
        "builds": summary,
        "parallel_vs_one_process": speedup,
        "projection": projection,
    }
    rows = [
        [
            name,
            f"{r['rows_per_second']:,.0f}",
            f"{r['rows_per_cpu_second']:,.0f}",
            f"{r['main_peak_rss_bytes'] / 2**20:,.0f}",
            f"{r['largest_worker_peak_rss_bytes'] / 2**20:,.0f}",
            f"{r['peak_rss_upper_bound_bytes'] / 2**20:,.0f}",
        ]
        for name, r in summary.items()
    ]
    print(
        f"\nTerabyte preprocessing of {args.days} generated day files x {args.rows:,} rows "
        f"(scale {args.scale}), median of {args.repeat} alternating rounds:"
    )
    print(table(rows, ["reading", "rows/s", "rows/CPU-s", "main RSS MiB", "worker RSS MiB", "sum RSS MiB"]))
    print(f"{parallel_workers} processes vs 1: {speedup:.2f}x")
    print(
        f"projection: the full {FULL_TERABYTE_ROWS:,} rows at this rate take "
        f"{projection['hours_at_parallel_rate_here']:.1f} h on this machine; the merged vocabulary at the real "
        f"cardinalities needs about {projection['vocabulary_bytes_at_real_cardinalities'] / 2**30:.1f} GiB"
    )
    saved = save("terabyte_preprocess", results)
    print(f"wrote {saved.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
