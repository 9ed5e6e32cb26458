"""Synthetic raw files: determinism, exact recovery through preprocessing, and generate -> preprocess -> train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import data_utils
import dlrm_mlet
from mlet.data.preprocessing.cache import SPLITS, prepare
from mlet.data.preprocessing.days import day_files
from mlet.data.preprocessing.layouts import KAGGLE_CATEGORICAL, KAGGLE_DENSE
from mlet.data.preprocessing.raw_generate import (
    KAGGLE_CARDINALITIES,
    KAGGLE_MISSING,
    RawGenerator,
    WrittenRows,
    scaled_sizes,
)


def written(generator: RawGenerator) -> WrittenRows:
    """Everything the generator writes, concatenated."""
    chunks = list(generator.chunks())
    return WrittenRows(
        *(np.concatenate([getattr(c, f) for c in chunks]) for f in ("labels", "counts", "missing", "ids", "hours"))
    )


def processed_rows(data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All splits back in file order (dlrm and by-day keep file order within and across splits)."""
    parts = [data.split(s) for s in SPLITS]
    return tuple(np.concatenate([np.asarray(p[i]) for p in parts]) for i in range(3))


def assert_ids_map_one_to_one(generated: np.ndarray, got: np.ndarray, train_rows: int) -> None:
    """Within training rows, generated values and vocabulary ids are in 1:1 correspondence; later rows follow it
    (unseen -> 0)."""
    for t in range(generated.shape[1]):
        pairs = np.unique(np.stack([generated[:train_rows, t], got[:train_rows, t]]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1], f"feature {t} is not 1:1"
        assert pairs[1].min() >= 1
        mapping = dict(zip(pairs[0].tolist(), pairs[1].tolist()))
        expected = [mapping.get(v, 0) for v in generated[train_rows:, t].tolist()]
        assert got[train_rows:, t].tolist() == expected


@pytest.mark.slow
def test_generator_is_deterministic_by_seed(tmp_path) -> None:
    for data_set in ("kaggle", "avazu"):
        paths = [tmp_path / f"{data_set}{i}" for i in range(3)]
        for path, seed in zip(paths, (5, 5, 6)):
            assert (
                data_utils.command_line(
                    [
                        "generate",
                        data_set,
                        "--rows",
                        "3000",
                        "--seed",
                        str(seed),
                        "--out",
                        str(path),
                        "--scale",
                        "0.001",
                    ]
                )
                == 0
            )
        assert paths[0].read_bytes() == paths[1].read_bytes() != paths[2].read_bytes()


@pytest.mark.slow
def test_kaggle_file_has_the_real_layout_and_profile(tmp_path) -> None:
    path = tmp_path / "train.txt"
    RawGenerator("kaggle", 20000, seed=1, scale=0.001).write(path)
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    assert len(rows) == 20000 and {len(r) for r in rows} == {40} and {r[0] for r in rows} == {"0", "1"}
    columns = ["label", *KAGGLE_DENSE, *KAGGLE_CATEGORICAL]
    empty = {name: np.mean([r[i] == "" for r in rows]) for i, name in enumerate(columns)}
    for group, share in KAGGLE_MISSING:
        assert all(abs(empty[name] - share) < 0.02 for name in group), group
    assert all(
        len(r[i]) in (0, 8) and all(c in "0123456789abcdef" for c in r[i]) for r in rows[:500] for i in range(14, 40)
    )
    assert any(r[2].startswith("-") for r in rows)  # I2 has negatives, as in the real file
    sizes = scaled_sizes(KAGGLE_CARDINALITIES, 0.001)
    assert sizes[2] == 10131 and sizes[8] == 3 and min(sizes) >= 3  # C9 (3 values) keeps all of them
    assert len({r[16] for r in rows}) > 2000  # C3 is big


@pytest.mark.slow
def test_preprocessing_recovers_the_generated_kaggle_samples(tmp_path) -> None:
    generator = RawGenerator("kaggle", 5000, seed=2, scale=0.0005)
    raw = tmp_path / "train.txt.gz"
    generator.write(raw)
    data = prepare(str(raw), str(tmp_path / "p"), "kaggle", "dlrm", progress=False, log=lambda _: None)
    dense, ids, labels = processed_rows(data)
    truth = written(generator)
    assert np.array_equal(labels, truth.labels)
    assert np.array_equal(
        dense, np.log1p(np.maximum(truth.counts, 0)).astype(np.float32)
    )  # empty fields and negatives -> 0
    assert (truth.counts < 0).any() and truth.missing.any()
    assert_ids_map_one_to_one(truth.ids, ids, data.meta["rows"]["train"])


def test_preprocessing_recovers_the_generated_avazu_samples(tmp_path) -> None:
    generator = RawGenerator("avazu", 3000, seed=4, scale=0.001)
    raw = tmp_path / "train.csv"
    generator.write(raw)
    data = prepare(str(raw), str(tmp_path / "p"), "avazu", "by-day", progress=False, log=lambda _: None)
    dense, ids, labels = processed_rows(data)
    truth = written(generator)
    assert np.array_equal(labels, truth.labels) and dense.shape == (3000, 1) and (dense == 1).all()
    hour_of_day, day = truth.hours % 100, truth.hours // 100 % 100
    weekday = (day - 21 + 1) % 7  # 2014-10-21 was a Tuesday (1)
    generated = np.column_stack([hour_of_day, weekday, truth.ids])
    assert_ids_map_one_to_one(generated, ids, data.meta["rows"]["train"])
    assert sorted(set(truth.hours.tolist()))[::24][:2] == [14102100, 14102200] and truth.hours.max() == 14103023


@pytest.mark.slow
def test_generate_preprocess_train_reaches_auc_above_0_7(tmp_path, capsys) -> None:
    """The whole user path on the synthetic Kaggle format: about 10 s on 2 idle cores."""
    raw = tmp_path / "train.txt"
    model = ["--synthetic-rank", "16", "--synthetic-interaction-std", "3"]
    assert (
        data_utils.command_line(
            ["generate", "kaggle", "--rows", "100000", "--seed", "7", "--out", str(raw), "--scale", "0.0005", *model]
        )
        == 0
    )
    results = tmp_path / "result.json"
    argv = [
        "--data-generation=dataset",
        "--data-set=kaggle",
        f"--raw-data-file={raw}",
        f"--processed-data-file={tmp_path / 'processed'}",
        "--arch-sparse-feature-size=16",
        "--arch-mlp-bot=13-32-16",
        "--arch-mlp-top=32-1",
        "--mini-batch-size=256",
        "--optimizer=adagrad",
        "--learning-rate=0.05",
        "--test-mini-batch-size=4096",
        "--progress=false",
        f"--results-json={results}",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine, 2 threads can be 10x slower than 1
    try:
        code = dlrm_mlet.main(argv)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(results.read_text())
    assert result["final"]["auc"] > 0.7, result["final"]
    assert result["final"]["samples"] == 100000 // 7 // 2 + 1  # day 7's first half (100000 = 7 * 14285 + 5)
    assert "preprocessing" in out.out and "pass 1/2" in out.out


@pytest.mark.slow
@pytest.mark.parametrize("data_set", ["kaggle", "avazu"])
def test_preprocess_subcommand(data_set: str, tmp_path, capsys) -> None:
    raw = tmp_path / "raw"
    assert data_utils.command_line(["generate", data_set, "--rows", "2000", "--out", str(raw), "--scale", "0.001"]) == 0
    code = data_utils.command_line(
        [
            "preprocess",
            f"--data-set={data_set}",
            f"--raw-data-file={raw}",
            f"--processed-data-file={tmp_path / 'p'}",
            "--progress=0",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "table sizes" in out and (tmp_path / "p" / "meta.json").exists()
    assert (
        data_utils.command_line(
            [
                "preprocess",
                "--data-set=avazu" if data_set == "kaggle" else "--data-set=kaggle",
                f"--raw-data-file={raw}",
            ]
        )
        == 2
    )
    assert "use --data-set" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_creates_the_output_folder(tmp_path, capsys) -> None:
    out = tmp_path / "data" / "new" / "train.txt"
    assert data_utils.command_line(["generate", "kaggle", "--rows", "50", "--out", str(out), "--scale", "0.001"]) == 0
    assert len(out.read_text().splitlines()) == 50


@pytest.mark.parametrize(("out", "folder"), [(".", "."), ("input", "input"), ("new/", "new"), ("new/.", "new")])
def test_generate_terabyte_into_a_folder_writes_upstreams_day_names(
    out: str, folder: str, tmp_path, capsys, monkeypatch
) -> None:
    """A folder as Terabyte's --out (an existing one, or written as one) holds day_0, day_1, ..., which
    --raw-data-file given that folder reads; the days were named from the folder's path (--out . wrote ._0, ._1)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "input").mkdir()
    argv = ["generate", "terabyte", "--days", "2", "--rows", "20", "--scale", "0.0001", "--out", out]
    assert data_utils.command_line(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / folder).iterdir() if p.is_file()) == ["day_0", "day_1"]
    assert f"day files of 20 rows: {Path(folder) / 'day_0'} ... {Path(folder) / 'day_1'}" in capsys.readouterr().out
    assert [p.name for p in day_files(folder)] == ["day_0", "day_1"]


def test_the_gz_prefix_generate_wrote_reads_back_as_written(tmp_path, capsys, monkeypatch) -> None:
    # a GPU user trial: generate terabyte --out tb/day.gz wrote tb/day_0.gz ..., and --raw-data-file=tb/day.gz (the
    # same path) looked for tb/day.gz_0
    monkeypatch.chdir(tmp_path)
    argv = ["generate", "terabyte", "--days", "2", "--rows", "20", "--scale", "0.0001", "--out", "tb/day.gz"]
    assert data_utils.command_line(argv) == 0, capsys.readouterr().err
    assert [p.name for p in day_files("tb/day.gz")] == ["day_0.gz", "day_1.gz"]
    assert [p.name for p in day_files("tb/day")] == ["day_0.gz", "day_1.gz"]


def test_ctrl_c_in_generate_prints_one_line_and_leaves_no_file(tmp_path, capsys, monkeypatch) -> None:
    table = RawGenerator.table

    def interrupted(self, rows, first):
        if first:  # Ctrl-C after the first chunk (65,536 rows) was written
            raise KeyboardInterrupt
        return table(self, rows, first)

    monkeypatch.setattr(RawGenerator, "table", interrupted)
    out = tmp_path / "train.txt"
    argv = ["generate", "kaggle", "--rows", "100000", "--out", str(out), "--scale", "0.001"]
    assert data_utils.command_line(argv) == 130
    assert capsys.readouterr().err == "data_utils.py: interrupted\n" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--scale", "nan"], "--scale: must be a positive number, got nan"),
        (["--seed", "-1"], "--seed: must be in [0, 2**63), got -1"),
        (["--synthetic-rank", "0"], "--synthetic-rank: must be >= 1, got 0"),
        (["--synthetic-positive-rate", "1"], "--synthetic-positive-rate: must be in (0, 1), got 1.0"),
        (["--synthetic-zipf", "-0.5"], "--synthetic-zipf: must be a finite number >= 0, got -0.5"),
        (["--out", "{tmp}"], "--out {tmp}: is a folder; give a file name"),
        (["--out", "{tmp}/new/"], "--out {tmp}/new/: names a folder; give a file name"),  # wrote the file new
        (["--out", "{tmp}/new/."], "--out {tmp}/new/.: names a folder; give a file name"),
        (["--out", "{tmp}/afile/x.txt"], "--out {tmp}/afile/x.txt: {tmp}/afile is a file, not a folder"),
    ],
)
def test_generate_flags_are_checked_in_one_line(flags: list[str], message: str, tmp_path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    argv = [
        "generate",
        "kaggle",
        "--rows",
        "50",
        "--out",
        str(tmp_path / "ok.txt"),
        *[f.format(tmp=tmp_path) for f in flags],
    ]
    assert data_utils.command_line(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"data_utils.py: error: {message.format(tmp=tmp_path)}"]
    assert not (tmp_path / "ok.txt").exists()


@pytest.mark.parametrize("generation", ["random", "synthetic"])
def test_eval_split_val_on_generated_data_uses_another_stream(generation: str, tmp_path, capsys) -> None:
    common = [
        f"--data-generation={generation}",
        "--arch-embedding-size=50-20-7",
        "--arch-mlp-bot=13-8-4",
        "--arch-sparse-feature-size=4",
    ]
    common += [
        "--arch-mlp-top=8-1",
        "--mini-batch-size=64",
        "--num-batches=3",
        "--test-data-size=300",
        "--progress=false",
    ]
    finals = {}
    for split, said in [("test", "Testing at - 3/3 of epoch 0"), ("val", "Validating at - 3/3 of epoch 0")]:
        out = tmp_path / f"{split}.json"
        assert dlrm_mlet.main([*common, f"--eval-split={split}", f"--results-json={out}"]) == 0
        finals[split] = json.loads(out.read_text())["final"]
        log = capsys.readouterr().out
        assert said in log and f"{split} 300" in log and ("Testing at" in log) == (split == "test")
    assert "evaluating on a validation stream" in log
    assert finals["test"]["samples"] == finals["val"]["samples"] == 300
    assert finals["test"]["logloss"] != finals["val"]["logloss"]  # same model, other samples
