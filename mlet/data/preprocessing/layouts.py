"""The raw click logs' files: their layouts, the checks a raw file passes before it is read, detection.

Three layouts (:data:`LAYOUTS`): Criteo-Kaggle's ``train.txt`` (``kaggle-tsv``),
the Kaggle competition's CSV (``kaggle-csv``) and Avazu's ``train`` (``avazu``);
:mod:`raw_data`'s docstring says what their fields hold and how they are
decoded. Any of them may be gzip-compressed (:func:`is_gzip` looks at the
bytes, not the name). :func:`check_input_file` and :func:`detect_layout` refuse,
with one clear line, what cannot be training data (a missing, empty,
unreadable or unlabelled file, a directory, the other data set's file,
upstream DLRM's processed ``.npz``).
"""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from mlet.core.errors import UserError

KAGGLE_DENSE = tuple(f"I{i}" for i in range(1, 14))
KAGGLE_CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
AVAZU_HEX = (
    "site_id",
    "site_domain",
    "site_category",
    "app_id",
    "app_domain",
    "app_category",
    "device_id",
    "device_ip",
    "device_model",
)
AVAZU_COLUMNS = (
    "id",
    "click",
    "hour",
    "C1",
    "banner_pos",
    *AVAZU_HEX,
    "device_type",
    "device_conn_type",
    *(f"C{i}" for i in range(14, 22)),
)
AVAZU_INTEGER = tuple(c for c in AVAZU_COLUMNS[3:] if c not in AVAZU_HEX)
HOUR_FEATURES = ("hour_of_day", "weekday")


@dataclass(frozen=True)
class Layout:
    """How one kind of raw file is laid out.

    ``kinds`` maps each field of a row, in file order, to how it is read:
    ``skip`` (dropped), ``label``, ``count`` (dense integer), ``hex`` or
    ``int`` (categorical), ``hour`` (Avazu's YYMMDDHH, two categorical features).
    """

    name: str
    data_set: str
    delimiter: str
    header_lines: int
    kinds: tuple[tuple[str, str], ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """Field names in file order."""
        return tuple(name for name, _ in self.kinds)

    def of_kind(self, *kinds: str) -> tuple[str, ...]:
        """Names of the fields of the given kinds, in file order."""
        return tuple(name for name, kind in self.kinds if kind in kinds)

    @property
    def dense_features(self) -> tuple[str, ...]:
        """Dense (count) features, in the column order of the processed arrays."""
        return self.of_kind("count")

    @property
    def categorical_features(self) -> tuple[str, ...]:
        """Categorical features, in the column order of the processed arrays (``hour`` gives two)."""
        names: list[str] = []
        for name, kind in self.kinds:
            if kind == "hour":
                names.extend(HOUR_FEATURES)
            elif kind in ("hex", "int"):
                names.append(name)
        return tuple(names)

    def expected(self) -> str:
        """The row layout in words, for error messages."""
        if self.data_set == "kaggle":
            return f"{len(self.kinds)} fields ({'Id, ' if self.header_lines else ''}label, I1-I13, C1-C26)"
        return f"{len(self.kinds)} fields (id, click, hour, C1, banner_pos, ..., C21)"


LAYOUTS = {
    "kaggle-tsv": Layout(
        "kaggle-tsv",
        "kaggle",
        "\t",
        0,
        (("label", "label"), *((c, "count") for c in KAGGLE_DENSE), *((c, "hex") for c in KAGGLE_CATEGORICAL)),
    ),
    "kaggle-csv": Layout(
        "kaggle-csv",
        "kaggle",
        ",",
        1,
        (
            ("Id", "skip"),
            ("Label", "label"),
            *((c, "count") for c in KAGGLE_DENSE),
            *((c, "hex") for c in KAGGLE_CATEGORICAL),
        ),
    ),
    "avazu": Layout(
        "avazu",
        "avazu",
        ",",
        1,
        (
            ("id", "skip"),
            ("click", "label"),
            ("hour", "hour"),
            *((c, "hex" if c in AVAZU_HEX else "int") for c in AVAZU_COLUMNS[3:]),
        ),
    ),
}

DATA_SET_LAYOUT = {"kaggle": "kaggle-tsv", "terabyte": "kaggle-tsv", "avazu": "avazu"}
"""A layout of each data set (Kaggle's CSV has the same features as its TSV; Terabyte's days are Kaggle's TSV)."""


def categorical_features(data_set: str) -> tuple[str, ...]:
    """The categorical features of ``data_set``'s processed arrays, in column order: one table each."""
    return LAYOUTS[DATA_SET_LAYOUT[data_set]].categorical_features


# -- files -------------------------------------------------------------------


def is_gzip(path: str | Path) -> bool:
    """Whether the file starts with the gzip magic bytes (the name does not matter)."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


UPSTREAM_NPZ_ARRAYS = ("X_int", "X_cat", "y")
UPSTREAM_NPZ = "upstream DLRM's processed .npz (X_int, X_cat, y: its data_utils.py's format, not read here)"


def is_upstream_npz(path: str | Path) -> bool:
    """Whether ``path`` is a processed file of upstream DLRM's ``data_utils.py`` (an ``.npz`` holding
    :data:`UPSTREAM_NPZ_ARRAYS`, e.g. ``kaggleAdDisplayChallenge_processed.npz``)."""
    p = Path(path)
    if not p.is_file() or not zipfile.is_zipfile(p):
        return False
    try:
        with zipfile.ZipFile(p) as archive:
            names = {name.removesuffix(".npy") for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile):
        return False
    return set(UPSTREAM_NPZ_ARRAYS) <= names


def check_input_file(path: str | Path, flag: str = "--raw-data-file") -> Path:
    """``path`` as a readable, non-empty regular file (and not upstream's processed ``.npz``), else a one-line
    :class:`UserError`."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{flag}: {p}: no such file")
    if p.is_dir():
        raise UserError(f"{flag}: {p}: is a directory, expected a file")
    if not os.access(p, os.R_OK):
        raise UserError(f"{flag}: {p}: not readable (permission denied)")
    if p.stat().st_size == 0:
        raise UserError(f"{flag}: {p}: file is empty")
    if is_upstream_npz(p):
        raise UserError(
            f"{flag}: {p}: is {UPSTREAM_NPZ}; give the raw download it was made from "
            "(Criteo-Kaggle train.txt), which is preprocessed into this project's cache"
        )
    return p


READ_ERRORS = (pa.ArrowInvalid, OSError, EOFError, zlib.error)
"""What reading a raw file's bytes raises when the file is damaged (a truncated or corrupt gzip stream, an I/O
error): :func:`cannot_read` turns them into one line."""


def cannot_read(path: str | Path, error: BaseException) -> UserError:
    """The one-line error for a raw file whose bytes cannot be read (``FILE: cannot read: why``)."""
    return UserError(f"{path}: cannot read: {str(error).splitlines()[0] if str(error) else type(error).__name__}")


def open_stream(path: str | Path) -> pa.NativeFile:
    """A pyarrow input stream of the file's bytes, gunzipped in C++ if it is gzip."""
    return pa.input_stream(str(path), compression="gzip" if is_gzip(path) else None)


UTF8_BOM = b"\xef\xbb\xbf"  # what some editors and exports put first; pyarrow's CSV reader skips it too


def first_lines(path: str | Path, limit: int = 1 << 16, count: int = 20) -> list[str]:
    """Up to ``count`` first lines (without line ends, nor a UTF-8 byte-order mark) of a plain or gzip file, from
    its first ``limit`` bytes."""
    opener = gzip.open if is_gzip(path) else open
    try:
        with opener(path, "rb") as f:
            head = f.read(limit)
    except READ_ERRORS as error:
        raise cannot_read(path, error) from None
    lines = head.removeprefix(UTF8_BOM).split(b"\n")[:count]
    return [line.rstrip(b"\r").decode("utf-8", errors="replace") for line in lines if line.strip()]


def count_lines(path: str | Path, chunk: int = 1 << 24, progress=None) -> int:
    """Lines in the file up to its last non-empty one, reading bytes only: a last line without a newline
    counts, empty lines at the end of the file (LF or CRLF) do not (they are not rows; see
    :func:`without_trailing_empty_lines`). A damaged file (e.g. a truncated gzip) is a one-line
    :class:`UserError`."""
    newlines, lines = 0, 0
    try:
        with open_stream(path) as stream:
            while True:
                data = stream.read(chunk)
                if not data:
                    break
                end = len(data)
                while end and data[end - 1] in b"\r\n":
                    end -= 1
                if end:  # a line with content ends in this chunk: the lines so far end with it
                    lines = newlines + data.count(b"\n", 0, end) + 1
                newlines += data.count(b"\n")
                if progress is not None:
                    progress.update(len(data))
    except READ_ERRORS as error:
        raise cannot_read(path, error) from None
    return lines


# -- layout detection -----------------------------------------------------------


def detect_layout(path: str | Path, data_set: str) -> Layout:
    """The layout of ``path`` for ``--data-set``, or a one-line :class:`UserError` saying what the file is instead."""
    check_input_file(path)
    lines = first_lines(path) or [""]
    line = lines[0]
    fields = line.split(",")
    tab_counts = [len(x.split("\t")) for x in lines]
    tabs = max(set(tab_counts), key=tab_counts.count)  # the usual field count: line 1 may be a bad row
    looks_avazu = fields[:2] == ["id", "click"] or fields[:2] == ["id", "hour"]
    if data_set == "kaggle":
        if tabs == 40:
            return LAYOUTS["kaggle-tsv"]
        if tabs == 39:
            raise UserError(
                f"{path}: looks like Criteo-Kaggle's unlabelled test.txt (39 tab-separated columns, no label); "
                "training needs the labelled train.txt (40 columns)"
            )
        if fields[:2] == ["Id", "Label"] and len(fields) == 41:
            return LAYOUTS["kaggle-csv"]
        if fields[:2] == ["Id", "I1"]:
            raise UserError(
                f"{path}: looks like the Kaggle competition's unlabelled test CSV (no Label column); "
                "training needs the labelled train file"
            )
        hint = "; it looks like Avazu (use --data-set=avazu)" if looks_avazu else ""
        raise UserError(
            f"{path}:1: not a Criteo-Kaggle train file: {tabs} tab-separated fields, "
            f"expected 40 (label, I1-I13, C1-C26){hint}"
        )
    if data_set == "avazu":
        expected = list(AVAZU_COLUMNS)
        if fields == expected:
            return LAYOUTS["avazu"]
        if fields == [c for c in expected if c != "click"]:
            raise UserError(
                f"{path}: looks like Avazu's unlabelled test file (no click column); "
                "training needs the labelled train file"
            )
        hint = (
            "; it looks like Criteo-Kaggle (use --data-set=kaggle)"
            if tabs in (39, 40) or fields[:2] == ["Id", "Label"]
            else ""
        )
        raise UserError(
            f"{path}:1: not an Avazu train file: the header should be '{','.join(expected[:4])},...,C21', "
            f"got '{line[:60]}'{hint}"
        )
    raise UserError(f"--data-set: unknown data set '{data_set}' (kaggle or avazu)")
