"""Per-feature vocabularies of categorical values, built in one streaming pass.

Preprocessing reads the raw file once. Each feature's :class:`KeyTable` gives
every distinct value (int64 key) a *provisional* index in order of first
appearance, and those indices are what the first pass writes; counts are kept
over training rows only. :meth:`Vocabulary.freeze` then numbers the values
for good: id 1 is the most frequent training value, ties broken by key, and
0 is shared by values never seen in training; the written indices are
renumbered in place (:func:`arrays.renumber_file`), which reads binary
arrays instead of parsing text a second time.

With ids in decreasing frequency, ``--cat-min-count N`` is a per-feature
cut-off on ids, and ``--max-ind-range R`` a modulus: :class:`IdLimits` applies
both to batches as they are read, so they need no new preprocessing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from mlet.core.errors import UserError

THREADS = min(4, os.cpu_count() or 1)


class KeyTable:
    """int64 keys -> consecutive indices 0, 1, 2, ... in order of insertion; vectorised.

    Open addressing with linear probing and Fibonacci hashing, doubling when
    more than :attr:`MAX_LOAD` of the slots are used; 12 bytes a slot (int64
    key, int32 index), so at most 2**31 distinct values per feature. A lookup costs one or two
    random memory accesses per key (about 20 ns for a small table, 120 ns for
    millions of keys), where a binary search among 10M sorted keys costs 23.
    """

    FREE = np.int64(np.iinfo(np.int64).min)
    MAX_LOAD = 0.6
    _MUL = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, capacity: int = 1024) -> None:
        self.size = 0
        self._allocate(max(10, math.ceil(math.log2(capacity / self.MAX_LOAD))))

    def __len__(self) -> int:
        return self.size

    def _allocate(self, bits: int) -> None:
        self.bits, self.mask = bits, (1 << bits) - 1
        self.slot_keys = np.full(1 << bits, self.FREE, np.int64)
        self.slot_index = np.full(
            (1 << bits) + 1, -1, np.int32
        )  # the extra last entry (-1) is what slot -1, "absent", reads

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return ((keys.view(np.uint64) * self._MUL) >> np.uint64(64 - self.bits)).view(np.int64)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Slot of each key, -1 where absent."""
        slots = self._home(keys)
        found = self.slot_keys[slots]
        hit = found == keys
        result = np.where(hit, slots, -1)
        index = np.flatnonzero(~hit & (found != self.FREE))  # collided: probe on
        slots, want = (slots[index] + 1) & self.mask, keys[index]
        while index.size:
            found = self.slot_keys[slots]
            hit = found == want
            result[index[hit]] = slots[hit]
            more = ~hit & (found != self.FREE)
            index, slots, want = index[more], (slots[more] + 1) & self.mask, want[more]
        return result

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Index of each key, -1 where absent."""
        return self.slot_index[self.find(keys)]

    def index(self, keys: np.ndarray) -> np.ndarray:
        """Index of each key, giving new keys the next indices (in order of first appearance)."""
        slots = self.find(keys)
        missing = np.flatnonzero(slots < 0)
        if missing.size:
            new, first = np.unique(keys[missing], return_index=True)
            new = new[np.argsort(first, kind="stable")]
            bits = self.bits
            self._insert(new, np.arange(self.size, self.size + len(new), dtype=np.int32))
            if self.bits != bits:  # grown: every key has moved
                slots = self.find(keys)
            else:
                slots[missing] = self.find(keys[missing])
        return self.slot_index[slots]

    def _insert(self, keys: np.ndarray, indices: np.ndarray) -> None:
        """Insert distinct keys that are not in the table yet."""
        if self.size + len(keys) > self.MAX_LOAD * len(self.slot_keys):
            self._grow(self.size + len(keys))
        pending, slots = np.arange(len(keys)), self._home(keys)
        while pending.size:
            free = self.slot_keys[slots] == self.FREE
            self.slot_keys[slots[free]] = keys[pending[free]]  # keys aimed at one slot: one wins, the others probe on
            won = np.zeros(len(pending), bool)
            won[free] = self.slot_keys[slots[free]] == keys[pending[free]]
            self.slot_index[slots[won]] = indices[pending[won]]
            pending, slots = pending[~won], (slots[~won] + 1) & self.mask
        self.size += len(keys)

    def _grow(self, needed: int) -> None:
        used = np.flatnonzero(self.slot_keys != self.FREE)
        keys, indices = self.slot_keys[used], self.slot_index[used]
        self._allocate(max(self.bits + 1, math.ceil(math.log2(needed / self.MAX_LOAD))))
        self.size = 0
        self._insert(keys, indices)

    def keys(self) -> np.ndarray:
        """All keys, by index."""
        used = np.flatnonzero(self.slot_keys != self.FREE)
        out = np.empty(self.size, np.int64)
        out[self.slot_index[used]] = self.slot_keys[used]
        return out


class Vocabulary:
    """Per-feature provisional indices and training counts, then final ids by decreasing count."""

    def __init__(self, num_features: int, count_dtype: type = np.int32) -> None:
        self.tables = [KeyTable() for _ in range(num_features)]
        # int32 (< 2**31 rows) keeps np.add.at fast; merged day vocabularies (Terabyte's billions of rows) use int64
        self._counts: list[np.ndarray] = [np.zeros(1024, count_dtype) for _ in range(num_features)]
        self.keys: list[np.ndarray] = []  # after freeze: values in id order (id 1 first)
        self.counts: list[np.ndarray] = []
        self.renumbering: list[np.ndarray] = []  # after freeze: provisional index -> id
        self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="vocabulary")

    def index(self, keys: np.ndarray, counted: np.ndarray) -> np.ndarray:
        """Provisional indices (n x T int32) of a block's keys (T x n); rows in ``counted`` are counted.

        Features are independent, so they are spread over a few threads (numpy
        releases the GIL in the heavy loops).
        """
        out = np.empty(keys.shape[::-1], np.int32)

        def one(t: int) -> None:
            table = self.tables[t]
            indices = table.index(keys[t])
            if len(table) > len(self._counts[t]):
                self._counts[t] = np.concatenate(
                    [self._counts[t], np.zeros(max(len(table), 2 * len(self._counts[t])), np.int32)]
                )
            np.add.at(
                self._counts[t], indices[counted], np.int32(1)
            )  # an int32 one keeps add.at on its fast path (30x)
            out[:, t] = indices

        list(self._pool.map(one, range(len(self.tables))))
        return out

    def provisional(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Before :meth:`freeze`: each feature's values and training counts, by provisional index."""
        return [t.keys() for t in self.tables], [c[: len(t)].copy() for t, c in zip(self.tables, self._counts)]

    def merge(self, keys: list[np.ndarray], counts: list[np.ndarray]) -> list[np.ndarray]:
        """Add another vocabulary's distinct values (each feature's keys, with their training counts); returns
        their provisional indices here, per feature. Values are numbered in the order they are merged."""
        indices = []
        for t, (table, feature_keys, feature_counts) in enumerate(zip(self.tables, keys, counts)):
            index = table.index(feature_keys)
            if len(table) > len(self._counts[t]):
                grown = np.zeros(max(len(table), 2 * len(self._counts[t])), self._counts[t].dtype)
                grown[: len(self._counts[t])] = self._counts[t]
                self._counts[t] = grown
            self._counts[t][index] += feature_counts  # distinct keys: no repeated index
            indices.append(index)
        return indices

    def training_counts(self) -> list[np.ndarray]:
        """Each feature's training counts: by provisional index before :meth:`freeze` (values seen only outside
        training count 0), in id order after it."""
        if self.counts:
            return self.counts
        return [c[: len(t)] for t, c in zip(self.tables, self._counts)]

    def freeze(self) -> None:
        """Number the values seen in training by decreasing count (ties by key) from 1; others get 0."""
        for table, all_counts in zip(self.tables, self._counts):
            keys, counts = table.keys(), all_counts[: len(table)]
            seen = np.flatnonzero(counts)
            order = seen[np.lexsort((keys[seen], -counts[seen]))]
            renumbering = np.zeros(len(table), np.int32)
            renumbering[order] = np.arange(1, len(order) + 1)
            self.keys.append(keys[order])
            self.counts.append(counts[order])
            self.renumbering.append(renumbering)
        self.tables, self._counts = [], []
        self._pool.shutdown()

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
        keep = np.array([int(np.searchsorted(-np.asarray(c), -min_count, side="right")) for c in counts], np.int32)
        return cls(keep, modulus)

    @classmethod
    def from_unordered_counts(cls, counts: list[np.ndarray], min_count: int, modulus: int) -> IdLimits:
        """The same limits from counts in any order (a vocabulary not yet numbered): the values kept, counted
        (:meth:`from_counts` finds them by bisection in id order)."""
        keep = np.array([int(np.count_nonzero(np.asarray(c) >= min_count)) for c in counts], np.int32)
        return cls(keep, modulus)

    @property
    def table_sizes(self) -> list[int]:
        """Rows of each embedding table."""
        sizes = [int(k) + 1 for k in self.keep]
        return [min(n, self.modulus) for n in sizes] if self.modulus else sizes

    def table_counts(self, counts: list[np.ndarray]) -> list[np.ndarray]:
        """Training counts of each table row, from the vocabulary's counts (ids ``1..V`` in id order): rare
        values counted in row 0, rows folded by the modulus."""
        out = []
        for c, keep, size in zip(counts, self.keep, self.table_sizes):
            ids = np.arange(1, len(c) + 1)
            ids[ids > keep] = 0
            if self.modulus:
                ids %= self.modulus
            out.append(np.bincount(ids, weights=np.asarray(c, np.float64), minlength=size))
        return out

    def __call__(self, ids: np.ndarray, tables: Sequence[int] | None = None) -> np.ndarray:
        """Limited ids of a batch (B x T, or B x len(tables): the columns of those features)."""
        keep = self.keep if tables is None else self.keep[list(tables)]
        out = np.where(ids > keep, 0, ids)
        if self.modulus:
            out %= self.modulus
        return out


@dataclass(frozen=True)
class IdBounds:
    """The ids a processed ``S.cat.npy`` may hold: ``0..V`` of feature ``t`` (``V``: its vocabulary size, 0 the
    shared index of rare and unseen values); any other id means the file is damaged.

    Checked on every batch's ids as they are gathered (host batches in the
    assembly thread, data held on a device chunk by chunk as it is loaded), so
    a damaged file stops with one line instead of reading another table's row.
    One comparison of the ids, read as unsigned, with ``V`` per column: a
    negative id reads as a large one.
    """

    upper: np.ndarray  # V per feature, uint32
    file: Path
    features: tuple[str, ...] = ()

    def check(self, ids: np.ndarray, rows: slice | np.ndarray, tables: Sequence[int] | None = None) -> None:
        """Refuse ``ids`` (the ``B x T`` ids of ``rows``, or the columns of ``tables``) if one is out of bounds."""
        upper = self.upper if tables is None else self.upper[list(tables)]
        unsigned = ids.view(np.uint32) if ids.dtype == np.int32 else ids.astype(np.int64).astype(np.uint64)
        if (unsigned > upper).any():
            self.refuse(ids, rows, upper, tables)

    def refuse(
        self, ids: np.ndarray, rows: slice | np.ndarray, upper: np.ndarray, tables: Sequence[int] | None
    ) -> NoReturn:
        """The one-line error naming the file, the row and feature of the first bad id."""
        i, t = np.argwhere((ids.astype(np.int64) < 0) | (ids.astype(np.int64) > upper))[0]
        row = rows.start + int(i) if isinstance(rows, slice) else int(rows[i])
        feature = int(t) if tables is None else list(tables)[t]
        name = self.features[feature] if feature < len(self.features) else f"feature {feature + 1}"
        raise UserError(
            f"{self.file}: row {row:,}: id {int(ids[i, t])} of {name} is outside 0..{int(upper[t]):,} (its "
            f"vocabulary); the processed data are damaged: delete {self.file.parent} and give --raw-data-file to "
            "rebuild them"
        )
