"""Preprocessing throughput and peak memory on a generated Kaggle-format file (not a test).

    .venv/bin/python bench/preprocess_throughput.py [--rows 5000000] [--scale 0.2] [--file /tmp/bench/kaggle5M.txt]

1. ``full``: the whole preprocessing (line count, vocabulary pass, encoding pass,
   writing the arrays) of the file, in a fresh process: rows/s and peak RSS.
2. ``readers``: turning the first ``--compare-rows`` rows into the same arrays
   (labels, 13 counts, 26 hex keys) with pyarrow + numpy (ours), with a
   Python loop per row (upstream DLRM's way), with ``numpy.loadtxt`` and with
   ``pandas.read_csv`` (if pandas can be imported; it is not a project
   dependency: put it on PYTHONPATH to include it). Each in a fresh process;
   all must give the same arrays.
3. ``full_scale_vocabulary``: the hash tables at the real Criteo-Kaggle
   cardinalities (33.76M values): build time, memory, and the per-row cost
   of counting and encoding, to project the full 45.8M-row file.

The file is generated (``data_utils.py generate kaggle``) if it is missing.
Prints tables and writes ``bench/results/preprocess_throughput.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from common import ROOT, run_child, save, table

UPSTREAM = {
    "rows_per_second": 6100,
    "peak_rss_bytes": 1.25e9,
    "note": "upstream DLRM's Kaggle preprocessing, 1M rows in 164 s, measured on this machine (issue 3)",
}
FULL_KAGGLE_ROWS = 45_840_617
TARGET = 76_000

FULL = """
import json, sys, time
from mlet.data.preprocessing.cache import prepare
start, cpu = time.perf_counter(), time.process_time()
data = prepare({file!r}, {out!r}, "kaggle", "dlrm", progress=False, log=lambda m: print(m, file=sys.stderr))
print(json.dumps({{
    "seconds": time.perf_counter() - start,
    "cpu_seconds": time.process_time() - cpu,
    "rows": data.meta["physical_rows"],
    "vocabulary_sizes": data.meta["vocabulary_sizes"],
}}))
"""

# Each reader prints {"seconds", "rows", "checksum"}; checksum over labels, counts and keys (empty hex field: -1).
READER_PRELUDE = """
import json, time
import numpy as np
from mlet.data.preprocessing.raw_data import HEX_PAIRS
FILE = {file!r}

def hex_keys(fixed):
    # 'S8' bytes (empty: b'') -> int64 keys, -1 for empty
    chars = np.ascontiguousarray(fixed.astype("S8")).view(np.uint8).reshape(-1, 8)
    values = HEX_PAIRS[chars.view("<u2")].astype(np.uint8).view(">u4").ravel().astype(np.int64)
    return np.where(fixed == b"", -1, values)

def begin():
    return time.perf_counter(), time.process_time()

def report(start, labels, counts, keys):
    checksum = [int(labels.sum()), int(counts.sum()), int((keys % 1000003).sum())]
    seconds, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
    print(json.dumps({{"seconds": seconds, "cpu_seconds": cpu, "rows": len(labels), "checksum": checksum}}))
"""

READERS = {
    "pyarrow + numpy (ours)": """
from mlet.data.preprocessing.layouts import detect_layout
from mlet.data.preprocessing.raw_data import MISSING, read_blocks
start = begin()
parts = [(b.labels, b.counts, b.keys) for b in read_blocks(FILE, detect_layout(FILE, "kaggle"))]
labels = np.concatenate([p[0] for p in parts])
counts = np.concatenate([p[1] for p in parts])
keys = np.concatenate([p[2] for p in parts], axis=1).T
report(start, labels, counts, np.where(keys == MISSING, -1, keys))
""",
    "python loop per row (upstream)": """
start = begin()
labels, counts, keys = [], [], []
with open(FILE) as f:
    for line in f:
        fields = line.rstrip("\\n").split("\\t")
        labels.append(int(fields[0]))
        counts.append([int(x) if x else 0 for x in fields[1:14]])
        keys.append([int(x, 16) if x else -1 for x in fields[14:]])
report(start, np.array(labels), np.array(counts), np.array(keys))
""",
    "numpy.loadtxt": """
start = begin()
table = np.loadtxt(FILE, delimiter="\\t", dtype="S16", comments=None)
counts = np.where(table[:, 1:14] == b"", b"0", table[:, 1:14]).astype(np.int64)
keys = np.stack([hex_keys(table[:, j]) for j in range(14, 40)], axis=1)
report(start, table[:, 0].astype(np.int64), counts, keys)
""",
    "pandas.read_csv (C engine)": """
import pandas as pd
start = begin()
types = {0: "int64", **{i: "float64" for i in range(1, 14)}, **{i: "object" for i in range(14, 40)}}
frame = pd.read_csv(
    FILE, sep="\\t", header=None, dtype=types, keep_default_na=False, na_values={i: [""] for i in range(1, 14)}
)
counts = frame.iloc[:, 1:14].fillna(0).to_numpy(np.int64)
keys = np.stack([hex_keys(frame[j].to_numpy().astype("S8")) for j in range(14, 40)], axis=1)
report(start, frame[0].to_numpy(), counts, keys)
""",
}

VOCABULARY = """
import json, time
import numpy as np
from mlet.data.preprocessing.vocabulary import Vocabulary
from mlet.data.preprocessing.raw_generate import KAGGLE_CARDINALITIES, scramble

def run(sizes, rows=1_000_000, block=65_536):
    vocab = Vocabulary(len(sizes))
    start = time.perf_counter()
    for lo in range(0, max(sizes), 1 << 20):  # every value once
        keys = np.stack(
            [scramble(np.arange(lo, lo + (1 << 20)) % n, 977 * t).astype(np.int64) for t, n in enumerate(sizes)]
        )
        vocab.index(keys, np.ones(keys.shape[1], bool))
    build = time.perf_counter() - start
    slot_bytes = sum(t.slot_keys.nbytes + t.slot_index.nbytes for t in vocab.tables)
    table_bytes = slot_bytes + sum(c.nbytes for c in vocab._counts)
    rng = np.random.default_rng(0)
    draws = np.stack([scramble(rng.integers(0, n, rows), 977 * t).astype(np.int64) for t, n in enumerate(sizes)])
    start = time.perf_counter()
    for lo in range(0, rows, block):
        ids = vocab.index(draws[:, lo:lo + block], np.ones(min(block, rows - lo), bool))
    index = time.perf_counter() - start
    vocab.freeze()
    provisional = np.stack(
        [np.random.default_rng(t).integers(0, n, rows) for t, n in enumerate(sizes)], axis=1
    ).astype(np.int32)
    start = time.perf_counter()
    for t, table in enumerate(vocab.renumbering):
        provisional[:, t] = table[provisional[:, t]]
    renumber = time.perf_counter() - start
    return {{
        "values": int(sum(sizes)),
        "build_seconds": build,
        "index_us_per_row": index / rows * 1e6,
        "renumber_us_per_row": renumber / rows * 1e6,
        "table_bytes": table_bytes,
    }}

print(json.dumps({{"full": run(KAGGLE_CARDINALITIES), "bench_file": run({bench_sizes})}}))
"""


def ensure_file(path: Path, rows: int, scale: float) -> float:
    """Generate the Kaggle-format file if missing; returns the seconds it took (0 if it existed)."""
    if path.exists():
        return 0.0
    from mlet.data.preprocessing.raw_generate import RawGenerator

    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    RawGenerator("kaggle", rows, seed=0, scale=scale).write(path)
    return time.perf_counter() - start


def head(path: Path, rows: int) -> Path:
    """A file of the first ``rows`` lines of ``path``."""
    out = path.with_name(f"{path.stem}.head{rows}{path.suffix}")
    if not out.exists():
        with open(path, "rb") as src, open(out, "wb") as dst:
            for _, line in zip(range(rows), src):
                dst.write(line)
    return out


def parse_args() -> argparse.Namespace:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument(
        "--scale", type=float, default=0.2, help="table sizes as a share of Criteo-Kaggle's (generator --scale)"
    )
    parser.add_argument("--file", type=str, default="/tmp/bench/kaggle5M.txt")
    parser.add_argument("--compare-rows", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the reader comparison")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of the full preprocessing (the machine is shared: report median and best)",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["full", "readers", "vocabulary"])
    return parser.parse_args()


def median(values: list[float]) -> float:
    """The middle value (the upper one of an even count, as the tables have always reported)."""
    return sorted(values)[len(values) // 2]


def full_preprocessing(path: Path, repeat: int) -> tuple[dict, list[int]]:
    """``repeat`` whole preprocessings of ``path``, each in a fresh process: the results entry and the file's
    vocabulary sizes."""
    out = path.with_name(path.name + ".processed")
    runs = []
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        info, _, rss = run_child(FULL.format(file=str(path), out=str(out)))
        runs.append(
            {
                "seconds": info["seconds"],
                "rows_per_second": info["rows"] / info["seconds"],
                "cpu_seconds": info["cpu_seconds"],
                "rows_per_cpu_second": info["rows"] / info["cpu_seconds"],
                "peak_rss_bytes": rss,
                "load_average": os.getloadavg(),
            }
        )
    shutil.rmtree(out, ignore_errors=True)
    rate = median([r["rows_per_second"] for r in runs])
    entry = {
        "rows": info["rows"],
        "runs": runs,
        "rows_per_second": rate,
        "best_rows_per_second": max(r["rows_per_second"] for r in runs),
        "rows_per_cpu_second": median([r["rows_per_cpu_second"] for r in runs]),
        "note": (
            "wall-clock rates depend on other load on the shared machine (load average per run); "
            "rows per CPU-second does not: on 2 idle cores the wall rate lies between it (no overlap) and twice it"
        ),
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        "vocabulary_values": sum(info["vocabulary_sizes"]),
        "vs_upstream": rate / UPSTREAM["rows_per_second"],
        "vs_target": rate / TARGET,
        "full_kaggle_minutes_at_this_rate": FULL_KAGGLE_ROWS / rate / 60,
    }
    return entry, info["vocabulary_sizes"]


def print_full(entry: dict, path: Path) -> None:
    """The full preprocessing's table."""
    rate, runs = entry["rows_per_second"], entry["runs"]
    print(
        f"\nfull preprocessing of {entry['rows']:,} rows ({path.stat().st_size / 2**30:.2f} GiB), dlrm split, "
        f"{len(runs)} runs in fresh processes:"
    )
    row = [
        f"{rate:,.0f}",
        f"{entry['best_rows_per_second']:,.0f}",
        f"{entry['rows_per_cpu_second']:,.0f}",
        f"{entry['peak_rss_bytes'] / 2**30:.2f}",
        f"{rate / UPSTREAM['rows_per_second']:.1f}x",
        f"{rate / TARGET:.2f}x",
        " ".join(f"{r['load_average'][0]:.1f}" for r in runs),
    ]
    header = [
        "median rows/s",
        "best rows/s",
        "rows/CPU-s",
        "peak RSS GiB",
        "vs upstream 6.1k",
        "vs target 76k",
        "load avg (1 min)",
    ]
    print(table([row], header))


def compare_readers(sample: Path, rounds: int) -> dict:
    """Every reader of :data:`READERS` on ``sample``, each in a fresh process, in ``rounds`` interleaved rounds (so
    that other load on the machine hits all alike): rates, peak RSS, and whether they give our arrays."""
    readers: dict = {}
    for _ in range(rounds):
        for name, code in READERS.items():
            try:
                info, _, rss = run_child(READER_PRELUDE.format(file=str(sample)) + code)
            except RuntimeError as error:
                if "No module named 'pandas'" not in str(error):
                    raise
                readers[name] = {"skipped": "pandas is not installed"}
                continue
            entry = readers.setdefault(name, {"runs": [], "cpu_runs": [], "peak_rss_bytes": 0})
            entry["runs"].append(info["rows"] / info["seconds"])
            entry["cpu_runs"].append(info["rows"] / info["cpu_seconds"])
            entry["peak_rss_bytes"] = max(entry["peak_rss_bytes"], rss)
            entry["checksum"] = info["checksum"]
    for entry in readers.values():
        if "runs" in entry:
            entry["rows_per_second"] = median(entry["runs"])
            entry["rows_per_cpu_second"] = median(entry["cpu_runs"])
    ours = readers["pyarrow + numpy (ours)"]
    python_loop = readers["python loop per row (upstream)"]["rows_per_second"]
    for entry in readers.values():
        if "rows_per_second" in entry:
            entry["vs_python_loop"] = entry["rows_per_second"] / python_loop
            entry["same_arrays_as_ours"] = entry["checksum"] == ours["checksum"]
    return readers


def print_readers(readers: dict, compare_rows: int, rounds: int) -> None:
    """The reader comparison's table."""
    print(
        f"\nparsing {compare_rows:,} rows into labels, counts and hex keys "
        f"(fresh process each; median of {rounds} interleaved rounds):"
    )
    rows = [
        [
            name,
            f"{r['rows_per_second']:,.0f}",
            f"{r['rows_per_cpu_second']:,.0f}",
            f"{r['vs_python_loop']:.1f}x",
            f"{r['peak_rss_bytes'] / 2**20:,.0f}",
            r["same_arrays_as_ours"],
        ]
        if "rows_per_second" in r
        else [name, "-", "-", "-", "-", r["skipped"]]
        for name, r in readers.items()
    ]
    print(table(rows, ["reader", "rows/s", "rows/CPU-s", "vs python loop", "peak RSS MiB", "same arrays"]))


def full_scale_vocabulary(vocab_sizes: list[int] | None, full: dict | None) -> dict:
    """The hash tables at Criteo-Kaggle's cardinalities against the file's (``vocab_sizes``; 26 x 100k without the
    full run), and, given the ``full`` preprocessing's entry, the projection to the whole Kaggle file."""
    info, _, rss = run_child(VOCABULARY.format(bench_sizes=vocab_sizes or [100_000] * 26))
    info["peak_rss_bytes"] = rss
    kaggle, small = info["full"], info["bench_file"]
    extra = (kaggle["index_us_per_row"] + kaggle["renumber_us_per_row"]) - (
        small["index_us_per_row"] + small["renumber_us_per_row"]
    )
    info["extra_us_per_row_at_full_cardinality"] = extra
    if full is not None:
        projected = FULL_KAGGLE_ROWS * (1 / full["rows_per_second"] + extra * 1e-6)
        info["projected_full_kaggle_seconds"] = projected
        info["projected_full_kaggle_rows_per_second"] = FULL_KAGGLE_ROWS / projected
        info["projected_full_kaggle_peak_rss_bytes"] = (
            full["peak_rss_bytes"] + kaggle["table_bytes"] - small["table_bytes"]
        )
    return info


def print_vocabulary(info: dict) -> None:
    """The vocabulary comparison's table and the projection."""
    print(
        "\nvocabulary at Criteo-Kaggle's real cardinalities vs. this file's "
        "(1M rows of uniformly drawn values, all already known):"
    )
    rows = [
        [
            name,
            f"{r['values']:,}",
            f"{r['build_seconds']:.1f}",
            f"{r['index_us_per_row']:.2f}",
            f"{r['renumber_us_per_row']:.2f}",
            f"{r['table_bytes'] / 2**30:.2f}",
        ]
        for name, r in (("full Kaggle", info["full"]), ("this file", info["bench_file"]))
    ]
    print(table(rows, ["vocabulary", "values", "build s", "index us/row", "renumber us/row", "tables GiB"]))
    print(
        "peak RSS of that process (the full-scale vocabulary and 1M rows of draws): "
        f"{info['peak_rss_bytes'] / 2**30:.2f} GiB"
    )
    if "projected_full_kaggle_seconds" in info:
        print(
            f"projected full Kaggle file: {info['projected_full_kaggle_seconds'] / 60:.1f} min "
            f"({info['projected_full_kaggle_rows_per_second']:,.0f} rows/s; this file's"
            f" median rate plus {info['extra_us_per_row_at_full_cardinality']:.2f} us/row for the bigger tables), "
            f"peak RSS {info['projected_full_kaggle_peak_rss_bytes'] / 2**30:.2f} GiB"
            " (this file's plus the bigger tables)"
        )


def main() -> None:
    args = parse_args()
    path = Path(args.file)
    generated = ensure_file(path, args.rows, args.scale)
    results: dict = {
        "file": {
            "path": str(path),
            "bytes": path.stat().st_size,
            "rows": args.rows,
            "scale": args.scale,
            "generated_seconds": generated,
        },
        "upstream": UPSTREAM,
    }
    vocab_sizes = None
    if "full" not in args.skip:
        results["full"], vocab_sizes = full_preprocessing(path, args.repeat)
        print_full(results["full"], path)
    if "readers" not in args.skip:
        readers = compare_readers(head(path, args.compare_rows), args.rounds)
        results["readers"] = {"rows": args.compare_rows, "results": readers}
        print_readers(readers, args.compare_rows, args.rounds)
    if "vocabulary" not in args.skip:
        results["full_scale_vocabulary"] = full_scale_vocabulary(vocab_sizes, results.get("full"))
        print_vocabulary(results["full_scale_vocabulary"])
    saved = save("preprocess_throughput", results)
    print(f"\nwrote {saved.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
