"""Preprocessing: a raw click log -> vocabularies, splits and memory-mappable arrays, cached.

:func:`prepare` is the entry point. It reuses the processed data in the
``--processed-data-file`` directory when that was made from the same raw file
(size, modification time and a sampled content fingerprint) with the same
settings, and otherwise (re)builds it, saying why. A build streams the raw
file (:mod:`raw_data`) in bounded memory:

0. plan the split: ``dlrm`` counts the file's lines (bytes only); Avazu's
   ``by-day`` reads the ``hour`` column to find the last day;
1. read the rows once (:mod:`passes`): stop at (or, with ``--skip-bad-rows``, count) bad rows,
   give each categorical value a provisional index and count it over the
   *training* rows (:mod:`vocabulary`), and append each split's arrays;
2. number the values for good (most frequent first, from 1; 0 is shared by
   values not seen in training) and renumber the categorical arrays in place.

Everything is written to a temporary sibling directory that is renamed into
place at the end: a killed run leaves nothing that a later run would trust.
Runs take turns to check and build (the build lock); a cache that another run
reads is not rebuilt (:mod:`readers`).

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
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
from tqdm import tqdm

from mlet.core import waits
from mlet.core.config import DatasetConfig
from mlet.core.errors import UserError
from mlet.core.files import one_at_a_time, process_gone
from mlet.core.signals import signals_held
from mlet.data.preprocessing import days, readers
from mlet.data.preprocessing.layouts import UPSTREAM_NPZ, Layout, categorical_features, detect_layout, is_upstream_npz
from mlet.data.preprocessing.passes import (
    SPLITS,
    FirstPass,
    Reading,
    VocabularyCheck,
    check_training_rows,
    read_pass,
    renumber_pass,
)
from mlet.data.preprocessing.splits import (
    Log,
    plan_split,
)
from mlet.data.preprocessing.vocabulary import IdBounds, IdLimits

FORMAT = "dlrm-mlet-processed"
VERSION = 1
SPLIT_CHOICES = {"kaggle": ("dlrm", "random-811"), "terabyte": ("dlrm",), "avazu": ("random-811", "by-day")}
DAY_SPLITS = ("dlrm",)  # the splits whose training rows come in days (for --data-randomize=day)
DEFAULT_SPLIT = {"kaggle": "dlrm", "terabyte": "dlrm", "avazu": "random-811"}
DENSE_INPUTS = {"kaggle": 13, "terabyte": 13, "avazu": 1}  # Avazu: one constant 1.0 (see Processed.split)


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


def source_info(path: Path, data_set: str = "kaggle") -> dict:
    """What identifies the raw file: its path, size, modification time (ns) and sampled :func:`fingerprint`
    (Terabyte: the day files together, by their sizes and fingerprints, and each one's modification time)."""
    if data_set != "terabyte":
        stat = path.stat()
        return {
            "path": str(path.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "fingerprint": fingerprint(path),
        }
    files = days.day_files(str(path))
    digest = hashlib.blake2b(digest_size=16)
    for file in files:
        digest.update(f"{file.name}:{file.stat().st_size}:{fingerprint(file)};".encode())
    return {
        "path": str(path.resolve()),
        "size": sum(file.stat().st_size for file in files),
        "mtime_ns": [file.stat().st_mtime_ns for file in files],
        "fingerprint": digest.hexdigest(),
        "files": [file.name for file in files],
    }


def modified_text(mtime_ns: int | list[int]) -> str:
    """A modification time for a log line (local time, to the second; of day files, the newest)."""
    newest = max(mtime_ns) if isinstance(mtime_ns, list) else mtime_ns
    return datetime.datetime.fromtimestamp(newest / 1e9).isoformat(sep=" ", timespec="seconds")


def source_change(old: dict, new: dict) -> str | None:
    """Why the raw file ``new`` (:func:`source_info`) is not the one a cache was made from (``old``), or None.

    Size first, then the sampled content, then the modification time: a
    same-size edit between the sampled chunks changes only the last, so any
    change of it counts, even where size and sampled content agree (a copy
    without ``cp -p``, a ``touch``): rebuilding costs minutes, a stale cache
    wrong results.
    """
    if old["size"] != new["size"]:
        return f"it was made from another raw file ({old['path']}, {old['size']:,} bytes; now {new['size']:,} bytes)"
    if old["fingerprint"] != new["fingerprint"]:
        return f"it was made from another raw file ({old['path']}: same size, different content)"
    if "mtime_ns" not in old:
        return "it does not record the raw file's modification time (made before that was compared)"
    if old["mtime_ns"] != new["mtime_ns"]:
        return (
            f"the raw file was modified since ({old['path']}: same size and sampled content, "
            f"modified {modified_text(old['mtime_ns'])} -> {modified_text(new['mtime_ns'])})"
        )
    return None


def cache_settings(data_set: str, split: str, split_seed: int, sub_sample_rate: float = 0.0) -> dict:
    """The settings the processed data depend on (the sub-sampling keys only when it is on, so that caches made
    before it existed stay valid)."""
    seeded = split == "random-811" or sub_sample_rate > 0
    settings: dict[str, object] = {
        "data_set": data_set,
        "data_split": split,
        "split_seed": split_seed if seeded else None,
    }
    if sub_sample_rate > 0:
        settings["sub_sample_rate"] = sub_sample_rate
    return settings


def processed_directory(raw: str | None, processed: str | None) -> Path:
    """Where the processed data of ``--raw-data-file`` ``raw`` are: ``--processed-data-file`` when given, else
    beside the raw file (``RAW.processed``). A path without a name of its own (``.``, ``..``) is made absolute:
    the build's lock and temporaries go beside the directory, named after it."""
    if not processed:
        return Path(f"{named(str(raw)).rstrip('/')}.processed")  # Terabyte's folder "." -> ../FOLDER.processed
    return Path(named(processed))


def named(path: str) -> str:
    """``path``, made absolute where it has no name of its own (``.``, ``..``, ``DIR/..``)."""
    return path if Path(path).name not in ("", "..") else os.path.abspath(path)


def files_record(raw: str | None, processed: str | None, fingerprint: str | None) -> dict:
    """Which files a data set's rows come from, as checkpoints record them: the raw file (``--raw-data-file``,
    resolved; empty when only processed data were given), the processed directory (resolved) and the raw file's
    sampled :func:`fingerprint` (its content, wherever it lies; None where unknown)."""
    return {
        "raw_data_file": str(Path(raw).resolve()) if raw else "",
        "processed_data_file": str(processed_directory(raw, processed).resolve()),
        "fingerprint": fingerprint,
    }


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
    if (change := source_change(meta["source"], source)) is not None:
        return change
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
    """Refuse to replace anything but processed data (complete or not) or an empty directory, and the current
    directory: the build renames a new directory in its place, which would leave this process (and the shell it
    was started from) in a deleted one."""
    if directory.exists() and not directory.is_dir():
        raise UserError(f"--processed-data-file: {directory} is a file; give a directory for the processed data")
    if directory.is_dir() and meta is None and any(p.name not in OWN_FILES for p in directory.iterdir()):
        raise UserError(
            f"--processed-data-file: {directory} is not empty and holds no processed data (meta.json); "
            "give a new or empty directory"
        )
    here = Path.cwd().resolve()
    if directory.resolve() in (here, *here.parents):
        raise UserError(
            f"--processed-data-file: {directory} is the current directory; a build replaces the whole directory: "
            f"give a new one, e.g. {directory / 'processed'}"
        )


def sibling(directory: Path, kind: str) -> Path:
    """This process's ``kind`` (``tmp``: a build under way, ``old``: the data a rebuild replaced) directory beside
    ``directory``: ``.NAME.KIND-HOST-PID``. The host in the name keeps another host's live build on a shared disk
    from being taken for a dead one of this host."""
    return directory.with_name(f".{directory.name}.{kind}-{socket.gethostname()}-{os.getpid()}")


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporary build directories and replaced old ones left by killed runs, or by a rebuild on NFS that
    could not remove a file still open (the client keeps it as ``.nfsXXXX`` until it is closed): those of this
    host whose process is gone (``.NAME.KIND-PID``, without a host, as older versions named them: taken for this
    host's). One of a live process, or of another host, is left alone."""
    for kind in ("tmp", "old"):
        prefix = f".{directory.name}.{kind}-"
        for path in directory.parent.glob(f"{prefix}*"):
            host, _, pid = path.name.removeprefix(prefix).rpartition("-")
            if pid.isdigit() and process_gone(host or socket.gethostname(), int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def replaced(directory: Path) -> Path:
    """Where this process's rebuild of ``directory`` moves the processed data it replaces, until it removes them."""
    return sibling(directory, "old")


def install(tmp: Path, directory: Path, old: Path) -> None:
    """Move the finished build into place, an old processed directory aside to ``old`` (for the caller to remove).
    Ctrl-C and SIGTERM wait for both renames: ``directory`` is the old data or the new, never missing; should the
    second rename fail (an I/O error), the old data go back before the error is raised."""
    with signals_held():
        if directory.exists():
            os.replace(directory, old)
        try:
            os.replace(tmp, directory)
        except BaseException:
            if old.exists() and not directory.exists():
                os.replace(old, directory)
            raise


def single_file(
    raw: Path,
    layout: Layout,
    settings: dict,
    skip: bool,
    tmp: Path,
    progress: bool,
    log: Log,
    vocabulary_check: VocabularyCheck | None = None,
) -> tuple[FirstPass, dict]:
    """Both passes over one raw file (Kaggle, Avazu) into ``tmp``; the result and the split's details
    (``vocabulary_check``: see :func:`~mlet.data.preprocessing.passes.check_training_rows`)."""
    start = time.perf_counter()
    plan = plan_split(raw, layout, settings["data_split"], settings["split_seed"] or 0, progress, log)
    reading = Reading(
        plan.assigner(),
        total=plan.total if plan.kind == "dlrm" else None,
        sub_sample_rate=settings.get("sub_sample_rate", 0.0),
        salt=settings["split_seed"] or 0,
        day_of=plan.day_of() if plan.kind == "dlrm" else None,
        days=7,
    )
    first = read_pass(raw, layout, reading, skip, tmp, progress)
    read = time.perf_counter() - start
    log(f"  pass 1/2: {first.physical:,} rows in {read:.1f} s ({first.physical / read:,.0f} rows/s)")
    check_training_rows(first, raw, settings, log, vocabulary_check)
    renumber_pass(first, tmp, progress)
    details = dict(plan.details)
    if first.train_rows_per_day is not None:
        details["train_rows_per_day"] = first.train_rows_per_day
    return first, details


def build(
    raw: Path,
    directory: Path,
    layout: Layout,
    settings: dict,
    source: dict,
    skip: bool,
    progress: bool,
    log: Log,
    vocabulary_check: VocabularyCheck | None = None,
) -> dict:
    """Preprocess ``raw`` (a file; for Terabyte the day prefix) into ``directory`` (through a temporary
    sibling); returns the metadata. The processed data it replaces are moved to :func:`replaced`, for the caller to
    remove. ``vocabulary_check`` sees the training counts after pass 1."""
    start = time.perf_counter()
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = sibling(directory, "tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as error:  # a file where a folder should be: named (mkdir says only "File exists")
        blocking = next((parent for parent in directory.parents if parent.exists() and not parent.is_dir()), None)
        why = f"{blocking} is a file, not a folder" if blocking is not None else error.strerror
        raise UserError(f"--processed-data-file: cannot create {directory}: {why}") from None
    try:
        if settings["data_set"] == "terabyte":
            first, details = days.build_days(str(raw), layout, settings, skip, tmp, progress, log, vocabulary_check)
        else:
            first, details = single_file(raw, layout, settings, skip, tmp, progress, log, vocabulary_check)
        np.save(tmp / "vocab_keys.npy", np.concatenate(first.vocab.keys))
        np.save(tmp / "vocab_counts.npy", np.concatenate(first.vocab.counts))
        seconds = time.perf_counter() - start
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "settings": settings,
            "source": {**source, "layout": layout.name},
            "features": {"dense": list(layout.dense_features), "categorical": list(layout.categorical_features)},
            "rows": dict(zip(SPLITS, first.rows)),
            "physical_rows": first.physical,
            "sub_sampled_away": first.dropped,
            "split": details,
            "vocabulary_sizes": first.vocab.sizes,
            "bad_rows": first.bad.to_dict(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "seconds": round(seconds, 2),
            "rows_per_second": round(first.physical / seconds),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        install(tmp, directory, replaced(directory))
    finally:  # also when interrupted
        shutil.rmtree(tmp, ignore_errors=True)
    rows = first.rows
    dropped = f" ({first.dropped:,} negative training rows sub-sampled away)" if first.dropped else ""
    log(
        f"  done: {first.physical:,} rows in {seconds:.1f} s ({first.physical / seconds:,.0f} rows/s); "
        f"train {rows[0]:,}, test {rows[1]:,}, val {rows[2]:,}{dropped}"
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

    def id_bounds(self, name: str) -> IdBounds:
        """The ids that split ``name``'s ``cat.npy`` may hold (checked on every batch)."""
        sizes = np.asarray(self.meta["vocabulary_sizes"], np.uint32)
        return IdBounds(sizes, self.directory / f"{name}.cat.npy", self.categorical_features)

    @property
    def categorical_features(self) -> tuple[str, ...]:
        """The categorical features' names, in column order (data processed before they were recorded: the data
        set's)."""
        recorded = tuple(self.meta.get("features", {}).get("categorical", ()))
        return recorded or categorical_features(self.meta["settings"]["data_set"])

    def vocabulary_counts(self) -> list[np.ndarray]:
        """Each feature's training counts in id order."""
        counts = np.load(self.directory / "vocab_counts.npy", mmap_mode="r")
        bounds = np.cumsum([0, *self.meta["vocabulary_sizes"]])
        return [counts[a:b] for a, b in itertools.pairwise(bounds)]

    def limits(self, min_count: int, max_ind_range: int) -> IdLimits:
        """The id limits (and so table sizes) for ``--cat-min-count`` and ``--max-ind-range``."""
        return IdLimits.from_counts(self.vocabulary_counts(), min_count, max_ind_range)

    def training_days(self) -> list[int] | None:
        """Training rows of each day, in order (for ``--data-randomize=day``); None if the split has no days."""
        return self.meta.get("split", {}).get("train_rows_per_day")

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
    sub_sample_rate: float = 0.0,
    vocabulary_check: VocabularyCheck | None = None,
) -> Processed:
    """The processed data for these settings: reused when valid, else built from ``raw`` (Terabyte: the day
    prefix or folder; ``vocabulary_check`` sees the training counts as soon as they are known, after pass 1)."""
    if not raw and not processed:
        raise UserError("--raw-data-file: needed (or the --processed-data-file of data processed before)")
    directory = processed_directory(raw, processed)
    if not directory.name:
        raise UserError(f"--processed-data-file: {processed} is the file system's root; give a directory of its own")
    if is_upstream_npz(directory):
        raise UserError(
            f"--processed-data-file: {directory} is {UPSTREAM_NPZ}; this project keeps its processed data in a "
            "directory of its own: give the raw train.txt as --raw-data-file and a new directory here"
        )
    settings = cache_settings(data_set, split, split_seed, sub_sample_rate)
    if not raw:
        return processed_only(directory, settings, log)
    layout = days.day_layout(raw) if data_set == "terabyte" else detect_layout(raw, data_set)
    source = source_info(Path(raw), data_set)
    with one_at_a_time(directory, lambda holder: waiting(log, f"another run's build of {directory} ({holder})")):
        # one run at a time checks and builds: one that waited finds the other's build, and uses it
        waits.done_waiting()
        remove_stale_temporaries(directory)
        meta = read_meta(directory)
        reason = why_rebuild(meta, directory, settings, source, skip_bad_rows)
        if reason is None and meta is not None:
            skipped = (
                f"; {meta['bad_rows']['total']:,} bad rows were skipped making it" if meta["bad_rows"]["total"] else ""
            )
            made = f"made {meta.get('created')} from {meta['source']['path']}{skipped}"
            log(f"using processed data in {directory} ({made})")
            readers.start_reading(directory)  # no rebuild can be under way: this run holds the build lock
            return Processed(directory, meta)
        check_target(directory, meta)
        try:
            with readers.replacing(directory, lambda holders: refuse_replacing(directory, str(reason), holders)):
                log(f"preprocessing {raw} into {directory}: {reason}")
                built = build(
                    Path(raw), directory, layout, settings, source, skip_bad_rows, progress, log, vocabulary_check
                )
        finally:
            # only once `replacing` has closed the old meta.json (held for its lock): on NFS a file still open is
            # not removed but renamed to .nfsXXXX, and the old directory would stay
            shutil.rmtree(replaced(directory), ignore_errors=True)
    return Processed(directory, built)


def refuse_replacing(directory: Path, reason: str, holders: list[str]) -> NoReturn:
    """The one-line refusal to rebuild the cache in ``directory`` (for ``reason``) that other runs read."""
    who = "a process on another host"
    if holders:  # one named: a torchrun run's 8 processes would make the line 8 commands long
        who = holders[0] + (f" and {len(holders) - 1} more" if len(holders) > 1 else "")
    raise UserError(
        f"--processed-data-file {directory}: another run is reading it ({who}); this run would rebuild it, since "
        f"{reason}; give this run another --processed-data-file, or wait for that run to end"
    )


def waiting(log: Log, what: str) -> None:
    """``log`` that this run waits for ``what`` (another run's build), shown now (not held in an output file's
    buffer); the run's other processes, which wait for this one, are told too (:mod:`~mlet.core.waits`)."""
    log(f"waiting for {what}")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    waits.waiting_for(what)


def processed_only(directory: Path, settings: dict, log: Log) -> Processed:
    """The processed data in ``directory`` without a raw file to make them from: a :class:`UserError` unless they
    are complete and made with ``settings``. This run reads them from then on, which no rebuild may replace; a
    rebuild under way is waited for."""
    was_reading = readers.is_reading(directory)
    readers.start_reading(directory, lambda: waiting(log, f"another run's build of {directory}"))
    waits.done_waiting()
    try:
        return check_processed(directory, settings)
    except UserError:
        if not was_reading:
            readers.stop_reading(directory)
        raise


def check_processed(directory: Path, settings: dict) -> Processed:
    """The processed data in ``directory``, which must be complete and made with ``settings`` (see
    :func:`processed_only`)."""
    meta = read_meta(directory)
    if meta is None:
        raise UserError(f"--processed-data-file: {directory} holds no processed data; give --raw-data-file to make it")
    if meta["settings"] != settings or meta.get("version") != VERSION:
        raise UserError(
            f"--processed-data-file: {directory} was made with {meta['settings']} (version {meta.get('version')}); "
            "give --raw-data-file to rebuild it"
        )
    if (damage := damaged_file(directory, meta)) is not None:
        raise UserError(f"--processed-data-file: {directory}: {damage}; give --raw-data-file to rebuild it")
    return Processed(directory, meta)


def prepare_dataset(
    dataset: DatasetConfig,
    progress: bool = True,
    log: Log = tqdm.write,
    vocabulary_check: VocabularyCheck | None = None,
) -> Processed:
    """:func:`prepare` for a checked :class:`~mlet.core.config.DatasetConfig`."""
    return prepare(
        dataset.raw_data_file,
        dataset.processed_data_file,
        dataset.data_set,
        dataset.split,
        dataset.split_seed,
        dataset.skip_bad_rows,
        progress,
        log,
        dataset.sub_sample_rate,
        vocabulary_check,
    )
