"""Preprocessing: a raw click log -> vocabularies, splits and memory-mappable arrays, cached.

:func:`prepare` is the entry point. It reuses the processed data in the
``--processed-data-file`` directory when that was made from the same raw file
(size and a sampled content fingerprint) with the same settings, and otherwise
(re)builds it, saying why. A build streams the raw file (:mod:`raw_data`) in
bounded memory:

0. plan the split: ``dlrm`` counts the file's lines (bytes only); Avazu's
   ``by-day`` reads the ``hour`` column to find the last day;
1. read every row, stop at (or, with ``--skip-bad-rows``, count) bad rows, and
   count each feature's values over the *training* rows;
2. read again, number the values (most frequent first, 1-based; 0 is shared by
   values not in the vocabulary) and write each split's arrays.

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
since ids are numbered by decreasing frequency, values seen fewer than N times
are exactly the ids above a per-feature cut-off, so both are applied to each
batch as it is read (:class:`IdLimits`), and one cache serves every setting.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_utils import dense_transform
from errors import UserError
from raw_data import COLUMNS, ERROR_NAMES, SKIP_HINT, Layout, ParsedBlock, count_lines, detect_layout, is_gzip, read_blocks, splitmix64

FORMAT = "dlrm-mlet-processed"
VERSION = 1
SPLITS = ("train", "test", "val")
TRAIN, TEST, VAL = 0, 1, 2
SPLIT_CHOICES = {"kaggle": ("dlrm", "random-811"), "avazu": ("random-811", "by-day")}
DEFAULT_SPLIT = {"kaggle": "dlrm", "avazu": "random-811"}
DENSE_INPUTS = {"kaggle": 13, "avazu": 1}  # Avazu: one constant 1.0 (see load_split)
Log = Callable[[str], None]


# -- vocabulary ------------------------------------------------------------------


class KeyTable:
    """An int64 -> int64 hash table with vectorised (numpy) lookups and inserts.

    Open addressing with linear probing and Fibonacci hashing; it doubles when
    more than :attr:`MAX_LOAD` of the slots are used. Looking up a block of
    keys costs one or two random memory accesses per key, where a binary search
    in a sorted array of 10M keys costs about 23.
    """

    FREE = np.int64(np.iinfo(np.int64).min)
    MAX_LOAD = 0.6
    _MUL = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, capacity: int = 1024) -> None:
        self.count = 0
        self._allocate(max(10, math.ceil(math.log2(capacity / self.MAX_LOAD))))

    def _allocate(self, bits: int) -> None:
        self.bits, self.mask = bits, (1 << bits) - 1
        self.keys = np.full(1 << bits, self.FREE, np.int64)
        self.values = np.zeros(1 << bits, np.int64)

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return ((keys.view(np.uint64) * self._MUL) >> np.uint64(64 - self.bits)).astype(np.int64)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Slot of each key, -1 where absent."""
        result = np.full(len(keys), -1, np.int64)
        index, slots, want = np.arange(len(keys)), self._home(keys), keys
        while index.size:
            found = self.keys[slots]
            hit = found == want
            result[index[hit]] = slots[hit]
            more = ~hit & (found != self.FREE)
            index, slots, want = index[more], (slots[more] + 1) & self.mask, want[more]
        return result

    def _insert_new(self, keys: np.ndarray) -> np.ndarray:
        """Insert distinct keys that are not in the table yet; returns their slots."""
        if self.count + len(keys) > self.MAX_LOAD * len(self.keys):
            self._grow(self.count + len(keys))
        result = np.empty(len(keys), np.int64)
        index, slots, want = np.arange(len(keys)), self._home(keys), keys
        while index.size:
            free = self.keys[slots] == self.FREE
            self.keys[slots[free]] = want[free]  # keys aimed at one slot: one wins, the others probe on
            won = np.zeros(len(index), bool)
            won[free] = self.keys[slots[free]] == want[free]
            result[index[won]] = slots[won]
            index, slots, want = index[~won], (slots[~won] + 1) & self.mask, want[~won]
        self.count += len(keys)
        return result

    def _grow(self, needed: int) -> None:
        used = np.flatnonzero(self.keys != self.FREE)
        keys, values = self.keys[used], self.values[used]
        self.count = 0
        self._allocate(max(self.bits + 1, math.ceil(math.log2(needed / self.MAX_LOAD))))
        slots = self._insert_new(keys)
        self.values[slots] = values

    def add(self, keys: np.ndarray, amounts: np.ndarray) -> None:
        """``value[key] += amount`` for distinct ``keys`` (absent keys start at 0)."""
        slots = self.find(keys)
        known = slots >= 0
        self.values[slots[known]] += amounts[known]
        new = ~known
        new_slots = self._insert_new(keys[new])  # may grow the table: index self.values after
        self.values[new_slots] = amounts[new]

    def get(self, keys: np.ndarray, default: int = 0) -> np.ndarray:
        """``value[key]`` for each key, ``default`` where absent."""
        slots = self.find(keys)
        return np.where(slots >= 0, self.values[slots], default)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All keys and their values, in slot order."""
        used = np.flatnonzero(self.keys != self.FREE)
        return self.keys[used], self.values[used]

    def renumber_by_value(self) -> tuple[np.ndarray, np.ndarray]:
        """Replace each value by the key's rank (1-based) in decreasing value, ties by key.

        Returns the keys in rank order and their former values.
        """
        used = np.flatnonzero(self.keys != self.FREE)
        keys, values = self.keys[used], self.values[used]
        order = np.lexsort((keys, -values))
        self.values[used[order]] = np.arange(1, len(order) + 1)
        return keys[order], values[order]


class Vocabulary:
    """Per-feature value counts over the training rows, then ids by decreasing count."""

    def __init__(self, num_features: int) -> None:
        self.tables = [KeyTable() for _ in range(num_features)]
        self.keys: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []

    def count(self, keys: np.ndarray) -> None:
        """Count the values of a block of training rows (``keys``: T x n)."""
        for table, column in zip(self.tables, keys):
            values, counts = np.unique(column, return_counts=True)
            table.add(values, counts)

    def freeze(self) -> None:
        """Number every feature's values: id 1 is the most frequent; 0 is left for values not in the vocabulary."""
        for table in self.tables:
            keys, counts = table.renumber_by_value()
            self.keys.append(keys)
            self.counts.append(counts)

    def encode(self, keys: np.ndarray) -> np.ndarray:
        """Ids (n x T int32) of a block's keys (T x n); 0 for values not seen in training."""
        ids = np.empty(keys.shape[::-1], np.int32)
        for t, (table, column) in enumerate(zip(self.tables, keys)):
            ids[:, t] = table.get(column, 0)
        return ids

    @property
    def sizes(self) -> list[int]:
        """Distinct training values per feature."""
        return [len(k) for k in self.keys]


@dataclass(frozen=True)
class IdLimits:
    """``--cat-min-count`` and ``--max-ind-range`` applied to vocabulary ids, batch by batch.

    ``keep[t]``: ids ``1..keep[t]`` of feature ``t`` (values seen at least
    min-count times) are kept, larger ids join the shared index 0 of rare and
    unseen values. Then, with ``modulus`` R > 0, ids become ``id mod R``:
    upstream DLRM's ``--max-ind-range`` (applied, as there, to the relabelled
    ids), which caps every table at R rows.
    """

    keep: np.ndarray
    modulus: int = 0

    @classmethod
    def from_counts(cls, counts: list[np.ndarray], min_count: int, modulus: int) -> IdLimits:
        """Limits for the per-feature counts in id (decreasing) order."""
        keep = np.array([int(np.searchsorted(-c, -min_count, side="right")) for c in counts], np.int32)
        return cls(keep, modulus)

    @property
    def table_sizes(self) -> list[int]:
        """Rows of each embedding table."""
        sizes = [int(k) + 1 for k in self.keep]
        return [min(n, self.modulus) for n in sizes] if self.modulus else sizes

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """Limited ids of a batch (B x T)."""
        out = np.where(ids > self.keep, 0, ids)
        if self.modulus:
            out %= self.modulus
        return out


# -- splits ----------------------------------------------------------------------


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
        with tqdm(total=size, unit="B", unit_scale=True, desc="counting lines", disable=None if progress else True, leave=False) as bar:
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
        return {"total": self.total, "by_kind": dict(sorted(self.counts.items())), "first_lines": dict(sorted(self.first_lines.items()))}


def check_rows(block: ParsedBlock, path: Path, layout: Layout, skip: bool, bad: BadRows | None) -> np.ndarray:
    """The mask of good parsed rows; a bad row stops with ``FILE:LINE: what is wrong`` unless ``skip``."""
    errors = np.flatnonzero(~block.good)
    if not len(errors) and not block.wrong_width:
        return block.good
    line = layout.header_lines + 1  # 1-based line of data row 0
    if not skip:
        first_value = (int(block.rows[errors[0]]), block.error_message(int(errors[0]), layout)) if len(errors) else None
        first_width = (block.wrong_width[0][0], f"{block.wrong_width[0][1]} fields, expected {layout.expected()}") if block.wrong_width else None
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
    """Writes an ``.npy`` file of known shape block by block, without holding it in memory."""

    def __init__(self, path: Path, dtype: np.dtype, rows: int, width: int | None) -> None:
        self.path, self.dtype, self.rows, self.written = path, np.dtype(dtype), rows, 0
        shape = (rows,) if width is None else (rows, width)
        self.file = open(path, "wb")  # noqa: SIM115 (open across many writes; closed by close())
        np.lib.format.write_array_header_1_0(self.file, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape})

    def write(self, block: np.ndarray) -> None:
        """Append rows."""
        self.file.write(np.ascontiguousarray(block, dtype=self.dtype).data)
        self.written += len(block)

    def close(self) -> None:
        """Finish; the row count must be the announced one."""
        self.file.close()
        if self.written != self.rows:
            raise UserError(f"{self.path}: wrote {self.written:,} rows, expected {self.rows:,}; did the raw file change during preprocessing?")


def split_writers(directory: Path, rows: list[int], dense: int, features: int) -> list[list[NpyWriter]]:
    """``[dense, cat, label]`` writers of each split."""
    return [
        [
            NpyWriter(directory / f"{name}.dense.npy", np.float32, n, dense),
            NpyWriter(directory / f"{name}.cat.npy", np.int32, n, features),
            NpyWriter(directory / f"{name}.label.npy", np.uint8, n, None),
        ]
        for name, n in zip(SPLITS, rows)
    ]


# -- the two passes ------------------------------------------------------------------


def progress_bar(total: int | None, desc: str, enabled: bool) -> tqdm:
    """A rows progress bar with a rows/s rate (off when not on a terminal)."""
    return tqdm(total=total, unit=" rows", unit_scale=True, desc=desc, disable=None if enabled else True, leave=False, dynamic_ncols=True)


def blocks_with_progress(path: Path, layout: Layout, bar: tqdm) -> Iterator[ParsedBlock]:
    """:func:`read_blocks`, advancing ``bar`` by each block's rows."""
    for block in read_blocks(path, layout):
        yield block
        bar.update(len(block.rows) + len(block.wrong_width))


def count_pass(path: Path, layout: Layout, plan: SplitPlan, skip: bool, progress: bool) -> tuple[Vocabulary, list[int], int, BadRows]:
    """Pass 1: validate rows, count training values; returns the vocabulary, good rows per split, physical rows, bad rows."""
    vocab, rows, physical, bad = Vocabulary(len(layout.categorical_features)), np.zeros(3, np.int64), 0, BadRows()
    assign = plan.assigner()
    with progress_bar(plan.total or None, "pass 1/2: vocabulary", progress) as bar:
        for block in blocks_with_progress(path, layout, bar):
            good = check_rows(block, path, layout, skip, bad)
            split = assign(block)
            vocab.count(block.keys[:, good & (split == TRAIN)])
            rows += np.bincount(split[good], minlength=3)
            physical += len(block.rows) + len(block.wrong_width)
    if plan.kind == "dlrm" and physical != plan.total:
        raise UserError(f"{path}: read {physical:,} rows but counted {plan.total:,} lines; did the file change, or does it use CR-only line ends?")
    vocab.freeze()
    return vocab, rows.tolist(), physical, bad


def encode_pass(path: Path, layout: Layout, plan: SplitPlan, vocab: Vocabulary, rows: list[int], directory: Path, progress: bool) -> None:
    """Pass 2: encode the good rows and write each split's arrays."""
    writers = split_writers(directory, rows, len(layout.dense_features), len(layout.categorical_features))
    assign = plan.assigner()
    with progress_bar(sum(rows), "pass 2/2: encoding", progress) as bar:
        for block in blocks_with_progress(path, layout, bar):
            good = block.good
            split = assign(block)[good]
            ids = vocab.encode(block.keys[:, good])
            dense = dense_transform(block.counts[good])
            labels = block.labels[good]
            for s, (dense_out, cat_out, label_out) in enumerate(writers):
                mine = split == s
                dense_out.write(dense[mine])
                cat_out.write(ids[mine])
                label_out.write(labels[mine])
    for group in writers:
        for writer in group:
            writer.close()


# -- the cache ------------------------------------------------------------------------


def fingerprint(path: Path, samples: int = 16, chunk: int = 1 << 16) -> str:
    """BLAKE2b of the size, first and last MiB and ``samples`` evenly spaced chunks: fast on 11 GB, sensitive to any re-download or edit of the ends."""
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as f:
        for start, length in [(0, 1 << 20), *((size * i // (samples + 1), chunk) for i in range(1, samples + 1)), (max(0, size - (1 << 20)), 1 << 20)]:
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
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT and all(k in meta for k in required) else None


def why_rebuild(meta: dict | None, directory: Path, settings: dict, source: dict, skip: bool) -> str | None:
    """Why the processed data in ``directory`` cannot be used (None: it can)."""
    if meta is None:
        return "no processed data there yet" if not directory.exists() else "no complete processed data there (no valid meta.json)"
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
    return None


OWN_FILES = {"meta.json", "vocab_keys.npy", "vocab_counts.npy", *(f"{s}.{part}.npy" for s in SPLITS for part in ("dense", "cat", "label"))}


def check_target(directory: Path, meta: dict | None) -> None:
    """Refuse to replace anything but processed data (complete or not) or an empty directory."""
    if directory.exists() and not directory.is_dir():
        raise UserError(f"--processed-data-file: {directory} is a file; give a directory for the processed data")
    if directory.is_dir() and meta is None and any(p.name not in OWN_FILES for p in directory.iterdir()):
        raise UserError(f"--processed-data-file: {directory} is not empty and holds no processed data (meta.json); give a new or empty directory")


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


def build(raw: Path, directory: Path, layout: Layout, settings: dict, source: dict, skip: bool, progress: bool, log: Log) -> dict:
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
        vocab, rows, physical, bad = count_pass(raw, layout, plan, skip, progress)
        counted = time.perf_counter()
        log(f"  pass 1/2: {physical:,} rows in {counted - start:.1f} s ({physical / (counted - start):,.0f} rows/s); vocabulary {sum(vocab.sizes):,} values")
        if bad.total:
            log(f"  {bad.summary()}")
        if not rows[0]:
            raise UserError(f"{raw}: no training rows in the {settings['data_split']} split ({physical:,} rows read, {bad.total:,} bad)")
        encode_pass(raw, layout, plan, vocab, rows, tmp, progress)
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
    log(f"  done: {physical:,} rows in {seconds:.1f} s ({physical / seconds:,.0f} rows/s); train {rows[0]:,}, test {rows[1]:,}, val {rows[2]:,}")
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
        raise UserError("--data-generation=dataset: needs --raw-data-file (or --processed-data-file of data processed before)")
    directory = Path(processed) if processed else Path(f"{raw}.processed")
    settings = cache_settings(data_set, split, split_seed)
    meta = read_meta(directory)
    if not raw:
        if meta is None:
            raise UserError(f"--processed-data-file: {directory} holds no processed data; give --raw-data-file to make it")
        if meta["settings"] != settings or meta.get("version") != VERSION:
            raise UserError(
                f"--processed-data-file: {directory} was made with {meta['settings']} (version {meta.get('version')}); give --raw-data-file to rebuild it"
            )
        return Processed(directory, meta)
    layout = detect_layout(raw, data_set)
    source = source_info(Path(raw))
    reason = why_rebuild(meta, directory, settings, source, skip_bad_rows)
    if reason is None:
        log(f"using processed data in {directory} (made {meta.get('created')} from {meta['source']['path']})")
        return Processed(directory, meta)
    check_target(directory, meta)
    log(f"preprocessing {raw} into {directory}: {reason}")
    return Processed(directory, build(Path(raw), directory, layout, settings, source, skip_bad_rows, progress, log))
