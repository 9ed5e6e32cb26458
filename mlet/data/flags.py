"""The data-set flags that ``dlrm_mlet.py`` and ``data_utils.py preprocess`` share, checked into a
:class:`DatasetConfig`."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from mlet.core.config import DATA_SETS, DatasetConfig
from mlet.core.errors import UserError
from mlet.data.preprocessing.cache import DAY_SPLITS, DEFAULT_SPLIT, SPLIT_CHOICES
from mlet.data.preprocessing.days import day_files
from mlet.data.preprocessing.layouts import categorical_features, check_input_file

DATA_SPLITS = ("dlrm", "random-811", "by-day")
RANDOMIZE = ("total", "day", "none")
DEFAULT_MAX_IND_RANGE = {"terabyte": 40_000_000}  # upstream's Terabyte scripts (MLPerf: run_and_time.sh)


def add_dataset_flags(group: argparse._ActionsContainer) -> None:
    """The flags of ``--data-generation=dataset`` (shared by dlrm_mlet.py and ``data_utils.py preprocess``)."""
    group.add_argument("--data-set", choices=DATA_SETS, default="kaggle", help="data set for --data-generation=dataset")
    group.add_argument(
        "--raw-data-file",
        type=str,
        default="",
        help=(
            "the raw download (plain or .gz): Criteo-Kaggle train.txt (or the competition CSV); Criteo Terabyte: "
            "the day_ prefix (e.g. ./input/day) or the folder of day_0 ... day_23; Avazu train (default: none)"
        ),
    )
    group.add_argument(
        "--processed-data-file",
        type=str,
        default="",
        help=(
            "directory of the processed data (made on first use, reused while the raw file and split are the same; "
            "default: RAW.processed)"
        ),
    )
    group.add_argument(
        "--data-split",
        choices=DATA_SPLITS,
        default=None,
        help=(
            "kaggle: dlrm (days 1-6 train, day 7 test/val) or random-811; terabyte: dlrm (days 0-22 train, day 23 "
            "test/val); avazu: random-811 or by-day (last day held out) (default: dlrm, or random-811 for avazu)"
        ),
    )
    group.add_argument(
        "--data-split-seed", type=int, default=0, help="seed of the random-811 split and of --data-sub-sample-rate"
    )
    group.add_argument(
        "--data-sub-sample-rate",
        type=float,
        default=0.0,
        help="drop this share of the negative training rows at preprocessing, seeded (upstream's; 0: keep all)",
    )
    group.add_argument(
        "--data-randomize",
        choices=RANDOMIZE,
        default="total",
        help="training order each epoch: total (all rows shuffled), day (shuffled within each day), none (file order)",
    )
    group.add_argument(
        "--cat-min-count",
        type=int,
        default=1,
        help="values seen fewer times in training share one 'rare' index with unseen values",
    )
    group.add_argument(
        "--max-ind-range",
        type=int,
        default=None,
        help=(
            "cap tables at R rows: id mod R, as upstream DLRM; 0 or -1: off "
            "(default: 40000000 for terabyte, as upstream's Terabyte scripts; off otherwise)"
        ),
    )
    group.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="skip malformed rows (counted by kind and reported) instead of stopping at the first",
    )


def dataset_config(args: argparse.Namespace) -> DatasetConfig:
    """The checked data-set flags (``--data-split`` resolved to the data set's default); a :class:`UserError`
    names a bad flag."""
    split = args.data_split or DEFAULT_SPLIT[args.data_set]
    if split not in SPLIT_CHOICES[args.data_set]:
        raise UserError(
            f"--data-split: {split} is not a split of {args.data_set}; "
            f"choose {' or '.join(SPLIT_CHOICES[args.data_set])}"
        )
    if args.data_randomize == "day" and split not in DAY_SPLITS:
        raise UserError(f"--data-randomize=day: the {split} split of {args.data_set} has no days; use total or none")
    if args.cat_min_count < 1:
        raise UserError(f"--cat-min-count: must be >= 1, got {args.cat_min_count}")
    if args.max_ind_range is not None and args.max_ind_range < -1:
        raise UserError(f"--max-ind-range: must be >= 0 (0 or -1: off), got {args.max_ind_range}")
    if not 0.0 <= args.data_sub_sample_rate < 1.0:
        raise UserError(f"--data-sub-sample-rate: must be in [0, 1), got {args.data_sub_sample_rate}")
    if not args.raw_data_file and not args.processed_data_file:
        raise UserError("--raw-data-file: needed (or the --processed-data-file of data processed before)")
    if args.raw_data_file and args.data_set == "terabyte":
        day_files(args.raw_data_file)
    elif args.raw_data_file:
        check_input_file(args.raw_data_file)
    resolved = {"data_split": split, "max_ind_range": max_ind_range(args.data_set, args.max_ind_range)}
    return recorded_dataset_config({**vars(args), **resolved})


def max_ind_range(data_set: str, value: int | None) -> int:
    """``--max-ind-range`` resolved: the data set's default when not given, 0 for off (0 or -1)."""
    if value is None:
        return DEFAULT_MAX_IND_RANGE.get(data_set, 0)
    return max(value, 0)


def recorded_dataset_config(flags: Mapping[str, Any]) -> DatasetConfig:
    """The :class:`DatasetConfig` of flags as a checkpoint or results file records them (``data_split``
    resolved); no checks."""
    return DatasetConfig(
        data_set=flags["data_set"],
        raw_data_file=flags["raw_data_file"],
        processed_data_file=flags["processed_data_file"],
        split=flags["data_split"],
        split_seed=flags["data_split_seed"],
        cat_min_count=flags["cat_min_count"],
        max_ind_range=max_ind_range(flags["data_set"], flags["max_ind_range"]),
        skip_bad_rows=flags["skip_bad_rows"],
        sub_sample_rate=flags.get("data_sub_sample_rate", 0.0),
        randomize=flags.get("data_randomize", "total"),
    )


def table_size_mismatch(given: Sequence[int], found: Sequence[int], features: Sequence[str]) -> str | None:
    """The line naming ``--arch-embedding-size``, the first table whose size differs from the data's (``found``,
    one per feature of ``features``) and both sizes; None when they agree."""
    if len(given) != len(found):
        return table_count_mismatch(len(given), features)
    for t, (mine, theirs) in enumerate(zip(given, found)):
        if mine != theirs:
            return (
                f"--arch-embedding-size: table {t + 1} ({features[t]}) has {mine:,} rows, the data's has {theirs:,}"
                f" (the data's sizes: {'-'.join(map(str, found))}); leave the flag out to use them"
            )
    return None


def table_count_mismatch(count: int, features: Sequence[str]) -> str:
    """The line for an ``--arch-embedding-size`` of ``count`` tables where the data have one per feature."""
    return (
        f"--arch-embedding-size: gives {count} tables, the data have {len(features)} categorical features"
        f" ({features[0]} ... {features[-1]}), one table each; leave the flag out to use the data's sizes"
    )


def check_given_table_sizes(sizes: Sequence[int], dataset: DatasetConfig) -> None:
    """Refuse, before any data is read, an explicit ``--arch-embedding-size`` that no preprocessing of
    ``dataset`` can match: another number of tables than the data set's categorical features, or a table larger
    than ``--max-ind-range`` lets any be. The sizes themselves are compared once the data's are known
    (:func:`~mlet.data.sources.dataset_bundle`)."""
    features = categorical_features(dataset.data_set)
    if len(sizes) != len(features):
        raise UserError(table_count_mismatch(len(sizes), features))
    cap = dataset.max_ind_range
    for t, size in enumerate(sizes):
        if cap and size > cap:
            raise UserError(
                f"--arch-embedding-size: table {t + 1} ({features[t]}) has {size:,} rows, more than any table of the"
                f" data can have under --max-ind-range={cap} (it caps every table at {cap:,} rows)"
            )
