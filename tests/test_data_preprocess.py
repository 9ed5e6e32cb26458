"""Preprocessing: hash table, vocabularies and min-count, splits, the cache and its invalidation."""

from __future__ import annotations

import json
import os
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import run_snippet, sample_file

from mlet.core.errors import UserError
from mlet.data.preprocessing import cache as preprocess
from mlet.data.preprocessing.cache import prepare
from mlet.data.preprocessing.raw_data import MISSING
from mlet.data.preprocessing.splits import SplitPlan
from mlet.data.preprocessing.vocabulary import IdLimits, KeyTable, Vocabulary


def quiet_prepare(raw, directory, data_set="kaggle", split="dlrm", logs=None, **kw):
    """``prepare`` without progress bars, collecting log lines."""
    logs = [] if logs is None else logs
    return prepare(str(raw) if raw else None, str(directory), data_set, split, progress=False, log=logs.append, **kw)


def test_key_table_indexes_keys_in_order_of_first_appearance_through_growth() -> None:
    rng = np.random.default_rng(0)
    table, reference = KeyTable(capacity=16), {}
    pool = np.concatenate([rng.integers(-(2**62), 2**62, 5000), [int(MISSING), -1, 0, 1]])
    for _ in range(30):
        keys = rng.choice(pool, 700)
        got = table.index(keys)
        for k in keys.tolist():
            reference.setdefault(k, len(reference))
        assert got.tolist() == [reference[k] for k in keys.tolist()]
    assert len(table) == len(reference) and len(table.slot_keys) > 1024  # it grew
    assert table.keys().tolist() == list(reference)
    assert table.lookup(np.array([12345, 2**62 + 7, keys[0]])).tolist() == [-1, -1, reference[int(keys[0])]]


def test_vocabulary_counts_training_rows_and_numbers_by_frequency() -> None:
    vocab = Vocabulary(2)
    keys = np.array([[5, 7, 7, 9, 9, 9, 4], [1, 1, 1, 1, 2, 2, 3]])
    counted = np.array([True, True, True, True, True, True, False])
    provisional = vocab.index(keys, counted)
    assert provisional[:, 0].tolist() == [0, 1, 1, 2, 2, 2, 3]
    vocab.freeze()
    ids = np.stack([r[provisional[:, t]] for t, r in enumerate(vocab.renumbering)], axis=1)
    assert ids[:, 0].tolist() == [3, 2, 2, 1, 1, 1, 0]  # 9 (3x), 7 (2x), 5 (1x); 4 only in an uncounted row
    assert ids[:, 1].tolist() == [1, 1, 1, 1, 2, 2, 0]
    assert vocab.keys[0].tolist() == [9, 7, 5] and vocab.counts[0].tolist() == [3, 2, 1] and vocab.sizes == [3, 2]


def reference_kaggle(path) -> tuple[np.ndarray, list[list[int]]]:
    """Labels and categorical keys of a Kaggle TSV, parsed the slow way."""
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    return np.array([int(r[0]) for r in rows]), [[int(v, 16) if v else int(MISSING) for v in r[14:]] for r in rows]


def test_vocabulary_ids_follow_training_counts_and_min_count(tmp_path) -> None:
    raw = sample_file("criteo_kaggle_train_head1999.txt")
    data = quiet_prepare(raw, tmp_path / "p")
    labels, keys = reference_kaggle(raw)
    train_end, test_end = 1714, 1857  # 1999 rows = 4 days of 286 + 3 of 285; day 7: 143 test, 142 val
    assert data.meta["rows"] == {"train": 1714, "test": 143, "val": 142}
    processed = {s: data.split(s) for s in preprocess.SPLITS}
    for s, (lo, hi) in zip(preprocess.SPLITS, [(0, train_end), (train_end, test_end), (test_end, 1999)]):
        assert processed[s][2].tolist() == labels[lo:hi].tolist()  # rows in file order
    counts = [Counter(row[t] for row in keys[:train_end]) for t in range(26)]
    ids = [{k: i + 1 for i, (k, _) in enumerate(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))} for c in counts]
    assert data.meta["vocabulary_sizes"] == [len(c) for c in counts]
    for s, (lo, hi) in zip(preprocess.SPLITS, [(0, train_end), (train_end, test_end), (test_end, 1999)]):
        expected = [[ids[t].get(row[t], 0) for t in range(26)] for row in keys[lo:hi]]
        assert processed[s][1].tolist() == expected
    assert (processed["test"][1] == 0).any()  # values never seen in training share index 0
    limits = data.limits(min_count=3, max_ind_range=0)
    kept = [sum(n >= 3 for n in c.values()) for c in counts]
    assert limits.table_sizes == [k + 1 for k in kept]
    cat = processed["train"][1]
    rare = np.array([[counts[t][row[t]] < 3 for t in range(26)] for row in keys[:train_end]])
    limited = limits(np.asarray(cat))
    assert np.array_equal(limited == 0, rare) and np.array_equal(limited[~rare], np.asarray(cat)[~rare])
    hashed = data.limits(min_count=1, max_ind_range=50)
    assert hashed.table_sizes == [min(len(c) + 1, 50) for c in counts]
    assert np.array_equal(hashed(np.asarray(cat)), np.asarray(cat) % 50)


def test_id_limits_on_a_batch() -> None:
    limits = IdLimits.from_counts([np.array([9, 5, 2, 1]), np.array([3, 3])], min_count=3, modulus=0)
    assert limits.keep.tolist() == [2, 2] and limits.table_sizes == [3, 3]
    assert limits(np.array([[1, 1], [2, 2], [3, 0], [4, 2]], np.int32)).tolist() == [[1, 1], [2, 2], [0, 0], [0, 2]]
    capped = IdLimits(np.array([4, 2], np.int32), modulus=2)
    assert capped.table_sizes == [2, 2] and capped(np.array([[3, 2]], np.int32)).tolist() == [[1, 0]]


def test_table_sizes_are_known_from_the_counts_of_pass_1_before_the_ids_are_numbered() -> None:
    """The vocabulary's training counts before freeze (provisional order, values seen only in test/val counted 0)
    give the table sizes the numbered vocabulary gives, for every min-count and modulus."""
    vocab = Vocabulary(2)
    keys = np.array([[5, 5, 5, 7, 7, 9, 13, 11], [1, 2, 2, 2, 3, 3, 3, 3]], np.int64)
    vocab.index(keys, counted=np.array([True] * 7 + [False]))  # the last row is a test row: 11 never trained
    before = vocab.training_counts()
    assert [c.tolist() for c in before] == [[3, 2, 1, 1, 0], [1, 3, 3]]
    unordered = [c.copy() for c in before]
    vocab.freeze()
    assert [c.tolist() for c in vocab.training_counts()] == [[3, 2, 1, 1], [3, 3, 1]]  # in id order now
    for min_count, modulus in ((1, 0), (2, 0), (3, 0), (4, 0), (1, 2), (2, 3)):
        early = IdLimits.from_unordered_counts(unordered, min_count, modulus)
        assert early.table_sizes == IdLimits.from_counts(vocab.counts, min_count, modulus).table_sizes


@pytest.mark.parametrize(
    ("total", "expected"), [(1999, (1714, 143, 142)), (7, (6, 1, 0)), (70, (60, 5, 5)), (13, (12, 1, 0))]
)
def test_dlrm_split_sizes_follow_upstream(total: int, expected: tuple[int, int, int]) -> None:
    """Upstream: divmod into 7 days (the first days one longer), days 1-6 train, day 7 split by np.array_split."""
    split = SplitPlan("dlrm", total=total).assigner()(SimpleNamespace(rows=np.arange(total)))
    assert tuple(np.bincount(split, minlength=3).tolist()) == expected
    assert np.all(np.diff(split.astype(int)) >= 0)  # contiguous: train, then test, then val
    per_day, extra = divmod(total, 7)
    day7 = np.array_split(np.arange(total), np.cumsum([per_day + (d < extra) for d in range(7)])[:-1])[-1]
    test, val = np.array_split(day7, 2)
    assert np.flatnonzero(split == 1).tolist() == test.tolist() and np.flatnonzero(split == 2).tolist() == val.tolist()


def test_random_811_split_is_seeded_and_close_to_8_1_1() -> None:
    rows = SimpleNamespace(rows=np.arange(200_000))
    a = SplitPlan("random-811", seed=0).assigner()(rows)
    b = SplitPlan("random-811", seed=0).assigner()(rows)
    c = SplitPlan("random-811", seed=1).assigner()(rows)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.allclose(np.bincount(a) / len(a), [0.8, 0.1, 0.1], atol=0.005)
    in_blocks = np.concatenate(
        [SplitPlan("random-811").assigner()(SimpleNamespace(rows=r)) for r in np.array_split(rows.rows, 7)]
    )
    assert np.array_equal(in_blocks, a)  # a row's split does not depend on how the file is cut into blocks


@pytest.mark.slow
def test_by_day_split_holds_out_the_last_day(tmp_path) -> None:
    from mlet.data.preprocessing.raw_generate import RawGenerator

    raw = tmp_path / "avazu.csv"
    RawGenerator("avazu", 2000, seed=3, scale=0.001).write(raw)
    data = quiet_prepare(raw, tmp_path / "p", "avazu", "by-day")
    assert data.meta["rows"] == {"train": 1800, "test": 100, "val": 100} and data.meta["split"]["last_date"] == 141030
    weekday = {141021 + d: (1 + d) % 7 for d in range(10)}  # 2014-10-21 was a Tuesday
    hour_ids = data.split("test")[1][:, 1]
    vocab_keys = np.load(tmp_path / "p" / "vocab_keys.npy")
    weekday_keys = vocab_keys[data.meta["vocabulary_sizes"][0] :][: data.meta["vocabulary_sizes"][1]]
    assert set(weekday_keys[hour_ids - 1].tolist()) == {weekday[141030]}  # held-out rows are all from the last day
    random = quiet_prepare(raw, tmp_path / "r", "avazu", "random-811")
    assert sum(random.meta["rows"].values()) == 2000 and random.meta["rows"]["train"] > 1500


def test_by_day_split_of_a_file_of_one_day_is_refused_before_the_rows_are_read(tmp_path) -> None:
    # The first 2994 rows of Avazu's train (all of hour 14102100) logged "1 days; last day 141021 (2,994 rows)
    # held out", read the whole file, then stopped with "no training rows in the by-day split".
    from mlet.data.preprocessing.raw_generate import RawGenerator

    ten_days = tmp_path / "ten.csv"
    RawGenerator("avazu", 2000, seed=3, scale=0.001).write(ten_days)
    raw = tmp_path / "avazu.csv"
    raw.write_text("".join(ten_days.read_text().splitlines(keepends=True)[:201]))  # the header, then day 141021
    logs: list[str] = []
    with pytest.raises(UserError) as error:
        quiet_prepare(raw, tmp_path / "p", "avazu", "by-day", logs=logs)
    assert str(error.value) == (
        f"{raw}: --data-split=by-day holds out the last day, but every row is of one day, 141021 (200 rows); "
        "give --data-split=random-811, or a file of two days or more"
    )
    assert not any("pass 1" in line for line in logs) and not (tmp_path / "p").exists()


def flip_first_label(raw) -> None:
    """Change the file's content, not its size: the first row's label 0 <-> 1."""
    data = raw.read_bytes()
    raw.write_bytes((b"1" if data[:1] == b"0" else b"0") + data[1:])


def forget_mtime(target) -> None:
    """Make the cache in ``target`` look like one made before the modification time was recorded."""
    meta = json.loads((target / "meta.json").read_text())
    del meta["source"]["mtime_ns"]
    (target / "meta.json").write_text(json.dumps(meta))


def test_cache_is_reused_and_rebuilt_with_a_reason(tmp_path) -> None:
    raw = tmp_path / "train.txt"
    raw.write_bytes(sample_file("criteo_kaggle_train_head1999.txt").read_bytes())
    target = tmp_path / "processed"
    logs: list[str] = []
    quiet_prepare(raw, target, logs=logs)
    assert "no processed data there yet" in logs[0]
    stamp = (target / "train.cat.npy").stat().st_mtime_ns
    quiet_prepare(raw, target, logs=logs)
    assert logs[-1].startswith("using processed data") and (target / "train.cat.npy").stat().st_mtime_ns == stamp
    quiet_prepare(None, target)  # no raw file: the cache alone will do
    cases = [
        (lambda: None, dict(split="random-811"), "other settings (data_split dlrm -> random-811"),
        (
            lambda: raw.write_bytes(raw.read_bytes().rsplit(b"\n", 2)[0] + b"\n"),
            dict(split="random-811"),
            "another raw file",
        ),
        (lambda: flip_first_label(raw), dict(split="random-811"), "same size, different content"),
        (lambda: (target / "meta.json").unlink(), dict(split="random-811"), "no complete processed data"),
        (lambda: None, dict(split="random-811", split_seed=5), "split_seed 0 -> 5"),
        (lambda: forget_mtime(target), dict(split="random-811", split_seed=5), "does not record the raw file's mod"),
    ]
    for change, kw, reason in cases:
        change()
        logs.clear()
        quiet_prepare(raw, target, logs=logs, **kw)
        assert reason in logs[0], logs[0]
        quiet_prepare(raw, target, logs=logs, **kw)
        assert logs[-1].startswith("using processed data")
    meta = json.loads((target / "meta.json").read_text())
    assert (
        meta["source"]["size"] == raw.stat().st_size
        and meta["rows"]["train"] + meta["rows"]["test"] + meta["rows"]["val"] == 1999 - 1
    )


def test_a_same_size_edit_the_sampled_fingerprint_misses_rebuilds_the_cache(tmp_path) -> None:
    raw = tmp_path / "train.txt"
    raw.write_bytes(sample_file("criteo_kaggle_train_head1999.txt").read_bytes() * 8)  # ~3.9 MB: sampled in part
    target = tmp_path / "processed"
    quiet_prepare(raw, target)
    data, before = bytearray(raw.read_bytes()), preprocess.fingerprint(raw)
    stat = raw.stat()
    line_starts = [i + 1 for i in range(1 << 20, len(data) - (1 << 20)) if data[i] == ord("\n")]
    for start in line_starts:  # a label the fingerprint does not read
        data[start] ^= 1  # 0 <-> 1
        raw.write_bytes(data)
        if preprocess.fingerprint(raw) == before:
            break
        data[start] ^= 1
    else:
        pytest.fail("every label is sampled")
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # edited a second later
    logs: list[str] = []
    rebuilt = quiet_prepare(raw, target, logs=logs)
    assert "the raw file was modified since" in logs[0] and "same size and sampled content" in logs[0], logs
    row = data[:start].count(b"\n")  # the edited row's index: train (days 1-6 of 13,992 rows)
    assert rebuilt.split("train")[2][row] == data[start] - ord("0")
    assert quiet_prepare(raw, target, logs=logs) and logs[-1].startswith("using processed data")
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**9))  # touched, same content: still a change
    logs.clear()
    quiet_prepare(raw, target, logs=logs)
    assert "the raw file was modified since" in logs[0]


@pytest.mark.parametrize("damage", ["missing", "truncated", "short"])
def test_a_damaged_cache_is_rebuilt_from_the_raw_file_or_reported(damage: str, tmp_path) -> None:
    raw = tmp_path / "train.txt"
    raw.write_bytes(sample_file("criteo_kaggle_train_head1999.txt").read_bytes())
    target = tmp_path / "processed"
    quiet_prepare(raw, target)
    victim = target / "train.cat.npy"
    if damage == "missing":
        victim.unlink()
    elif damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:-100])
    else:  # a well-formed array of the wrong length
        np.save(victim, np.load(victim)[:-1])
    with pytest.raises(
        UserError, match=r"^--processed-data-file: .*train\.cat\.npy .*give --raw-data-file to rebuild it$"
    ):
        quiet_prepare(None, target)
    logs: list[str] = []
    data = quiet_prepare(raw, target, logs=logs)
    assert "train.cat.npy" in logs[0] and logs[0].startswith("preprocessing")
    assert data.split("train")[1].shape[0] == data.meta["rows"]["train"]


def test_a_failed_build_leaves_the_old_cache_and_no_temporary(tmp_path, monkeypatch) -> None:
    raw = sample_file("criteo_kaggle_train_sample100.txt")
    target = tmp_path / "processed"
    quiet_prepare(raw, target)
    before = sorted(p.name for p in target.iterdir())
    stale = tmp_path / ".processed.tmp-999999999"  # left by a killed run (no such process)
    stale.mkdir()

    def killed(first, directory, progress):
        (directory / "train.cat.npy").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(preprocess, "renumber_pass", killed)
    with pytest.raises(KeyboardInterrupt):
        quiet_prepare(raw, target, split="random-811")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed"]  # no temporaries left, stale one removed
    assert (
        sorted(p.name for p in target.iterdir()) == before
        and preprocess.read_meta(target)["settings"]["data_split"] == "dlrm"
    )
    with pytest.raises(KeyboardInterrupt):
        quiet_prepare(raw, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


INTERRUPTED_PREPROCESS = """
import os, signal, sys, time
import data_utils
from mlet.data.preprocessing import passes
check_rows = passes.check_rows
def interrupted(*args, **kwargs):  # Ctrl-C while pass 1 reads, its reader threads running
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(10)
    return check_rows(*args, **kwargs)
passes.check_rows = interrupted
sys.exit(data_utils.command_line(sys.argv[1:]))
"""


def test_ctrl_c_in_preprocess_prints_one_line_and_leaves_no_cache(tmp_path) -> None:
    raw = sample_file("criteo_kaggle_train_head1999.txt")
    argv = ["preprocess", f"--raw-data-file={raw}", f"--processed-data-file={tmp_path / 'p'}", "--progress=false"]
    done = run_snippet(INTERRUPTED_PREPROCESS, argv, timeout=60)
    assert done.returncode == 130 and done.stderr == "data_utils.py: interrupted\n", done.stderr
    assert os.listdir(tmp_path) == []  # no cache, no temporary


def test_cache_location_errors(tmp_path) -> None:
    raw = sample_file("criteo_kaggle_train_sample100.txt")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not processed data")
    with pytest.raises(UserError, match="not empty and holds no processed data"):
        quiet_prepare(raw, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        quiet_prepare(raw, tmp_path / "file")
    with pytest.raises(UserError, match=r"cannot create \S*/file/p: \S*/file is a file, not a folder$"):
        quiet_prepare(raw, tmp_path / "file" / "p")
    with pytest.raises(UserError, match="holds no processed data; give --raw-data-file"):
        quiet_prepare(None, tmp_path / "nothing")
    quiet_prepare(raw, tmp_path / "p")
    with pytest.raises(UserError, match="give --raw-data-file to rebuild"):
        quiet_prepare(None, tmp_path / "p", split="random-811")


def test_cache_in_the_current_directory_is_used_but_never_built(tmp_path, monkeypatch) -> None:
    raw = sample_file("criteo_kaggle_train_sample100.txt")
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(UserError, match=r"--processed-data-file: .*here is the current directory; .* e\.g\. "):
        quiet_prepare(raw, ".")  # the build's rename would have left the process in a deleted directory
    with pytest.raises(UserError, match=r"--processed-data-file: /\S* is the file system's root"):
        quiet_prepare(raw, "/")
    assert os.listdir(tmp_path) == ["here"] and os.listdir(tmp_path / "here") == []
    quiet_prepare(raw, tmp_path / "p")
    monkeypatch.chdir(tmp_path / "p")
    assert quiet_prepare(raw, ".").directory == tmp_path / "p"  # made elsewhere, used from inside it
    assert sorted(os.listdir(tmp_path)) == ["here", "p"]


def test_default_processed_directory_is_next_to_the_raw_file(tmp_path, monkeypatch) -> None:
    raw = tmp_path / "train.txt"
    raw.write_bytes(sample_file("criteo_kaggle_train_sample100.txt").read_bytes())
    data = prepare(str(raw), None, "kaggle", "dlrm", progress=False, log=lambda _: None)
    assert data.directory == tmp_path / "train.txt.processed" and (data.directory / "meta.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["train.txt", "train.txt.processed"]
    monkeypatch.chdir(tmp_path)  # a raw path without a name (Terabyte's folder of days as "."): beside it all the same
    assert preprocess.processed_directory(".", None) == tmp_path.parent / f"{tmp_path.name}.processed"
