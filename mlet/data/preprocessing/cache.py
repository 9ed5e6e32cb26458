"""Preprocessing: a raw click log -> vocabularies, splits and memory-mappable arrays, cached.

:func:`prepare` is the entry point. It reuses the processed data in the
``--processed-data-file`` directory when that was made from the same raw file
(size and a sampled content fingerprint) with the same settings, and otherwise
(re)builds it, saying why. A build streams the raw file (:mod:`raw_data`) in
bounded memory:

0. plan the split: ``dlrm`` counts the file's lines (bytes only); Avazu's
   ``by-day`` reads the ``hour`` column to find the last day;
1. read the rows once: stop at (or, with ``--skip-bad-rows``, count) bad rows,
   give each categorical value a provisional index and count it over the
   *training* rows (:mod:`vocabulary`), and append each split's arrays;
2. number the values for good (most frequent first, from 1; 0 is shared by
   values not seen in training) and renumber the categorical arrays in place.

Everything is written to a temporary sibling directory that is renamed into
place at the end: a killed run leaves nothing that a later run would trust.

The processed directory holds, per split ``S`` in train/test/val, ``S.dense.npy``
(N x D float32, log(1 + max(x, 0)) of the counts, empty = 0), ``S.cat.npy``
(N x T int32 vocabulary ids) and ``S.label.npy`` (N uint8); ``vocab_keys.npy``
and ``vocab_counts.npy`` (every feature's values in id order, concatenated;
the key of a hex category is its 32-bit value, an empty field is
``-2**63 + 1``); ``meta.json`` (settings, source, row counts, vocabulary sizes,
bad rows, timings).

``--cat-min-count`` and ``--max-ind-range`` are not preprocessing settings:
they apply to batches as they are read (see :mod:`vocabulary` and docs/data.md).
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike
from tqdm import tqdm

from mlet.core.errors import UserError
from mlet.data.preprocessing.raw_data import (
    COLUMNS,
    ERROR_NAMES,
    SKIP_HINT,
    Layout,
    ParsedBlock,
    count_lines,
    detect_layout,
    is_gzip,
    read_blocks,
    splitmix64,
)
from mlet.data.preprocessing.vocabulary import IdLimits, Vocabulary

FORMAT = "dlrm-mlet-processed"
VERSION = 1
SPLITS = ("train", "test", "val")
TRAIN, TEST, VAL = 0, 1, 2
SPLIT_CHOICES = {"kaggle": ("dlrm", "random-811"), "avazu": ("random-811", "by-day")}
DEFAULT_SPLIT = {"kaggle": "dlrm", "avazu": "random-811"}
DENSE_INPUTS = {"kaggle": 13, "avazu": 1}  # Avazu: one constant 1.0 (see Processed.split)
Log = Callable[[str], None]


# -- splits ----------------------------------------------------------------------


def dense_transform(counts: np.ndarray) -> np.ndarray:
    """Upstream DLRM's dense rule: negatives and missing (-1) to 0, then log(x + 1)."""
    return np.log1p(np.maximum(counts, 0)).astype(np.float32)


@dataclass
class SplitPlan:
    """Which split each row goes to.

    * ``dlrm`` (upstream DLRM's Kaggle split): the ``total`` data rows are cut
      into 7 "days" by line count (the first ``total % 7`` days one row longer);
      days 1-6 train; day 7's first half (rounded up) test, second half validation.
    * ``random-811``: each row independently, by a hash of its row index and
      ``seed``: train 80%, test 10%, validation 10%.
    * ``by-day`` (Avazu): rows of the last date in the file are held out, the
      first half (rounded up, in file order) test, the rest validation.
    """

    kind: str
    seed: int = 0
    total: int = 0
    last_date: int = -1
    held_out: int = 0
    details: dict = field(default_factory=dict)

    def assigner(self) -> Callable[[ParsedBlock], np.ndarray]:
        """A function giving each parsed row of successive blocks its split (0 train, 1 test, 2 val)."""
        if self.kind == "dlrm":
            per_day, extra = divmod(self.total, 7)
            days = [per_day + (d < extra) for d in range(7)]
            train_end = sum(days[:6])
            test_end = train_end + math.ceil(days[6] / 2)
            self.details = {"days": days, "train_end": train_end, "test_end": test_end}
            return lambda block: np.searchsorted([train_end, test_end], block.rows, side="right").astype(np.uint8)
        if self.kind == "random-811":
            salt = np.uint64((self.seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
            buckets = np.array([TRAIN] * 8 + [TEST, VAL], np.uint8)
            return lambda block: buckets[splitmix64(block.rows.astype(np.uint64) ^ salt) % np.uint64(10)]
        test_rows, seen = math.ceil(self.held_out / 2), 0
        self.details = {"last_date": self.last_date, "held_out": self.held_out}

        def by_day(block: ParsedBlock) -> np.ndarray:
            nonlocal seen
            held = block.dates == self.last_date
            position = seen + np.cumsum(held) - 1
            seen += int(held.sum())
            return np.where(held, np.where(position < test_rows, TEST, VAL), TRAIN).astype(np.uint8)

        return by_day


def plan_split(path: Path, layout: Layout, kind: str, seed: int, progress: bool, log: Log) -> SplitPlan:
    """The :class:`SplitPlan`, after whatever pre-scan the split needs."""
    if kind == "random-811":
        return SplitPlan(kind, seed=seed)
    start = time.perf_counter()
    if kind == "dlrm":
        size = None if is_gzip(path) else path.stat().st_size
        with tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc="counting lines",
            disable=None if progress else True,
            leave=False,
        ) as bar:
            total = count_lines(path, progress=bar) - layout.header_lines
        log(f"  counted {total:,} rows in {time.perf_counter() - start:.1f} s")
        return SplitPlan(kind, total=total)
    dates: dict[int, int] = {}
    for block in read_blocks(path, layout, columns=["hour"]):
        values, counts = np.unique(block.dates[block.good], return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            dates[v] = dates.get(v, 0) + c
    if not dates:
        raise UserError(f"{path}: no row has a valid hour, cannot split by day")
    last = max(dates)
    log(f"  {len(dates)} days; last day {last} ({dates[last]:,} rows) held out; {time.perf_counter() - start:.1f} s")
    return SplitPlan(kind, last_date=last, held_out=dates[last])


# -- bad rows --------------------------------------------------------------------


@dataclass
class BadRows:
    """Bad rows skipped under ``--skip-bad-rows``: counts by kind and the first lines of each."""

    counts: dict[str, int] = field(default_factory=dict)
    first_lines: dict[str, list[int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """All bad rows."""
        return sum(self.counts.values())

    def add(self, kind: str, count: int, lines: list[int]) -> None:
        """Count ``count`` rows of one kind, the first of them at the given (1-based) lines."""
        if count:
            self.counts[kind] = self.counts.get(kind, 0) + count
            self.first_lines[kind] = sorted(self.first_lines.get(kind, []) + lines)[:5]

    def summary(self) -> str:
        """One line: how many of each kind, and where the first was."""
        parts = [f"{n:,} {kind} (first at line {self.first_lines[kind][0]})" for kind, n in sorted(self.counts.items())]
        return f"skipped {self.total:,} bad rows: " + ", ".join(parts)

    def to_dict(self) -> dict:
        """For the metadata."""
        return {
            "total": self.total,
            "by_kind": dict(sorted(self.counts.items())),
            "first_lines": dict(sorted(self.first_lines.items())),
        }


def check_rows(block: ParsedBlock, path: Path, layout: Layout, skip: bool, bad: BadRows | None) -> np.ndarray:
    """The mask of good parsed rows; a bad row stops with ``FILE:LINE: what is wrong`` unless ``skip``."""
    errors = np.flatnonzero(~block.good)
    if not len(errors) and not block.wrong_width:
        return block.good
    line = layout.header_lines + 1  # 1-based line of data row 0
    if not skip:
        first_value = (int(block.rows[errors[0]]), block.error_message(int(errors[0]), layout)) if len(errors) else None
        first_width = (
            (block.wrong_width[0][0], f"{block.wrong_width[0][1]} fields, expected {layout.expected()}")
            if block.wrong_width
            else None
        )
        row, what = min(x for x in (first_value, first_width) if x is not None)
        raise UserError(f"{path}:{row + line}: {what} {SKIP_HINT}")
    if bad is not None:
        bad.add(ERROR_NAMES[COLUMNS], len(block.wrong_width), [r + line for r, _ in block.wrong_width[:5]])
        for kind in np.unique(block.errors[errors]).tolist():
            rows = block.rows[errors[block.errors[errors] == kind]]
            bad.add(ERROR_NAMES[kind], len(rows), (rows[:5] + line).tolist())
    return block.good


# -- writing -----------------------------------------------------------------------


class NpyWriter:
    """Appends rows to an ``.npy`` file whose row count is known only at the end (the header is patched then)."""

    def __init__(self, path: Path, dtype: DTypeLike, width: int | None) -> None:
        self.path, self.dtype, self.width, self.rows = path, np.dtype(dtype), width, 0
        self.file = open(path, "wb")  # noqa: SIM115 (open across many writes; closed by close())
        self.data_offset = self._write_header()

    def _write_header(self) -> int:
        shape = (self.rows,) if self.width is None else (self.rows, self.width)
        self.file.seek(0)
        np.lib.format.write_array_header_1_0(
            self.file, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        )
        return self.file.tell()

    def write(self, block: np.ndarray) -> None:
        """Append rows."""
        self.file.write(np.ascontiguousarray(block, dtype=self.dtype).data)
        self.rows += len(block)

    def close(self) -> None:
        """Write the final shape into the header (same length: numpy pads headers to 64 bytes) and close."""
        end = self.file.tell()
        if self._write_header() != self.data_offset:
            raise RuntimeError(f"{self.path}: the .npy header changed length")
        self.file.seek(end)
        self.file.close()


def renumber_file(path: Path, renumbering: list[np.ndarray], chunk_rows: int = 1 << 18) -> None:
    """Map column ``t`` of an N x T int32 ``.npy`` file through ``renumbering[t]``, in place, chunk by chunk.

    Plain reads and writes rather than a memory map, so that the process does
    not hold the file's pages (peak RSS stays at one chunk).
    """
    with open(path, "r+b") as f:
        np.lib.format.read_magic(f)
        (rows, width), _, dtype = np.lib.format.read_array_header_1_0(f)
        start = f.tell()
        row_bytes = width * dtype.itemsize
        for lo in range(0, rows, chunk_rows):
            n = min(chunk_rows, rows - lo)
            f.seek(start + lo * row_bytes)
            block = np.fromfile(f, dtype, n * width).reshape(n, width)
            for t, table in enumerate(renumbering):
                block[:, t] = table[block[:, t]]
            f.seek(start + lo * row_bytes)
            block.tofile(f)


# -- the two passes ------------------------------------------------------------------


def progress_bar(total: int | None, desc: str, enabled: bool) -> tqdm:
    """A rows progress bar with a rows/s rate (off when not on a terminal)."""
    return tqdm(
        total=total,
        unit=" rows",
        unit_scale=True,
        desc=desc,
        disable=None if enabled else True,
        leave=False,
        dynamic_ncols=True,
    )


@dataclass
class FirstPass:
    """What reading the raw file gave: the vocabulary, good rows per split, rows read, bad rows."""

    vocab: Vocabulary
    rows: list[int]
    physical: int
    bad: BadRows


def read_pass(path: Path, layout: Layout, plan: SplitPlan, skip: bool, directory: Path, progress: bool) -> FirstPass:
    """Pass 1, the only one over the text: check rows, index and count values, write each split's arrays.

    The categorical arrays hold provisional indices until :func:`renumber_pass`.
    """
    features = len(layout.categorical_features)
    writers = [
        [
            NpyWriter(directory / f"{name}.dense.npy", np.float32, len(layout.dense_features)),
            NpyWriter(directory / f"{name}.cat.npy", np.int32, features),
            NpyWriter(directory / f"{name}.label.npy", np.uint8, None),
        ]
        for name in SPLITS
    ]
    vocab, physical, bad = Vocabulary(features), 0, BadRows()
    assign = plan.assigner()
    try:
        with progress_bar(plan.total or None, "pass 1/2: reading", progress) as bar:
            for block in read_blocks(path, layout):
                good = check_rows(block, path, layout, skip, bad)
                split = assign(block)[good]
                ids = vocab.index(block.keys[:, good], counted=split == TRAIN)
                dense, labels = dense_transform(block.counts[good]), block.labels[good]
                for s, (dense_out, cat_out, label_out) in enumerate(writers):
                    mine = split == s
                    dense_out.write(dense[mine])
                    cat_out.write(ids[mine])
                    label_out.write(labels[mine])
                physical += len(block.rows) + len(block.wrong_width)
                bar.update(len(block.rows) + len(block.wrong_width))
    except BaseException:
        for group in writers:
            for writer in group:
                writer.file.close()  # the files go with the temporary directory
        raise
    for group in writers:
        for writer in group:
            writer.close()
    if plan.kind == "dlrm" and physical != plan.total:
        raise UserError(
            f"{path}: read {physical:,} rows but counted {plan.total:,} lines; "
            "did the file change, or does it use CR-only line ends?"
        )
    return FirstPass(vocab, [w[2].rows for w in writers], physical, bad)


def renumber_pass(first: FirstPass, directory: Path, progress: bool) -> None:
    """Pass 2: fix the vocabulary and renumber the categorical arrays from provisional indices to ids."""
    first.vocab.freeze()
    with progress_bar(sum(first.rows), "pass 2/2: renumbering", progress) as bar:
        for name, rows in zip(SPLITS, first.rows):
            renumber_file(directory / f"{name}.cat.npy", first.vocab.renumbering)
            bar.update(rows)


# -- the cache ------------------------------------------------------------------------


def fingerprint(path: Path, samples: int = 16, chunk: int = 1 << 16) -> str:
    """BLAKE2b of the size, first and last MiB and ``samples`` evenly spaced chunks: fast on 11 GB, sensitive to
    any re-download or edit of the ends."""
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as f:
        for start, length in [
            (0, 1 << 20),
            *((size * i // (samples + 1), chunk) for i in range(1, samples + 1)),
            (max(0, size - (1 << 20)), 1 << 20),
        ]:
            f.seek(start)
            digest.update(f.read(length))
    return digest.hexdigest()


def source_info(path: Path) -> dict:
    """What identifies the raw file."""
    return {"path": str(path.resolve()), "size": path.stat().st_size, "fingerprint": fingerprint(path)}


def cache_settings(data_set: str, split: str, split_seed: int) -> dict:
    """The settings the processed data depend on."""
    return {"data_set": data_set, "data_split": split, "split_seed": split_seed if split == "random-811" else None}


def read_meta(directory: Path) -> dict | None:
    """The metadata of a complete processed directory, else None."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    required = ("version", "settings", "source", "rows", "vocabulary_sizes", "bad_rows")
    return (
        meta if isinstance(meta, dict) and meta.get("format") == FORMAT and all(k in meta for k in required) else None
    )


def why_rebuild(meta: dict | None, directory: Path, settings: dict, source: dict, skip: bool) -> str | None:
    """Why the processed data in ``directory`` cannot be used (None: it can)."""
    if meta is None:
        return (
            "no processed data there yet"
            if not directory.exists()
            else "no complete processed data there (no valid meta.json)"
        )
    if meta.get("version") != VERSION:
        return f"it was made by format version {meta.get('version')}, this is version {VERSION}"
    if meta["settings"] != settings:
        changed = [f"{k} {meta['settings'].get(k)} -> {v}" for k, v in settings.items() if meta["settings"].get(k) != v]
        return "it was made with other settings (" + ", ".join(changed) + ")"
    old = meta["source"]
    if old["size"] != source["size"]:
        return f"it was made from another raw file ({old['path']}, {old['size']:,} bytes; now {source['size']:,} bytes)"
    if old["fingerprint"] != source["fingerprint"]:
        return f"it was made from another raw file ({old['path']}: same size, different content)"
    if meta["bad_rows"]["total"] and not skip:
        return f"it skipped {meta['bad_rows']['total']:,} bad rows (--skip-bad-rows), which is off now"
    return damaged_file(directory, meta)


def damaged_file(directory: Path, meta: dict) -> str | None:
    """The first array of a processed directory that is missing, unreadable (e.g. truncated) or not as long as
    ``meta`` says."""
    expected = {f"{split}.{part}.npy": meta["rows"][split] for split in SPLITS for part in ("dense", "cat", "label")}
    expected["vocab_counts.npy"] = expected["vocab_keys.npy"] = sum(meta["vocabulary_sizes"])
    for name, rows in expected.items():
        try:
            found = np.load(directory / name, mmap_mode="r").shape[0]
        except (OSError, ValueError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            return f"{name} is missing or damaged ({reason})"
        if found != rows:
            return f"{name} holds {found:,} rows, meta.json says {rows:,}"
    return None


OWN_FILES = {
    "meta.json",
    "vocab_keys.npy",
    "vocab_counts.npy",
    *(f"{s}.{part}.npy" for s in SPLITS for part in ("dense", "cat", "label")),
}


def check_target(directory: Path, meta: dict | None) -> None:
    """Refuse to replace anything but processed data (complete or not) or an empty directory."""
    if directory.exists() and not directory.is_dir():
        raise UserError(f"--processed-data-file: {directory} is a file; give a directory for the processed data")
    if directory.is_dir() and meta is None and any(p.name not in OWN_FILES for p in directory.iterdir()):
        raise UserError(
            f"--processed-data-file: {directory} is not empty and holds no processed data (meta.json); "
            "give a new or empty directory"
        )


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporary build directories left by killed runs (their process is gone)."""
    for tmp in directory.parent.glob(f".{directory.name}.tmp-*"):
        try:
            os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass


def install(tmp: Path, directory: Path) -> None:
    """Move the finished build into place, replacing an old processed directory."""
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def build(
    raw: Path, directory: Path, layout: Layout, settings: dict, source: dict, skip: bool, progress: bool, log: Log
) -> dict:
    """Preprocess ``raw`` into ``directory`` (through a temporary sibling); returns the metadata."""
    start = time.perf_counter()
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(directory)
        tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as error:
        raise UserError(f"--processed-data-file: cannot create {directory}: {error.strerror}") from None
    try:
        plan = plan_split(raw, layout, settings["data_split"], settings["split_seed"] or 0, progress, log)
        first = read_pass(raw, layout, plan, skip, tmp, progress)
        vocab, rows, physical, bad = first.vocab, first.rows, first.physical, first.bad
        read = time.perf_counter()
        log(f"  pass 1/2: {physical:,} rows in {read - start:.1f} s ({physical / (read - start):,.0f} rows/s)")
        if bad.total:
            log(f"  {bad.summary()}")
        if not rows[0]:
            raise UserError(
                f"{raw}: no training rows in the {settings['data_split']} split "
                f"({physical:,} rows read, {bad.total:,} bad)"
            )
        renumber_pass(first, tmp, progress)
        np.save(tmp / "vocab_keys.npy", np.concatenate(vocab.keys))
        np.save(tmp / "vocab_counts.npy", np.concatenate(vocab.counts))
        seconds = time.perf_counter() - start
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "settings": settings,
            "source": {**source, "layout": layout.name},
            "features": {"dense": list(layout.dense_features), "categorical": list(layout.categorical_features)},
            "rows": dict(zip(SPLITS, rows)),
            "physical_rows": physical,
            "split": plan.details,
            "vocabulary_sizes": vocab.sizes,
            "bad_rows": bad.to_dict(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "seconds": round(seconds, 2),
            "rows_per_second": round(physical / seconds),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        install(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(
        f"  done: {physical:,} rows in {seconds:.1f} s ({physical / seconds:,.0f} rows/s); "
        f"train {rows[0]:,}, test {rows[1]:,}, val {rows[2]:,}"
    )
    return meta


# -- loading ------------------------------------------------------------------------------


@dataclass
class Processed:
    """A processed data directory, opened."""

    directory: Path
    meta: dict

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(dense, cat, labels)`` of a split as read-only memory maps.

        Avazu has no dense features; its dense input is one constant 1.0 per
        row (a broadcast view, no file), so that DLRM's bottom MLP, fed
        ``--arch-mlp-bot=1-...``, learns a vector that joins the interaction.
        """
        arrays = [np.load(self.directory / f"{name}.{part}.npy", mmap_mode="r") for part in ("dense", "cat", "label")]
        if arrays[0].shape[1] == 0:
            arrays[0] = np.broadcast_to(np.ones((1, 1), np.float32), (len(arrays[2]), 1))
        return arrays[0], arrays[1], arrays[2]

    def vocabulary_counts(self) -> list[np.ndarray]:
        """Each feature's training counts in id order."""
        counts = np.load(self.directory / "vocab_counts.npy", mmap_mode="r")
        bounds = np.cumsum([0, *self.meta["vocabulary_sizes"]])
        return [counts[a:b] for a, b in itertools.pairwise(bounds)]

    def limits(self, min_count: int, max_ind_range: int) -> IdLimits:
        """The id limits (and so table sizes) for ``--cat-min-count`` and ``--max-ind-range``."""
        return IdLimits.from_counts(self.vocabulary_counts(), min_count, max_ind_range)

    @property
    def dense_inputs(self) -> int:
        """Width of the dense input (the bottom MLP's first width)."""
        return DENSE_INPUTS[self.meta["settings"]["data_set"]]


def prepare(
    raw: str | None,
    processed: str | None,
    data_set: str,
    split: str,
    split_seed: int = 0,
    skip_bad_rows: bool = False,
    progress: bool = True,
    log: Log = tqdm.write,
) -> Processed:
    """The processed data for these settings: reused when valid, else built from ``raw``."""
    if not raw and not processed:
        raise UserError("--raw-data-file: needed (or the --processed-data-file of data processed before)")
    directory = Path(processed) if processed else Path(f"{raw}.processed")
    settings = cache_settings(data_set, split, split_seed)
    meta = read_meta(directory)
    if not raw:
        if meta is None:
            raise UserError(
                f"--processed-data-file: {directory} holds no processed data; give --raw-data-file to make it"
            )
        if meta["settings"] != settings or meta.get("version") != VERSION:
            raise UserError(
                f"--processed-data-file: {directory} was made with {meta['settings']} (version {meta.get('version')}); "
                "give --raw-data-file to rebuild it"
            )
        if (damage := damaged_file(directory, meta)) is not None:
            raise UserError(f"--processed-data-file: {directory}: {damage}; give --raw-data-file to rebuild it")
        return Processed(directory, meta)
    layout = detect_layout(raw, data_set)
    source = source_info(Path(raw))
    reason = why_rebuild(meta, directory, settings, source, skip_bad_rows)
    if reason is None and meta is not None:
        skipped = (
            f"; {meta['bad_rows']['total']:,} bad rows were skipped making it" if meta["bad_rows"]["total"] else ""
        )
        log(f"using processed data in {directory} (made {meta.get('created')} from {meta['source']['path']}{skipped})")
        return Processed(directory, meta)
    check_target(directory, meta)
    log(f"preprocessing {raw} into {directory}: {reason}")
    return Processed(directory, build(Path(raw), directory, layout, settings, source, skip_bad_rows, progress, log))
