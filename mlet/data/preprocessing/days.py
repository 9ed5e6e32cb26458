"""Criteo Terabyte: the day files ``day_0`` ... ``day_23``, preprocessed in parallel into one cache.

The download is 24 files in the Kaggle ``train.txt`` layout (label, I1-I13,
C1-C26, tab-separated), plain or ``.gz``. ``--raw-data-file`` names them as
upstream DLRM does, by their prefix (``./input/day``) or by their folder.
Fewer days (a generated set, a partial download) work too: the last day found
is held out. Upstream's split: the days before the last train; the last day's
first half (rounded up) is test, the second half validation.

A build (:func:`build_days`), in bounded memory, never holding a day's rows:

1. each day file is read by its own process (one per two cores, at most one
   per day): its rows are checked, negative training rows
   sub-sampled (``--data-sub-sample-rate``), and its arrays written with
   provisional ids of the day's own vocabulary, which is saved beside them;
2. the day vocabularies are merged in day order into one (training counts
   added up) and numbered by decreasing training count, as for one file;
3. each day's ids are renumbered on the way into the split arrays, written
   at their row offsets by a few threads.

Memory: a reading process holds its day's distinct values (about 20-40 bytes
each); the merge holds every distinct training value. The rows themselves
stream through in blocks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mlet.core.errors import UserError, written_as_folder
from mlet.data.preprocessing.arrays import create_npy, read_rows, write_rows_at
from mlet.data.preprocessing.layouts import LAYOUTS, Layout, check_input_file, detect_layout
from mlet.data.preprocessing.passes import FirstPass, Reading, VocabularyCheck, check_training_rows, read_pass
from mlet.data.preprocessing.splits import TEST, TRAIN, BadRows
from mlet.data.preprocessing.vocabulary import Vocabulary

DAYS = 24
CHUNK_ROWS = 1 << 18
SPLIT_NAMES = ("train", "test", "val")
Log = Callable[[str], None]


def day_prefix(raw: str) -> str:
    """The path prefix of the day files: ``DIR/day`` for a folder (one that exists, or written as one: ``DIR/``,
    ``.``, ``..``), else ``raw`` itself (``./input/day``)."""
    folder = written_as_folder(raw) or Path(raw).is_dir()
    return str(Path(raw) / "day") if folder else raw


def reading_prefix(raw: str) -> str:
    """:func:`day_prefix`, and ``DIR/day`` for ``DIR/day.gz`` unless ``DIR/day.gz_0`` exists: ``data_utils.py
    generate terabyte --out DIR/day.gz`` writes ``DIR/day_0.gz`` ..., so the same path reads them back."""
    prefix = day_prefix(raw)
    if prefix.endswith(".gz") and not any(Path(f"{prefix}_0{ext}").exists() for ext in ("", ".gz")):
        return prefix.removesuffix(".gz")
    return prefix


def day_files(raw: str) -> list[Path]:
    """``PREFIX_0``, ``PREFIX_1``, ... (each plain or ``.gz``; PREFIX: :func:`reading_prefix`), consecutive from
    day 0; a :class:`UserError` naming ``--raw-data-file`` when there are fewer than two or one is missing in
    between."""
    prefix = reading_prefix(raw)
    files: list[Path] = []
    for day in range(DAYS):
        found = [Path(f"{prefix}_{day}{ext}") for ext in ("", ".gz") if Path(f"{prefix}_{day}{ext}").is_file()]
        if not found:
            break
        files.append(found[0])
    later = [
        day for day in range(len(files) + 1, DAYS) if any(Path(f"{prefix}_{day}{e}").exists() for e in ("", ".gz"))
    ]
    if later:
        raise UserError(f"--raw-data-file: {prefix}_{len(files)} is missing, but {prefix}_{later[0]} exists")
    if len(files) < 2:
        raise UserError(
            f"--raw-data-file: Criteo Terabyte needs the day files {prefix}_0, {prefix}_1, ... (plain or .gz; "
            f"found {len(files)}): give their folder or their prefix, e.g. ./input/day"
        )
    for file in files:
        check_input_file(file)
    return files


def day_layout(raw: str) -> Layout:
    """The layout of every day file: Kaggle's train.txt layout (a one-line :class:`UserError` otherwise)."""
    for file in day_files(raw):
        if detect_layout(file, "kaggle").name != "kaggle-tsv":
            raise UserError(f"{file}: not a Criteo Terabyte day file (label, I1-I13, C1-C26, tab-separated)")
    return LAYOUTS["kaggle-tsv"]


@dataclass(frozen=True)
class DayJob:
    """One day file to read in a worker process."""

    day: int
    path: Path
    held_out: bool
    directory: Path
    skip_bad_rows: bool
    sub_sample_rate: float
    seed: int


@dataclass
class DayResult:
    """What reading a day gave (its arrays and vocabulary are files in the build directory)."""

    day: int
    rows: int
    physical: int
    bad: BadRows
    dropped: int


def read_day(job: DayJob) -> DayResult:
    """Pass 1 over one day file (in a worker process): its arrays with the day's provisional ids, and its
    vocabulary (values and training counts by provisional index) in ``dayN.vocab.npz``."""
    split = TEST if job.held_out else TRAIN
    outputs: list[str | None] = [None, None, None]
    outputs[split] = f"day{job.day}"
    reading = Reading(
        lambda block: np.full(len(block.rows), split, np.uint8),
        outputs=(outputs[0], outputs[1], outputs[2]),
        sub_sample_rate=job.sub_sample_rate,
        salt=job.seed * DAYS + job.day,
    )
    first = read_pass(job.path, LAYOUTS["kaggle-tsv"], reading, job.skip_bad_rows, job.directory, progress=False)
    keys, counts = first.vocab.provisional()
    np.savez(job.directory / f"day{job.day}.vocab.npz", *keys, *counts)
    return DayResult(job.day, first.rows[split], first.physical, first.bad, first.dropped)


def read_days(jobs: list[DayJob], workers: int, progress: bool) -> list[DayResult]:
    """:func:`read_day` over the jobs, ``workers`` processes at a time (in this process for one)."""
    bar = tqdm(total=len(jobs), unit=" days", desc="pass 1/2: reading day files", disable=None if progress else True)
    with bar:
        if workers <= 1:
            results = []
            for job in jobs:
                results.append(read_day(job))
                bar.update(1)
            return results
        try:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(read_day, job) for job in jobs]
                for future in futures:
                    future.add_done_callback(lambda _: bar.update(1))
                return [future.result() for future in futures]
        except BrokenProcessPool:
            raise UserError(
                "--raw-data-file: a process reading a day file died (out of memory?); "
                "DLRM_MLET_PREPROCESS_WORKERS=1 reads the days one after another in this process"
            ) from None


def merge_vocabularies(directory: Path, count: int, features: int) -> tuple[Vocabulary, list[list[np.ndarray]]]:
    """The vocabulary of all days (merged in day order, then frozen) and, per day, each feature's map from the
    day's provisional ids to final ids."""
    vocab = Vocabulary(features, count_dtype=np.int64)
    maps = []
    for day in range(count):
        with np.load(directory / f"day{day}.vocab.npz") as saved:
            arrays = [saved[f"arr_{i}"] for i in range(2 * features)]
        maps.append(vocab.merge(arrays[:features], arrays[features:]))
        (directory / f"day{day}.vocab.npz").unlink()
    vocab.freeze()
    return vocab, [[vocab.renumbering[t][m] for t, m in enumerate(day_maps)] for day_maps in maps]


def copy_rows(source: Path, target: Path, lo: int, hi: int, at: int, renumbering: list[np.ndarray] | None) -> None:
    """Rows ``lo:hi`` of one day array into a split array from row ``at``, chunk by chunk (ids renumbered)."""
    for start in range(lo, hi, CHUNK_ROWS):
        block = read_rows(source, start, min(start + CHUNK_ROWS, hi))
        if renumbering is not None:
            for t, table in enumerate(renumbering):
                block[:, t] = table[block[:, t]]
        write_rows_at(target, at + start - lo, block)


def placements(results: list[DayResult]) -> list[tuple[int, int, int, int, int]]:
    """``(day, lo, hi, split, row offset)``: where each day's rows go (the held-out day: halves to test, val)."""
    out, offset = [], 0
    for result in results[:-1]:
        out.append((result.day, 0, result.rows, TRAIN, offset))
        offset += result.rows
    last = results[-1]
    half = math.ceil(last.rows / 2)
    return [*out, (last.day, 0, half, TEST, 0), (last.day, half, last.rows, 2, 0)]


def assemble(directory: Path, results: list[DayResult], maps: list[list[np.ndarray]], dense: int, workers: int) -> None:
    """Write the split arrays from the day arrays (ids renumbered), then remove the day arrays."""
    plan = placements(results)
    sizes = [sum(hi - lo for _, lo, hi, s, _ in plan if s == split) for split in range(3)]
    features = len(maps[0])
    for name, rows in zip(SPLIT_NAMES, sizes):
        create_npy(directory / f"{name}.dense.npy", np.float32, (rows, dense))
        create_npy(directory / f"{name}.cat.npy", np.int32, (rows, features))
        create_npy(directory / f"{name}.label.npy", np.uint8, (rows,))

    def place(item: tuple[int, int, int, int, int]) -> None:
        day, lo, hi, split, at = item
        for part in ("dense", "cat", "label"):
            renumbering = maps[day] if part == "cat" else None
            source, target = directory / f"day{day}.{part}.npy", directory / f"{SPLIT_NAMES[split]}.{part}.npy"
            copy_rows(source, target, lo, hi, at, renumbering)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(place, plan))
    for result in results:
        for part in ("dense", "cat", "label"):
            (directory / f"day{result.day}.{part}.npy").unlink()


WORKERS_VARIABLE = "DLRM_MLET_PREPROCESS_WORKERS"


def default_workers(days: int) -> int:
    """Reading processes: one per two cores (one process keeps about 1.5 cores busy: its reader, decoding and
    vocabulary threads; bench/terabyte_preprocess.py), at most one per day; ``DLRM_MLET_PREPROCESS_WORKERS``
    overrides."""
    configured = os.environ.get(WORKERS_VARIABLE)
    return max(1, min(days, configured_workers(configured) if configured else (os.cpu_count() or 1) // 2))


def configured_workers(value: str) -> int:
    """The reading processes ``DLRM_MLET_PREPROCESS_WORKERS`` asks for: a :class:`UserError` unless a whole number
    of at least 1 (0 or a typo would otherwise pass for one process, or end in a traceback)."""
    try:
        workers = int(value)
    except ValueError:
        workers = 0
    if workers < 1:
        raise UserError(f"{WORKERS_VARIABLE}={value}: expected a whole number of reading processes, 1 or more")
    return workers


def build_days(
    raw: str,
    layout: Layout,
    settings: dict,
    skip: bool,
    directory: Path,
    progress: bool,
    log: Log,
    vocabulary_check: VocabularyCheck | None = None,
):
    """Preprocess the day files of ``raw`` into ``directory``; returns the first-pass result (with the frozen,
    merged vocabulary) and the split's details, as :func:`cache.single_file` does (``vocabulary_check``: see
    :func:`~mlet.data.preprocessing.passes.check_training_rows`)."""
    files = day_files(raw)
    workers = default_workers(len(files))
    note = "" if len(files) == DAYS else f" (the full data set has {DAYS})"
    log(
        f"  {len(files)} day files{note}: days 0-{len(files) - 2} train, day {len(files) - 1} test/val; "
        f"{workers} reading process(es)"
    )
    jobs = [
        DayJob(
            day,
            path,
            day == len(files) - 1,
            directory,
            skip,
            settings.get("sub_sample_rate", 0.0),
            settings.get("split_seed") or 0,
        )
        for day, path in enumerate(files)
    ]
    results = read_days(jobs, workers, progress)
    bad = BadRows()
    for result in results:
        for kind, count in result.bad.counts.items():
            bad.add(f"{kind} in {files[result.day].name}", count, result.bad.first_lines[kind])
    features = len(layout.categorical_features)
    vocab, maps = merge_vocabularies(directory, len(files), features)
    held = placements(results)[-2:]
    rows = [sum(r.rows for r in results[:-1]), held[0][2] - held[0][1], held[1][2] - held[1][1]]
    first = FirstPass(vocab, rows, sum(r.physical for r in results), bad, sum(r.dropped for r in results))
    check_training_rows(first, raw, settings, log, vocabulary_check)
    assemble(directory, results, maps, len(layout.dense_features), workers)
    details = {
        "days": [r.rows for r in results],
        "train_rows_per_day": [r.rows for r in results[:-1]],
        "day_files": [f.name for f in files],
        "held_out_day": len(files) - 1,
        "workers": workers,
    }
    return first, details
