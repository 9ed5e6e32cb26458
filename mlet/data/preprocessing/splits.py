"""Which rows go where: the dense transform, the split plans, negative sub-sampling, and bad rows.

A build of the processed cache (:mod:`cache`, :mod:`days`) asks this module
which split each parsed row belongs to (:class:`SplitPlan`), which negative
training rows ``--data-sub-sample-rate`` drops (:func:`sub_sample_keep`), and
what to do with a malformed row (:func:`check_rows`: stop with
``FILE:LINE: what is wrong``, or skip and count it in :class:`BadRows`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mlet.core.errors import UserError
from mlet.data.preprocessing.layouts import Layout, count_lines, is_gzip
from mlet.data.preprocessing.raw_data import COLUMNS, ERROR_NAMES, SKIP_HINT, ParsedBlock, read_blocks, splitmix64

TRAIN, TEST, VAL = 0, 1, 2
Log = Callable[[str], None]


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

    def day_of(self) -> Callable[[np.ndarray], np.ndarray]:
        """``dlrm``: the day (0-6) of each data-row index."""
        per_day, extra = divmod(self.total, 7)
        ends = np.cumsum([per_day + (d < extra) for d in range(7)])
        return lambda rows: np.searchsorted(ends, rows, side="right")

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
    if len(dates) == 1:  # nothing would be left to train on; say so before the pass over the rows
        raise UserError(
            f"{path}: --data-split=by-day holds out the last day, but every row is of one day, {last} "
            f"({dates[last]:,} rows); give --data-split=random-811, or a file of two days or more"
        )
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


def sub_sample_keep(rows: np.ndarray, labels: np.ndarray, train: np.ndarray, rate: float, salt: int) -> np.ndarray:
    """Mask of the rows ``--data-sub-sample-rate`` keeps: every positive and every held-out row, and each
    negative training row with probability ``1 - rate``.

    The draw is a hash of the row index and ``salt`` (the seed, and the day of
    a Terabyte file), so the same rows are dropped on every build, whatever
    the block sizes or the number of processes.
    """
    if rate <= 0:
        return np.ones(len(rows), bool)
    mixed = splitmix64(rows.astype(np.uint64) ^ np.uint64(splitmix64(np.array([salt], np.uint64))[0]))
    uniform = (mixed >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return ~(train & (labels == 0) & (uniform < rate))
