"""Criteo Terabyte: generated day files in the real layout, preprocessed by day in parallel into upstream's split."""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, run_cli

import data_utils
from mlet.core.errors import UserError
from mlet.data.preprocessing.cache import SPLITS, prepare
from mlet.data.preprocessing.raw_data import MISSING
from mlet.data.preprocessing.raw_generate import RawGenerator, scramble
from mlet.data.sources import ArraySource

ROWS, DAYS, SCALE = 3000, 3, 0.0001


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """Three generated day files (gzip, as downloaded) and the generator that wrote them."""
    folder = tmp_path_factory.mktemp("terabyte")
    generator = RawGenerator("terabyte", ROWS, seed=3, scale=SCALE)
    generator.write_days(str(folder / "day.gz"), DAYS)
    return folder, generator


def written(generator: RawGenerator, day: int):
    """The rows written for ``day``: labels, counts, model ids."""
    generator.day = day
    chunks = list(generator.chunks())
    generator.day = 0
    return tuple(np.concatenate([getattr(c, f) for c in chunks]) for f in ("labels", "counts", "ids"))


def test_day_files_have_the_kaggle_layout(days) -> None:
    folder, _ = days
    assert sorted(p.name for p in folder.iterdir()) == [f"day_{d}.gz" for d in range(DAYS)]
    with gzip.open(folder / "day_1.gz", "rt") as one, gzip.open(folder / "day_0.gz", "rt") as zero:
        lines, first = one.read().splitlines(), zero.read().splitlines()
    assert len(lines) == ROWS and {len(line.split("\t")) for line in lines} == {40}
    assert lines != first  # each day its own draws


def test_preprocessing_gives_upstreams_split_and_the_written_values(days, tmp_path, monkeypatch) -> None:
    folder, generator = days
    monkeypatch.setenv("DLRM_MLET_PREPROCESS_WORKERS", "2")
    data = prepare(str(folder / "day"), str(tmp_path / "p"), "terabyte", "dlrm", progress=False, log=lambda _: None)
    half = math.ceil(ROWS / 2)
    assert data.meta["rows"] == {"train": 2 * ROWS, "test": half, "val": ROWS - half}
    assert data.meta["split"]["days"] == [ROWS] * DAYS and data.meta["split"]["workers"] == 2
    labels = [written(generator, d)[0] for d in range(DAYS)]
    dense, cat, label = data.split("train")
    assert np.array_equal(label, np.concatenate(labels[:2]))
    assert np.array_equal(data.split("test")[2], labels[2][:half])
    assert np.array_equal(data.split("val")[2], labels[2][half:])
    counts = np.concatenate([written(generator, d)[1] for d in range(2)])
    assert np.allclose(dense, np.log1p(np.maximum(counts, 0)))
    # every training id decodes to the key that was written (the vocabulary holds the training values)
    ids = np.concatenate([written(generator, d)[2] for d in range(2)])
    keys = np.load(data.directory / "vocab_keys.npy")
    starts = np.cumsum([0, *data.meta["vocabulary_sizes"]])
    for t in range(ids.shape[1]):
        expected = np.where(ids[:, t] >= 0, scramble(ids[:, t], generator.salts[t]).astype(np.int64), MISSING)
        assert np.all(cat[:, t] >= 1)
        assert np.array_equal(keys[starts[t] + cat[:, t] - 1], expected), t


def test_one_process_and_several_build_the_same_arrays(days, tmp_path, monkeypatch) -> None:
    folder, _ = days
    built = {}
    for workers in ("1", "2"):
        monkeypatch.setenv("DLRM_MLET_PREPROCESS_WORKERS", workers)
        data = prepare(str(folder), str(tmp_path / workers), "terabyte", "dlrm", progress=False, log=lambda _: None)
        built[workers] = data
    names = [f"{s}.{p}.npy" for s in SPLITS for p in ("dense", "cat", "label")] + ["vocab_keys.npy", "vocab_counts.npy"]
    for name in names:
        assert (built["1"].directory / name).read_bytes() == (built["2"].directory / name).read_bytes(), name


@pytest.mark.parametrize("workers", ["x", "0", "-2", "1.5"])
def test_a_bad_number_of_reading_processes_is_one_line(workers, days, tmp_path, monkeypatch) -> None:
    """DLRM_MLET_PREPROCESS_WORKERS that is not a whole number of at least 1: one line naming the variable (it was
    a ValueError traceback, or quietly one process), and no processed data."""
    folder, _ = days
    monkeypatch.setenv("DLRM_MLET_PREPROCESS_WORKERS", workers)
    with pytest.raises(UserError, match=rf"^DLRM_MLET_PREPROCESS_WORKERS={re.escape(workers)}: expected a whole"):
        prepare(str(folder), str(tmp_path / "p"), "terabyte", "dlrm", progress=False, log=lambda _: None)
    assert not (tmp_path / "p").exists()


def test_sub_sampling_drops_negative_training_rows_only_and_is_seeded(days, tmp_path) -> None:
    folder, _ = days
    quiet = {"progress": False, "log": lambda _: None}
    full = prepare(str(folder), str(tmp_path / "full"), "terabyte", "dlrm", **quiet)
    half = prepare(str(folder), str(tmp_path / "half"), "terabyte", "dlrm", sub_sample_rate=0.5, **quiet)
    again = prepare(str(folder), str(tmp_path / "again"), "terabyte", "dlrm", sub_sample_rate=0.5, **quiet)
    other = prepare(
        str(folder), str(tmp_path / "other"), "terabyte", "dlrm", split_seed=1, sub_sample_rate=0.5, **quiet
    )
    train_labels = full.split("train")[2]
    kept = half.split("train")[2]
    negatives = int((train_labels == 0).sum())
    assert int(kept.sum()) == int(train_labels.sum())  # every positive kept
    assert abs(int((kept == 0).sum()) - negatives / 2) < 4 * math.sqrt(negatives / 4)
    assert half.meta["sub_sampled_away"] == negatives - int((kept == 0).sum())
    assert half.meta["rows"]["test"] == full.meta["rows"]["test"]  # the held-out day is not sub-sampled
    assert np.array_equal(half.split("test")[2], full.split("test")[2])
    assert (half.directory / "train.cat.npy").read_bytes() == (again.directory / "train.cat.npy").read_bytes()
    assert not np.array_equal(other.split("train")[2], kept) or len(other.split("train")[2]) != len(kept)
    assert half.meta["settings"]["sub_sample_rate"] == 0.5 and "sub_sample_rate" not in full.meta["settings"]


def test_a_changed_sub_sample_rate_rebuilds_the_cache(days, tmp_path) -> None:
    folder, _ = days
    said: list[str] = []
    prepare(str(folder), str(tmp_path / "p"), "terabyte", "dlrm", progress=False, log=said.append)
    prepare(str(folder), str(tmp_path / "p"), "terabyte", "dlrm", progress=False, log=said.append, sub_sample_rate=0.2)
    assert any("other settings" in line and "sub_sample_rate" in line for line in said), said


def test_a_touched_day_file_rebuilds_the_cache(days, tmp_path) -> None:
    folder, _ = days
    said: list[str] = []
    prepare(str(folder), str(tmp_path / "p"), "terabyte", "dlrm", progress=False, log=said.append)
    day = folder / "day_1.gz"
    stat = day.stat()
    try:
        os.utime(day, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, modified a second later
        prepare(str(folder), str(tmp_path / "p"), "terabyte", "dlrm", progress=False, log=said.append)
    finally:
        os.utime(day, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert any("the raw file was modified since" in line for line in said), said
    for _ in range(2):  # the restored time is a change too: rebuilt once more, then reused
        said.clear()
        prepare(str(folder), str(tmp_path / "p"), "terabyte", "dlrm", progress=False, log=said.append)
    assert said[0].startswith("using processed data"), said


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (["day_0", "day_2"], "day_1 is missing, but"),
        (["day_0"], "needs the day files"),
        ([], "needs the day files"),
    ],
)
def test_day_file_problems_are_one_line(layout, message, tmp_path, capsys) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    for name in layout:
        (folder / name).write_text("0\t" + "\t".join(["1"] * 13 + ["68fd1e64"] * 26) + "\n")
    code, _, err = run_cli(
        ["--data-generation=dataset", "--data-set=terabyte", f"--raw-data-file={folder}", "--arch-mlp-bot=13-2"],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1 and "--raw-data-file" in err and message in err, err


def test_randomize_by_day_shuffles_within_days() -> None:
    rows = np.arange(10)
    source = ArraySource(rows[:, None].astype(np.float32), rows[:, None], rows, 10, shuffle=True, seed=1, days=[4, 6])
    order = source.order(0)
    assert sorted(order[:4]) == [0, 1, 2, 3] and sorted(order[4:]) == list(range(4, 10))
    assert not np.array_equal(order, rows) and not np.array_equal(order, source.order(1))


@pytest.mark.slow
def test_generate_preprocess_and_train_terabyte(tmp_path, capsys) -> None:
    prefix = tmp_path / "input" / "day"
    assert (
        data_utils.command_line(
            ["generate", "terabyte", "--days=3", "--rows=4000", "--scale=0.0001", f"--out={prefix}"]
        )
        == 0
    )
    results = tmp_path / "r.json"
    argv = [
        "--data-generation=dataset",
        "--data-set=terabyte",
        f"--raw-data-file={prefix}",
        "--arch-sparse-feature-size=4",
        "--arch-mlp-bot=13-8-4",
        "--arch-mlp-top=8-1",
        "--mini-batch-size=128",
        "--learning-rate=0.3",
        "--data-randomize=day",
        "--progress=false",
        f"--results-json={results}",
    ]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "3 day files (the full data set has 24): days 0-1 train, day 2 test/val" in out
    assert "max-ind-range 40000000" in out  # upstream's Terabyte default, stated
    result = json.loads(results.read_text())
    assert result["final"]["samples"] == 2000 and result["val"]["samples"] == 2000
    assert result["args"]["max_ind_range"] == 40_000_000 and result["final"]["auc"] > 0.55


@pytest.mark.slow
def test_embedded_default_script(tmp_path) -> None:
    """scripts/criteo_terabyte.sh without a path: generated day files through the same path, to the end."""
    env = {
        **os.environ,
        "PY": sys.executable,
        "PYTHONPATH": str(ROOT),
        "RUN_DIR": str(tmp_path / "run"),
        "DAYS": "3",
        "ROWS": "5000",
        "SCALE": "0.0001",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "criteo_terabyte.sh"), "--", "--nepochs=1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 day files (the full data set has 24)" in done.stdout and "criteo_terabyte.sh: done" in done.stdout
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["args"]["data_set"] == "terabyte" and result["final"]["samples"] == 2500
