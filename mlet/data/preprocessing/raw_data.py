"""Reading the raw click logs as users download them: blocks of rows, decoded column by column.

Three layouts are read (:data:`layouts.LAYOUTS`; the files' checks and
:func:`detect_layout` are in :mod:`layouts`):

* ``kaggle-tsv``: Criteo-Kaggle ``train.txt``: tab-separated, no header; label,
  I1-I13 (integer counts, may be empty or negative), C1-C26 (8 hex digits, may
  be empty).
* ``kaggle-csv``: the same rows as the Kaggle competition's CSV: header
  ``Id,Label,I1..I13,C1..C26``, comma-separated; ``Id`` is dropped.
* ``avazu``: Avazu ``train``: header ``id,click,hour,C1,banner_pos,...,C21``,
  comma-separated; ``id`` is dropped, ``click`` is the label, ``hour``
  (YYMMDDHH) becomes two categorical features, hour of day and weekday (see
  :func:`parse_hour` for why), the 21 other columns are categorical.

Any of them may be gzip-compressed and may end lines in LF or CRLF, with or
without a newline after the last row; empty lines at the end of a file are
not rows (elsewhere an empty line is a bad row).

:func:`read_blocks` streams a file in blocks through pyarrow's CSV reader (every
field read as bytes, in C++, in a background thread) and decodes each block
column by column with numpy: labels, integer counts (:func:`parse_int` states
the one rule), 8-hex-digit categories as 32-bit numbers, Avazu hours. Nothing
loops over rows in Python. A row that does not fit the layout is not dropped
here: it is flagged with an error kind and the column at fault
(:class:`ParsedBlock`), so the caller can stop with ``FILE:LINE: what is
wrong`` or skip and count it.

Categorical values become int64 *keys*: the 32-bit value of a hex string, the
integer of an integer column, :data:`MISSING` for an empty field.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from mlet.core.pipeline import prefetch
from mlet.data.preprocessing.layouts import READ_ERRORS, Layout, cannot_read, open_stream

MISSING = np.int64(-(2**63) + 1)  # key of an empty categorical field (the hash tables use -2**63 for "free")
DEFAULT_BLOCK_BYTES = 1 << 23

# Error kinds of a bad row (0: good). The messages say what was expected.
GOOD, COLUMNS, LABEL, COUNT, CATEGORY, INTEGER, HOUR, RANGE = range(8)
ERROR_NAMES = {
    COLUMNS: "wrong column count",
    LABEL: "label not 0/1",
    COUNT: "non-integer count",
    CATEGORY: "non-hex category",
    INTEGER: "non-integer value",
    HOUR: "bad hour",
    RANGE: "integer out of range",
}
SKIP_HINT = "(--skip-bad-rows skips and counts such rows)"


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser: a fixed, well-mixed 64-bit hash of each value."""
    z = x.astype(np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


# -- decoding columns -------------------------------------------------------------------


def string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (n + 1, absolute positions in the data) and data bytes of a string array, zero-copy."""
    buffers = arr.buffers()
    offsets = np.frombuffer(buffers[1], np.int32, count=len(arr) + 1, offset=arr.offset * 4)
    data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    return offsets, data


def field_text(arr: pa.Array, i: int, limit: int = 40) -> str:
    """Field ``i`` as text for an error message (shortened, undecodable bytes replaced)."""
    offsets, data = string_buffers(arr)
    raw = bytes(data[offsets[i] : offsets[i + 1]])
    text = raw[:limit].decode("utf-8", errors="replace")
    return text + ("..." if len(raw) > limit else "")


def _hex_pair_table() -> np.ndarray:
    """Lookup from two ASCII bytes (as a little-endian uint16) to their hex value 0-255, 0xFFFF if not hex."""
    digit = np.full(256, 256, np.uint16)
    for value, chars in enumerate(zip("0123456789abcdef", "0123456789ABCDEF")):
        for c in chars:
            digit[ord(c)] = value
    pair = np.arange(65536)
    first, second = digit[pair & 0xFF], digit[pair >> 8]
    return np.where((first < 16) & (second < 16), first * 16 + second, 0xFFFF).astype(np.uint16)


HEX_PAIRS = _hex_pair_table()


def parse_hex(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """8-hex-digit fields -> (int64 keys, bad mask); an empty field is :data:`MISSING`.

    The characters of all 8-character fields are decoded at once, two at a time,
    through a 65536-entry table; when every field has 0 or 8 characters (the
    normal case) they lie back to back in the data buffer and need no gather.
    """
    offsets, data = string_buffers(arr)
    lengths = np.diff(offsets)
    full = lengths == 8
    bad = (lengths != 0) & ~full
    if bad.any():
        starts = offsets[:-1][full].astype(np.int64)
        chars = data[starts[:, None] + np.arange(8)]
    else:
        chars = data[offsets[0] : offsets[-1]].reshape(-1, 8)
    pairs = HEX_PAIRS[chars.view("<u2")]  # m x 4 byte values, 0xFFFF where not hex
    not_hex = (pairs.view(np.uint64).ravel() & np.uint64(0xFF00FF00FF00FF00)) != 0
    values = pairs.astype(np.uint8).view(">u4").ravel().astype(np.int64)
    keys = np.full(len(arr), MISSING, np.int64)
    keys[full] = values
    bad[full] = not_hex
    keys[bad] = MISSING
    return keys, bad


MAX_DIGITS = 18  # integers: |x| < 10**18, inside int64 and clear of MISSING and the hash tables' free key


class Integers(NamedTuple):
    """Decoded integer fields: values (0 where empty, bad or out of range) and three masks."""

    values: np.ndarray
    missing: np.ndarray  # empty field
    bad: np.ndarray  # not an integer
    out_of_range: np.ndarray  # an integer of more than MAX_DIGITS significant digits


def parse_int(arr: pa.Array) -> Integers:
    """Decimal integer fields, by one rule (docs/data.md): an optional minus sign, then decimal digits
    (leading zeros allowed) of at most :data:`MAX_DIGITS` significant digits.

    Anything else is not an integer (``0x10``, ``+5``, ``1.5``, ``1e3``,
    spaces); more digits are out of range. pyarrow's cast parses a whole
    column in C++, but it also takes ``0x`` hex and 19-digit values, so its
    result is used only where every byte lies in ``-./0123456789`` (two
    reductions, not a lookup per byte; the cast refuses ``.`` and ``/``) and
    every value is in range, the normal case. Otherwise the fields are sorted
    out here.
    """
    missing = np.asarray(arr.is_null())
    offsets, data = string_buffers(arr)
    text = data[offsets[0] : offsets[-1]]
    if not len(text) or (text.min() >= ord("-") and text.max() <= ord("9")):
        try:
            values = pc.fill_null(pc.cast(arr, pa.int64()), 0).to_numpy()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = None
        if values is not None and (
            not len(values) or -(10**MAX_DIGITS) < values.min() <= values.max() < 10**MAX_DIGITS
        ):
            none = np.zeros(len(arr), bool)
            return Integers(values, missing, none, none)
    digits = np.asarray(pc.fill_null(pc.match_substring_regex(arr, r"^-?[0-9]+$"), True))
    significant = np.asarray(pc.fill_null(pc.binary_length(pc.ascii_ltrim(arr, characters="-0")), 0))
    in_range = digits & (significant <= MAX_DIGITS)
    values = pc.fill_null(pc.cast(pc.if_else(in_range, arr, pa.scalar(None, pa.string())), pa.int64()), 0)
    return Integers(values.to_numpy(), missing, ~digits, ~in_range & digits)


def parse_label(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """'0'/'1' fields -> (uint8 labels, bad mask)."""
    offsets, data = string_buffers(arr)
    one_char = np.diff(offsets) == 1
    digit = data[offsets[:-1][one_char]] - np.uint8(ord("0"))
    labels = np.zeros(len(arr), np.uint8)
    labels[one_char] = np.where(digit <= 1, digit, 0)
    bad = ~one_char
    bad[one_char] = digit > 1
    return labels, bad


def parse_hour(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Avazu ``hour`` (YYMMDDHH) -> (hour of day 0-23, weekday 0-6 with Monday 0, date YYMMDD, bad mask).

    Why these two features: the ten days of Avazu (2014-10-21 to 10-30) are
    too few for the date itself to generalise (with a ``by-day`` split the
    held-out day is never seen in training), while clicks follow a daily and
    a weekly rhythm. Hour of day (24 values) and weekday (7 values, all seen
    in any 7 consecutive days) carry that rhythm and are seen in training
    whatever the split; categorical rather than dense because neither is
    monotone in its effect (night vs. evening, weekday vs. weekend).
    """
    values, missing, bad, out_of_range = parse_int(arr)
    offsets, _ = string_buffers(arr)
    bad = bad | out_of_range | missing | (np.diff(offsets) != 8) | (values < 0)
    yymmdd, hh = np.divmod(values, 100)
    yy, mmdd = np.divmod(yymmdd, 10000)
    mm, dd = np.divmod(mmdd, 100)
    bad |= (hh > 23) | (mm < 1) | (mm > 12) | (dd < 1) | (dd > 31)
    month = np.where(bad, 0, (2000 + yy - 1970) * 12 + mm - 1).astype("datetime64[M]")
    day = month.astype("datetime64[D]") + np.where(bad, 0, dd - 1)
    bad |= day.astype("datetime64[M]") != month  # e.g. 31 November
    weekday = (day.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    date = np.where(bad, -1, yymmdd)
    return np.where(bad, 0, hh), np.where(bad, 0, weekday), date, bad


# -- blocks -------------------------------------------------------------------------


@dataclass
class ParsedBlock:
    """One block of rows, decoded.

    ``rows``: 0-based physical data-row index of each parsed row (the header
    is not a data row; rows pyarrow rejected for their column count are
    counted, so these indices follow the file's lines). ``errors``: the error
    kind of each parsed row (0 good) and ``error_field`` the field at fault.
    ``wrong_width``: ``(row index, field count)`` of the rows rejected for
    their column count, which have no values. Arrays not asked for are empty.
    """

    rows: np.ndarray
    labels: np.ndarray
    counts: np.ndarray  # n x D int64 (empty fields 0)
    keys: np.ndarray  # T x n int64, feature-major
    dates: np.ndarray
    errors: np.ndarray
    error_field: np.ndarray
    wrong_width: list[tuple[int, int]] = field(default_factory=list)
    batch: pa.RecordBatch | None = None

    @property
    def good(self) -> np.ndarray:
        """Mask of the parsed rows without errors."""
        return self.errors == GOOD

    def trailing_empty(self) -> int:
        """How many parsed rows at the end of the block are empty lines (after its last rejected row)."""
        last_rejected = max((row for row, _ in self.wrong_width), default=-1)
        kept = np.flatnonzero((self.errors != COLUMNS) | (self.rows <= last_rejected))
        return len(self.rows) - (int(kept[-1]) + 1 if len(kept) else 0)

    def has_content(self) -> bool:
        """Whether the block holds a line that is not empty (a parsed row or a rejected one)."""
        return self.trailing_empty() < len(self.rows) + len(self.wrong_width)

    def head(self, n: int) -> ParsedBlock:
        """The block's first ``n`` parsed rows (and all its rejected rows)."""
        return replace(
            self,
            rows=self.rows[:n],
            labels=self.labels[:n],
            counts=self.counts[:n],
            keys=self.keys[:, :n],
            dates=self.dates[:n],
            errors=self.errors[:n],
            error_field=self.error_field[:n],
            batch=self.batch.slice(0, n) if self.batch is not None else None,
        )

    def error_message(self, i: int, layout: Layout) -> str:
        """What is wrong with parsed row ``i``."""
        assert self.batch is not None, "error messages need the parsed batch"
        kind, name = int(self.errors[i]), self.batch.schema.names[self.error_field[i]]
        if kind == COLUMNS:
            return f"empty line, expected {layout.expected()}"
        text = field_text(self.batch.column(int(self.error_field[i])), i)
        if kind == RANGE:
            return f"{name} is '{text}', out of range: expected an integer of at most {MAX_DIGITS} digits"
        expected = {
            LABEL: "0 or 1",
            COUNT: "an integer or empty",
            CATEGORY: "8 hex digits or empty",
            INTEGER: "an integer or empty",
            HOUR: "YYMMDDHH (a valid date and hour)",
        }[kind]
        return f"{name} is '{text}', expected {expected}"


class _RowNumbers:
    """Physical row indices of the rows in pyarrow's batches, given the rows it rejected.

    pyarrow calls :meth:`reject` (its invalid-row handler) with the 1-based
    line number of each row whose column count is wrong, and returns the other
    rows in batches; :meth:`place` gives each batch's rows their line positions.
    """

    def __init__(self, header_lines: int) -> None:
        self.header_lines = header_lines
        self.rejected: list[tuple[int, int]] = []  # (row index, fields), in file order
        self.next_row = 0

    def reject(self, row) -> str:
        """pyarrow's ``invalid_row_handler``: remember the row and skip it."""
        if row.number is None:  # only happens with a multi-threaded reader
            raise RuntimeError("pyarrow did not report the row number")
        self.rejected.append((row.number - 1 - self.header_lines, row.actual_columns))
        return "skip"

    def place(self, n: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Row indices of the next ``n`` parsed rows, and the rejected rows up to them."""
        pending = [r for r in self.rejected if r[0] >= self.next_row]
        if not pending:
            rows = np.arange(self.next_row, self.next_row + n, dtype=np.int64)
        else:
            span = np.arange(self.next_row, self.next_row + n + len(pending), dtype=np.int64)
            rows = np.setdiff1d(span, [r for r, _ in pending], assume_unique=True)[:n]
        end = int(rows[-1]) + 1 if n else self.next_row
        taken = [r for r in pending if r[0] < end]
        self.rejected = [r for r in self.rejected if r[0] >= end]
        self.next_row = end
        return rows, taken

    def flush(self) -> list[tuple[int, int]]:
        """Rejected rows after the last parsed row."""
        rest, self.rejected = self.rejected, []
        if rest:
            self.next_row = rest[-1][0] + 1
        return rest


def _arrow_batches(
    path: str | Path, layout: Layout, columns: Sequence[str], block_bytes: int
) -> Iterator[tuple[pa.RecordBatch | None, np.ndarray, list[tuple[int, int]]]]:
    """pyarrow's streaming CSV reader over the file: ``(batch, row indices, rejected rows)``.

    Every wanted field is read as (unchecked) bytes, empty fields as null. The
    reader is single-threaded so that it reports line numbers; the row
    numbering runs in the same thread as pyarrow's invalid-row handler. A last
    ``(None, [], rejected)`` carries rejected rows after the last good one.
    """
    numbers = _RowNumbers(layout.header_lines)
    read = pcsv.ReadOptions(
        column_names=list(layout.columns), skip_rows=layout.header_lines, use_threads=False, block_size=block_bytes
    )
    parse = pcsv.ParseOptions(
        delimiter=layout.delimiter, quote_char=False, ignore_empty_lines=False, invalid_row_handler=numbers.reject
    )
    convert = pcsv.ConvertOptions(
        column_types={c: pa.string() for c in columns},
        include_columns=list(columns),
        check_utf8=False,
        strings_can_be_null=True,
        null_values=[""],
        quoted_strings_can_be_null=False,
    )
    try:
        with open_stream(path) as stream:
            for batch in pcsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert):
                yield (batch, *numbers.place(batch.num_rows))
    except READ_ERRORS as error:
        raise cannot_read(path, error) from None
    rest = numbers.flush()
    if rest:
        yield None, np.zeros(0, np.int64), rest


def parse_batch(batch: pa.RecordBatch, layout: Layout, rows: np.ndarray) -> ParsedBlock:
    """Decode one pyarrow batch (whichever of the layout's fields it holds) into a :class:`ParsedBlock`."""
    n = batch.num_rows
    errors, error_field = np.zeros(n, np.uint8), np.zeros(n, np.int16)
    labels, counts, keys, dates = np.zeros(n, np.uint8), [], [], np.zeros(0, np.int64)
    kinds = dict(layout.kinds)

    def flag(bad: np.ndarray, kind: int, index: int) -> None:
        first = bad & (errors == GOOD)
        errors[first], error_field[first] = kind, index

    for index, name in enumerate(batch.schema.names):
        arr, kind = batch.column(index), kinds[name]
        if kind == "label":
            labels, bad = parse_label(arr)
            if bad.any():
                blank = bad & np.all([np.asarray(c.is_null()) for c in batch.columns], axis=0)
                flag(blank, COLUMNS, index)
            flag(bad, LABEL, index)
        elif kind == "count":
            values, _, bad, out_of_range = parse_int(arr)
            counts.append(values)
            flag(bad, COUNT, index)
            flag(out_of_range, RANGE, index)
        elif kind == "hex":
            key, bad = parse_hex(arr)
            keys.append(key)
            flag(bad, CATEGORY, index)
        elif kind == "int":
            values, missing, bad, out_of_range = parse_int(arr)
            keys.append(np.where(missing | bad | out_of_range, MISSING, values))
            flag(bad, INTEGER, index)
            flag(out_of_range, RANGE, index)
        elif kind == "hour":
            hour, weekday, dates, bad = parse_hour(arr)
            keys.extend([hour, weekday])
            flag(bad, HOUR, index)
    return ParsedBlock(
        rows=rows,
        labels=labels,
        counts=np.stack(counts, axis=1) if counts else np.zeros((n, 0), np.int64),
        keys=np.stack(keys) if keys else np.zeros((0, n), np.int64),
        dates=dates,
        errors=errors,
        error_field=error_field,
        batch=batch,
    )


def without_trailing_empty_lines(blocks: Iterator[ParsedBlock]) -> Iterator[ParsedBlock]:
    """``blocks`` less the empty lines at the end of the file: those are not rows (an empty line before a
    row with content stays an error).

    A block is held back until a later one holds content; blocks of empty lines
    only are held with it. At the end, the held block loses its trailing empty
    lines and the blocks held after it are dropped.
    """
    held: list[ParsedBlock] = []
    for block in blocks:
        if held and block.has_content():
            yield from held
            held = []
        held.append(block)
    if held:
        yield held[0].head(len(held[0].rows) - held[0].trailing_empty())


def read_blocks(
    path: str | Path, layout: Layout, columns: Sequence[str] | None = None, block_bytes: int = DEFAULT_BLOCK_BYTES
) -> Iterator[ParsedBlock]:
    """Stream ``path`` as :class:`ParsedBlock` objects, in file order.

    ``columns``: the fields to decode (default: all but dropped ones). pyarrow
    tokenises in one background thread and the columns are decoded in
    another, so the caller's work on block ``k`` overlaps both for ``k + 1``.
    """
    wanted = list(columns) if columns is not None else [c for c, kind in layout.kinds if kind != "skip"]
    empty = pa.RecordBatch.from_pylist([], schema=pa.schema([(c, pa.string()) for c in wanted]))

    def parsed() -> Iterator[ParsedBlock]:
        for batch, rows, rejected in prefetch(_arrow_batches(path, layout, wanted, block_bytes), depth=2):
            block = parse_batch(batch if batch is not None else empty, layout, rows)
            block.wrong_width = rejected
            yield block

    yield from prefetch(without_trailing_empty_lines(parsed()), depth=2)
