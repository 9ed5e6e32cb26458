"""The two passes over a raw file: read it once (check rows, count and index values, write each split's
arrays), then renumber the values by frequency.

Below both :mod:`cache` (one raw file) and :mod:`days` (Terabyte's day files, read by worker processes),
which each run pass 1 with their own :class:`Reading`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mlet.core.errors import UserError
from mlet.data.preprocessing.arrays import NpyWriter, renumber_file
from mlet.data.preprocessing.layouts import Layout
from mlet.data.preprocessing.raw_data import ParsedBlock, read_blocks
from mlet.data.preprocessing.splits import TRAIN, BadRows, Log, check_rows, dense_transform, sub_sample_keep
from mlet.data.preprocessing.vocabulary import Vocabulary

SPLITS = ("train", "test", "val")

VocabularyCheck = Callable[[list[np.ndarray]], None]
"""Called with each feature's training counts once pass 1 has read every row (any order of the values): the
earliest point where the data's table sizes are known."""


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
    """What reading a raw file gave: the vocabulary, good rows per split, rows read, bad rows, rows sub-sampled
    away."""

    vocab: Vocabulary
    rows: list[int]
    physical: int
    bad: BadRows
    dropped: int = 0
    train_rows_per_day: list[int] | None = None


@dataclass(frozen=True)
class Reading:
    """How to read one raw file in pass 1: which split each row goes to, where each split's arrays go (a
    file stem per split, ``None``: that split gets no rows), ``--data-sub-sample-rate`` and its salt."""

    assign: Callable[[ParsedBlock], np.ndarray]
    outputs: tuple[str | None, str | None, str | None] = SPLITS
    total: int | None = None
    sub_sample_rate: float = 0.0
    salt: int = 0
    day_of: Callable[[np.ndarray], np.ndarray] | None = None
    days: int = 0


def read_pass(path: Path, layout: Layout, reading: Reading, skip: bool, directory: Path, progress: bool) -> FirstPass:
    """Pass 1, the only one over the text: check rows, index and count values, write each split's arrays.

    The categorical arrays hold provisional indices until :func:`renumber_pass`.
    """
    features = len(layout.categorical_features)
    writers = [
        None
        if stem is None
        else (
            NpyWriter(directory / f"{stem}.dense.npy", np.float32, len(layout.dense_features)),
            NpyWriter(directory / f"{stem}.cat.npy", np.int32, features),
            NpyWriter(directory / f"{stem}.label.npy", np.uint8, None),
        )
        for stem in reading.outputs
    ]
    opened = [w for group in writers if group is not None for w in group]
    vocab, physical, bad, dropped = Vocabulary(features), 0, BadRows(), 0
    per_day = np.zeros(reading.days, np.int64)
    try:
        with progress_bar(reading.total, f"pass 1/2: reading {path.name}", progress) as bar:
            for block in read_blocks(path, layout):
                good = check_rows(block, path, layout, skip, bad)
                split = reading.assign(block)
                keep = good & sub_sample_keep(
                    block.rows, block.labels, split == TRAIN, reading.sub_sample_rate, reading.salt
                )
                dropped += int(good.sum() - keep.sum())
                split = split[keep]
                if reading.day_of is not None:
                    trained = block.rows[keep][split == TRAIN]
                    per_day += np.bincount(reading.day_of(trained), minlength=reading.days)[: reading.days]
                ids = vocab.index(block.keys[:, keep], counted=split == TRAIN)
                dense, labels = dense_transform(block.counts[keep]), block.labels[keep]
                for s, group in enumerate(writers):
                    if group is not None:
                        mine = split == s
                        for writer, values in zip(group, (dense, ids, labels)):
                            writer.write(values[mine])
                physical += len(block.rows) + len(block.wrong_width)
                bar.update(len(block.rows) + len(block.wrong_width))
    except BaseException:
        for writer in opened:
            writer.file.close()  # the files go with the temporary directory
        raise
    for writer in opened:
        writer.close()
    if reading.total is not None and physical != reading.total:
        raise UserError(
            f"{path}: read {physical:,} rows but counted {reading.total:,} lines; "
            "did the file change, or does it use CR-only line ends?"
        )
    rows = [0 if group is None else group[2].rows for group in writers]
    train_days = [int(n) for n in per_day if n] if reading.day_of is not None else None
    return FirstPass(vocab, rows, physical, bad, dropped, train_days)


def renumber_pass(first: FirstPass, directory: Path, progress: bool) -> None:
    """Pass 2: fix the vocabulary and renumber the categorical arrays from provisional indices to ids."""
    first.vocab.freeze()
    with progress_bar(sum(first.rows), "pass 2/2: renumbering", progress) as bar:
        for name, rows in zip(SPLITS, first.rows):
            renumber_file(directory / f"{name}.cat.npy", first.vocab.renumbering)
            bar.update(rows)


def check_training_rows(
    first: FirstPass, raw: Path | str, settings: dict, log: Log, vocabulary_check: VocabularyCheck | None = None
) -> None:
    """Log the bad rows skipped; refuse data without training rows; then ``vocabulary_check`` the training
    counts."""
    if first.bad.total:
        log(f"  {first.bad.summary()}")
    if not first.rows[0]:
        raise UserError(
            f"{raw}: no training rows in the {settings['data_split']} split "
            f"({first.physical:,} rows read, {first.bad.total:,} bad)"
        )
    if vocabulary_check is not None:
        vocabulary_check(first.vocab.training_counts())
