"""Synthetic raw files: the click model of :mod:`mlet.data.synthetic` written in the data sets' own formats.

``python data_utils.py generate {kaggle,avazu} --rows N --seed S --out FILE``
writes a file that the readers of :mod:`raw_data` take exactly as the real
download, so that the whole path (raw file -> preprocessing -> training) runs
and is tested without the real data:

* Kaggle (``train.txt`` layout): label, I1-I13, C1-C26, tab-separated. The
  tables have the real C1-C26 cardinalities times ``--scale`` (at least
  :data:`FLOOR` values, or all of them for tables smaller than that); values are
  8-hex-digit strings; dense fields are the model's integer counts. Fields are
  left empty at the rates of the real file, in the groups in which they go
  missing together there (:data:`KAGGLE_MISSING`); some zero counts of I2 are
  written as -1..-3, as in the real I2 (they read back as 0).
* Terabyte (``day_0`` ... day files, each in the Kaggle layout): the same
  as Kaggle with Criteo Terabyte's cardinalities times ``--scale``; each
  day is ``--rows`` rows of the same click model, drawn with the day's own
  seed (:meth:`RawGenerator.write_days`).
* Avazu (``train`` CSV layout): header, ``id`` (a 64-bit hash), ``click``,
  ``hour`` spread evenly and in order over the 10 days 14102100-14103023, and
  the 21 categorical columns with Avazu's cardinalities times ``--scale``
  (hex strings for the hashed columns, integers for the others). The hour
  carries no signal here; it exercises the hour features and the ``by-day`` split.

:meth:`RawGenerator.chunks` yields what is written (:class:`WrittenRows`), so
tests can check that preprocessing recovers exactly these samples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from mlet.core.config import SyntheticConfig
from mlet.core.files import replace_atomically
from mlet.data.preprocessing.days import day_prefix
from mlet.data.preprocessing.layouts import AVAZU_COLUMNS, AVAZU_HEX, KAGGLE_CATEGORICAL, KAGGLE_DENSE
from mlet.data.preprocessing.raw_data import splitmix64
from mlet.data.synthetic import ClickModel, ClickModelConfig

# Distinct values of C1-C26 in the full Criteo-Kaggle train.txt (../shared/data/README.md).
KAGGLE_CARDINALITIES = (
    1460,
    583,
    10131227,
    2202608,
    305,
    24,
    12517,
    633,
    3,
    93145,
    5683,
    8351593,
    3194,
    27,
    14992,
    5461306,
    10,
    5652,
    2173,
    4,
    7046547,
    18,
    15,
    286181,
    105,
    142572,
)
# Distinct values of C1-C26 over the 24 days of Criteo Terabyte, as commonly published (e.g. with MLPerf's DLRM).
TERABYTE_CARDINALITIES = (
    227605432,
    39060,
    17295,
    7424,
    20265,
    3,
    7122,
    1543,
    63,
    130229467,
    3067956,
    405282,
    10,
    2209,
    11938,
    155,
    4,
    976,
    14,
    292775614,
    40790948,
    187188510,
    590152,
    12973,
    108,
    36,
)
# Distinct values of Avazu's 21 categorical columns (file order), as commonly published for the full train file.
AVAZU_CARDINALITIES = (
    7,
    7,
    4737,
    7745,
    26,
    8552,
    559,
    36,
    2686408,
    6729486,
    8251,
    5,
    4,
    2626,
    8,
    9,
    435,
    4,
    68,
    172,
    60,
)
# Integer columns of Avazu are written as base + model id.
AVAZU_INTEGER_BASE = {"C1": 1001, "C14": 375, "C15": 120, "C16": 20, "C17": 112, "C19": 33, "C20": -1, "C21": 1}
# Fields that go missing together in the real train.txt, with the share of rows where they do
# (measured on its first 1999 rows; the full file is close: I12 76%, C22 76%, C19/C20/C25/C26 44%).
KAGGLE_MISSING = (
    (("I1", "I10"), 0.445),
    (("I3", "I4", "I13"), 0.21),
    (("I6",), 0.247),
    (("I5", "I7", "I9", "I11"), 0.047),
    (("I8",), 0.001),
    (("I12",), 0.777),
    (("C3", "C4", "C12", "C16", "C21", "C24"), 0.033),
    (("C6",), 0.126),
    (("C19", "C20", "C25", "C26"), 0.483),
    (("C22",), 0.816),
)
I2_NEGATIVE_SHARE = 0.5  # of I2's zero counts, written as -1, -2 or -3
FLOOR = 4
DAYS, FIRST_DAY = 10, 21  # Avazu: 2014-10-21 .. 2014-10-30


def scaled_sizes(full: Sequence[int], scale: float, floor: int = FLOOR) -> tuple[int, ...]:
    """Cardinalities times ``scale``, keeping at least ``floor`` values (or all, if fewer)."""
    return tuple(max(min(n, floor), round(n * scale)) for n in full)


@dataclass
class WrittenRows:
    """A chunk of rows as written: what preprocessing must give back.

    ``ids``: N x T model ids (-1 where the field is empty); ``counts``: N x D
    integers as written (0 where empty); ``missing``: N x D, empty dense fields;
    ``hours``: Avazu's YYMMDDHH (empty for Kaggle).
    """

    labels: np.ndarray
    counts: np.ndarray
    missing: np.ndarray
    ids: np.ndarray
    hours: np.ndarray


def hex_strings(values: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """uint32 values as an arrow string array of 8 lowercase hex digits (null where not ``valid``)."""
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    nibbles = (values.astype(np.uint32)[:, None] >> np.arange(28, -1, -4, dtype=np.uint32)) & 0xF
    data = pa.py_buffer(digits[nibbles].tobytes())
    offsets = pa.py_buffer((np.arange(len(values) + 1, dtype=np.int32) * 8).tobytes())
    validity = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little").tobytes())
    nulls = -1 if valid is not None else 0
    return pa.Array.from_buffers(pa.string(), len(values), [validity, offsets, data], null_count=nulls)


def scramble(ids: np.ndarray, salt: int) -> np.ndarray:
    """A bijection of 32-bit ids to random-looking 32-bit values (so ids become distinct hex strings)."""
    h = (ids.astype(np.uint64) + np.uint64(salt)) & np.uint64(0xFFFFFFFF)
    for shift, mult in ((16, 0x45D9F3B), (16, 0x45D9F3B)):
        h = ((h ^ (h >> np.uint64(shift))) * np.uint64(mult)) & np.uint64(0xFFFFFFFF)
    return (h ^ (h >> np.uint64(16))).astype(np.uint32)


class RawGenerator:
    """The click model for one data set's raw format; see the module docstring."""

    def __init__(self, data_set: str, rows: int, seed: int = 0, scale: float = 0.01, **model: Any) -> None:
        if data_set not in ("kaggle", "terabyte", "avazu"):
            raise ValueError(f"unknown data set {data_set}")
        self.data_set, self.rows, self.seed = data_set, int(rows), seed
        self.day = 0  # Terabyte: the day being written (its own draws)
        full = {"kaggle": KAGGLE_CARDINALITIES, "terabyte": TERABYTE_CARDINALITIES}.get(data_set, AVAZU_CARDINALITIES)
        criteo = data_set != "avazu"
        knobs = model if criteo else {"dense_std": 0.0, **model}
        self.config = ClickModelConfig(
            table_sizes=scaled_sizes(full, scale), dense_features=13 if criteo else 1, seed=seed, **knobs
        )
        self.model = ClickModel(self.config)
        self.salts = np.random.default_rng([seed, 8191]).integers(0, 2**32, len(full)).tolist()

    def chunks(self) -> Iterator[WrittenRows]:
        """The rows of the file (of day :attr:`day`), in order, in the click model's chunks
        (``mlet.data.synthetic.SAMPLE_CHUNK`` rows)."""
        rng = np.random.default_rng([self.seed, 524287, self.day])
        start = 0
        for counts, ids, labels in self.model.sample_chunks(self.rows, seed=1 + self.day):
            n = len(labels)
            if self.data_set == "avazu":
                slot = (np.arange(start, start + n) * (24 * DAYS)) // max(self.rows, 1)
                hours = 14100000 + (FIRST_DAY + slot // 24) * 100 + slot % 24
                yield WrittenRows(labels, np.zeros((n, 0), np.int64), np.zeros((n, 0), bool), ids, hours)
            else:
                yield self._kaggle_fields(counts, ids, labels, rng)
            start += n

    def _kaggle_fields(
        self, counts: np.ndarray, ids: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> WrittenRows:
        """Blank fields in their missing groups; write some zero I2 counts as negatives."""
        n = len(labels)
        names = {name: (i, False) for i, name in enumerate(KAGGLE_DENSE)} | {
            name: (i, True) for i, name in enumerate(KAGGLE_CATEGORICAL)
        }
        missing, ids = np.zeros(counts.shape, bool), ids.copy()
        for group, share in KAGGLE_MISSING:
            blank = rng.random(n) < share
            for name in group:
                i, categorical = names[name]
                if categorical:
                    ids[blank, i] = -1
                else:
                    missing[blank, i] = True
        counts = np.where(missing, 0, counts)
        negative = (counts[:, 1] == 0) & ~missing[:, 1] & (rng.random(n) < I2_NEGATIVE_SHARE)
        counts[negative, 1] = -rng.integers(1, 4, int(negative.sum()))
        return WrittenRows(labels, counts, missing, ids, np.zeros(0, np.int64))

    def table(self, rows: WrittenRows, first_row: int) -> pa.Table:
        """The chunk as an arrow table with the file's columns."""
        ids = rows.ids
        if self.data_set != "avazu":
            columns = {"label": pa.array(rows.labels)}
            for i, name in enumerate(KAGGLE_DENSE):
                columns[name] = pa.array(rows.counts[:, i], mask=rows.missing[:, i])
            for t, name in enumerate(KAGGLE_CATEGORICAL):
                columns[name] = hex_strings(scramble(ids[:, t], self.salts[t]), valid=ids[:, t] >= 0)
            return pa.table(columns)
        row_ids = splitmix64(np.arange(first_row, first_row + len(ids), dtype=np.uint64) ^ np.uint64(self.seed << 40))
        columns = {"id": pa.array(row_ids), "click": pa.array(rows.labels), "hour": pa.array(rows.hours)}
        for t, name in enumerate(AVAZU_COLUMNS[3:]):
            if name in AVAZU_HEX:
                columns[name] = hex_strings(scramble(ids[:, t], self.salts[t]))
            else:
                columns[name] = pa.array(ids[:, t] + AVAZU_INTEGER_BASE.get(name, 0))
        return pa.table(columns)

    def write(self, path: str | Path) -> None:
        """Write the file (gzip-compressed if the name ends in ``.gz``), through a temporary sibling renamed
        into place at the end: an interrupted run leaves no partial file."""
        options = pcsv.WriteOptions(
            include_header=self.data_set == "avazu",
            delimiter="," if self.data_set == "avazu" else "\t",
            quoting_style="none",
            quoting_header="none",
        )
        compression = "gzip" if str(path).endswith(".gz") else None

        def write_rows(tmp: Path) -> None:
            first, writer = 0, None
            with pa.output_stream(str(tmp), compression=compression) as sink:
                for rows in self.chunks():
                    table = self.table(rows, first)
                    if writer is None:
                        writer = pcsv.CSVWriter(sink, table.schema, write_options=options)
                    writer.write_table(table)
                    first += len(rows.labels)
                if writer is not None:
                    writer.close()

        replace_atomically(Path(path), write_rows)

    def write_days(self, out: str, days: int) -> list[Path]:
        """Terabyte: the :func:`day_paths` of ``out``, :attr:`rows` rows each."""
        paths = day_paths(out, days)
        for day, path in enumerate(paths):
            self.day = day
            self.write(path)
        self.day = 0
        return paths


def day_paths(out: str, days: int) -> list[Path]:
    """Terabyte's day files for ``out``: ``PREFIX_0`` ... ``PREFIX_{days-1}`` (``PREFIX.gz``: ``PREFIX_i.gz``,
    gzip-compressed, as downloaded); in a folder (see :func:`~mlet.data.preprocessing.days.day_prefix`) upstream's
    ``day_0`` ..., where ``--raw-data-file`` finds them (named from the folder's path they were ``._0`` ...)."""
    prefix = day_prefix(out)
    stem, ext = (prefix[:-3], ".gz") if prefix.endswith(".gz") else (prefix, "")
    return [Path(f"{stem}_{day}{ext}") for day in range(days)]


def model_defaults() -> dict[str, float]:
    """The click model's default knobs, by field name."""
    return dataclasses.asdict(SyntheticConfig())
