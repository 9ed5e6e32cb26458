"""Arrays on disk: ``.npy`` files written row block by row block, renumbered in place, copied by row ranges.

All of it reads and writes through plain file calls rather than memory maps,
so that a build's resident memory stays at one block whatever the file size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike


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


def npy_layout(path: Path) -> tuple[int, tuple[int, ...], np.dtype]:
    """Byte offset of the data, shape and dtype of an ``.npy`` file."""
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        return f.tell(), shape, dtype


def create_npy(path: Path, dtype: DTypeLike, shape: tuple[int, ...]) -> None:
    """An ``.npy`` file of ``shape`` (contents zero until written: a sparse file) for :func:`write_rows_at`."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        )
        f.truncate(f.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize)


def read_rows(path: Path, lo: int, hi: int) -> np.ndarray:
    """Rows ``lo:hi`` of an ``.npy`` file, read (not mapped)."""
    start, shape, dtype = npy_layout(path)
    width = int(np.prod(shape[1:]))
    with open(path, "rb") as f:
        f.seek(start + lo * width * dtype.itemsize)
        return np.fromfile(f, dtype, (hi - lo) * width).reshape(hi - lo, *shape[1:])


def write_rows_at(path: Path, row: int, block: np.ndarray) -> None:
    """Write ``block`` over the rows from ``row`` on of an existing ``.npy`` file (made by :func:`create_npy`)."""
    start, shape, dtype = npy_layout(path)
    width = int(np.prod(shape[1:]))
    with open(path, "r+b") as f:
        f.seek(start + row * width * dtype.itemsize)
        np.ascontiguousarray(block, dtype=dtype).tofile(f)
