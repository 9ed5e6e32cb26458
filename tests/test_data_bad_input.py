"""Bad input on the data set path: malformed rows (stop or skip and count), bad files, bad flags."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import pytest
import torch
from helpers import RESUME_FLAGS, TINY, override_flags, run_cli, sample_lines

import checkpoint as checkpoint_command
import data_utils
from mlet.data.preprocessing.cache import read_meta

MODEL = [
    "--arch-sparse-feature-size=4",
    "--arch-mlp-top=8-1",
    "--mini-batch-size=32",
    "--num-batches=2",
    "--progress=false",
    "--learning-rate=0.1",
]


def dataset_argv(data_set: str, raw, tmp_path, *extra: str) -> list[str]:
    """Train a tiny model on a file of ``data_set`` (kaggle: 13 dense inputs; avazu: 1)."""
    return [
        "--data-generation=dataset",
        f"--data-set={data_set}",
        f"--raw-data-file={raw}",
        f"--processed-data-file={tmp_path / 'p'}",
        f"--arch-mlp-bot={13 if data_set == 'kaggle' else 1}-8-4",
        *MODEL,
        *extra,
    ]


def preprocess_main(raw, tmp_path, data_set: str, capsys, *extra: str) -> tuple[int, str, str]:
    """``data_utils.py preprocess`` (no training): exit code, stdout, stderr."""
    code = data_utils.command_line(
        [
            "preprocess",
            f"--data-set={data_set}",
            f"--raw-data-file={raw}",
            f"--processed-data-file={tmp_path / 'p'}",
            "--progress=0",
            *extra,
        ]
    )
    out = capsys.readouterr()
    return code, out.out, out.err


def set_field(line: str, index: int, value: str, sep: str = "\t") -> str:
    """``line`` with field ``index`` replaced."""
    fields = line.split(sep)
    fields[index] = value
    return sep.join(fields)


def one_error_line(err: str) -> str:
    """The single stderr line, without the program prefix."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0].removeprefix("dlrm_mlet.py: error: ")


KAGGLE_BAD = {
    "too few columns": (
        lambda line: "\t".join(line.split("\t")[:39]),
        "39 fields, expected 40 fields (label, I1-I13, C1-C26)",
        "wrong column count",
    ),
    "too many columns": (lambda line: line + "\t0", "41 fields, expected 40", "wrong column count"),
    "empty line": (lambda line: "", "empty line, expected 40 fields", "wrong column count"),
    "non-hex category": (
        lambda line: set_field(line, 16, "zz11aa00"),
        "C3 is 'zz11aa00', expected 8 hex digits or empty",
        "non-hex category",
    ),
    "short category": (
        lambda line: set_field(line, 40 - 1, "abc"),
        "C26 is 'abc', expected 8 hex digits or empty",
        "non-hex category",
    ),
    "non-integer count": (
        lambda line: set_field(line, 5, "1.5"),
        "I5 is '1.5', expected an integer or empty",
        "non-integer count",
    ),
    "label not 0/1": (lambda line: set_field(line, 0, "2"), "label is '2', expected 0 or 1", "label not 0/1"),
    "empty label": (lambda line: set_field(line, 0, ""), "label is '', expected 0 or 1", "label not 0/1"),
    "hex count": (
        lambda line: set_field(line, 5, "0x10"),
        "I5 is '0x10', expected an integer or empty",
        "non-integer count",
    ),
    "count out of range": (
        lambda line: set_field(line, 5, "99999999999999999999"),
        "I5 is '99999999999999999999', out of range: expected an integer of at most 18 digits",
        "integer out of range",
    ),
}


@pytest.mark.parametrize("case", KAGGLE_BAD)
def test_a_bad_kaggle_row_stops_with_file_and_line(case: str, tmp_path, capsys) -> None:
    edit, message, _ = KAGGLE_BAD[case]
    lines = sample_lines("criteo_kaggle_train_sample100.txt")
    lines[56] = edit(lines[56])
    raw = tmp_path / "train.txt"
    raw.write_text("\n".join(lines))
    code, _, err = run_cli(dataset_argv("kaggle", raw, tmp_path), capsys)
    assert code == 2
    assert one_error_line(err).startswith(f"{raw}:57: {message}")
    assert "--skip-bad-rows" in err and not (tmp_path / "p").exists()


@pytest.mark.parametrize("case", KAGGLE_BAD)
def test_skip_bad_rows_skips_counts_and_records_each_kind(case: str, tmp_path, capsys) -> None:
    edit, _, kind = KAGGLE_BAD[case]
    lines = sample_lines("criteo_kaggle_train_sample100.txt")
    lines[56] = edit(lines[56])
    raw = tmp_path / "train.txt"
    raw.write_text("\n".join(lines))
    code, out, err = preprocess_main(raw, tmp_path, "kaggle", capsys, "--skip-bad-rows")
    assert code == 0, err
    assert f"skipped 1 bad rows: 1 {kind} (first at line 57)" in out
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert meta["bad_rows"] == {"total": 1, "by_kind": {kind: 1}, "first_lines": {kind: [57]}}
    assert sum(meta["rows"].values()) == 99 and meta["physical_rows"] == 100


def damaged_gzip(path, damage: str) -> None:
    """A gzip of 20 copies of the Kaggle head sample, cut short or with 25 bytes overwritten: its first 64 KiB
    (what the layout is detected from) still read, the rest of the stream does not."""
    text = ("\n".join(sample_lines("criteo_kaggle_train_head1999.txt")) + "\n") * 20
    data = bytearray(gzip.compress(text.encode(), mtime=0))
    if damage == "truncated":
        del data[len(data) // 2 :]
    else:
        data[30000:30025] = b"\xa5" * 25
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
@pytest.mark.parametrize("split", ["dlrm", "random-811"])
def test_a_damaged_gzip_gives_one_line_from_every_pass(damage: str, split: str, tmp_path, capsys) -> None:
    raw = tmp_path / "train.txt.gz"
    damaged_gzip(raw, damage)
    code, _, err = preprocess_main(raw, tmp_path, "kaggle", capsys, f"--data-split={split}")
    assert code == 2 and "Traceback" not in err and f"{raw}: cannot read: " in err, err
    if split == "dlrm":  # the line count (the dlrm split's first pass) and training's path
        code, _, err = run_cli(dataset_argv("kaggle", raw, tmp_path), capsys)
        assert code == 2 and one_error_line(err).startswith(f"{raw}: cannot read: "), err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("skip", [False, True])
def test_empty_lines_at_the_end_of_a_file_are_not_rows(skip: bool, tmp_path, capsys) -> None:
    lines = sample_lines("criteo_kaggle_train_head1999.txt")
    clean, trailing = tmp_path / "clean.txt", tmp_path / "train.txt"
    clean.write_text("\n".join(lines) + "\n")
    trailing.write_text("\n".join(lines) + "\n\n\n")
    flags = ["--skip-bad-rows"] if skip else []
    metas = []
    for raw in (clean, trailing):
        code, out, err = preprocess_main(raw, tmp_path / raw.stem, "kaggle", capsys, *flags)
        assert code == 0 and "skipped" not in out, err
        metas.append(json.loads((tmp_path / raw.stem / "p" / "meta.json").read_text()))
    assert metas[1]["rows"] == metas[0]["rows"] == {"train": 1714, "test": 143, "val": 142}  # the 7 days as before
    assert metas[1]["split"] == metas[0]["split"] and metas[1]["bad_rows"]["total"] == 0
    assert metas[1]["physical_rows"] == 1999
    trailing.write_text("\n".join([*lines, "", lines[0]]) + "\n")  # an empty line before a row: an error
    code, _, err = preprocess_main(trailing, tmp_path / "middle", "kaggle", capsys)
    assert code == 2 and one_error_line(err).startswith(f"data_utils.py: error: {trailing}:2000: empty line")


def test_the_first_bad_line_is_reported_and_all_kinds_are_counted(tmp_path, capsys) -> None:
    lines = sample_lines("criteo_kaggle_train_sample100.txt")
    for i, case in zip([80, 30, 31, 60, 61, 70, 90, 95], KAGGLE_BAD):
        lines[i] = KAGGLE_BAD[case][0](lines[i])
    raw = tmp_path / "train.txt"
    raw.write_text("\n".join(lines))
    code, _, err = run_cli(dataset_argv("kaggle", raw, tmp_path), capsys)
    assert code == 2 and one_error_line(err).startswith(f"{raw}:31: 41 fields")
    code, out, err = run_cli(dataset_argv("kaggle", raw, tmp_path, "--skip-bad-rows"), capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert meta["bad_rows"]["by_kind"] == {
        "wrong column count": 3,
        "non-hex category": 2,
        "non-integer count": 1,
        "label not 0/1": 2,
    }
    assert meta["bad_rows"]["first_lines"]["wrong column count"] == [31, 32, 81]
    assert sum(meta["rows"].values()) == 92
    code, out, err = run_cli(
        dataset_argv("kaggle", raw, tmp_path), capsys
    )  # strict again: the cache that skipped rows is not trusted
    assert code == 2 and "--skip-bad-rows" in out + err


AVAZU_BAD = {
    "bad hour": (
        lambda line: set_field(line, 2, "14103224", ","),
        "hour is '14103224', expected YYMMDDHH (a valid date and hour)",
        "bad hour",
    ),
    "bad date": (lambda line: set_field(line, 2, "14113100", ","), "hour is '14113100', expected YYMMDDHH", "bad hour"),
    "non-integer value": (
        lambda line: set_field(line, 16, "15a06", ","),
        "C14 is '15a06', expected an integer or empty",
        "non-integer value",
    ),
    "non-hex category": (
        lambda line: set_field(line, 5, "1fbe01f", ","),
        "site_id is '1fbe01f', expected 8 hex digits or empty",
        "non-hex category",
    ),
    "label not 0/1": (lambda line: set_field(line, 1, "yes", ","), "click is 'yes', expected 0 or 1", "label not 0/1"),
    "too few columns": (
        lambda line: line.rsplit(",", 1)[0],
        "23 fields, expected 24 fields (id, click, hour",
        "wrong column count",
    ),
}


@pytest.mark.parametrize("case", AVAZU_BAD)
def test_bad_avazu_rows(case: str, tmp_path, capsys) -> None:
    edit, message, kind = AVAZU_BAD[case]
    lines = sample_lines("avazu_train_head100.csv")
    lines[40] = edit(lines[40])  # the header is line 1: this is line 41
    raw = tmp_path / "train.csv"
    raw.write_text("\r\n".join(lines) + "\r\n")
    code, _, err = run_cli(dataset_argv("avazu", raw, tmp_path), capsys)
    assert code == 2 and one_error_line(err).startswith(f"{raw}:41: {message}")
    code, out, err = preprocess_main(raw, tmp_path, "avazu", capsys, "--skip-bad-rows")
    assert code == 0, err
    assert f"1 {kind} (first at line 41)" in out


@pytest.mark.parametrize(
    ("setup", "flags", "message"),
    [
        (None, [], "--raw-data-file: needed"),
        ("missing", [], "--raw-data-file: {raw}: no such file"),
        ("empty", [], "--raw-data-file: {raw}: file is empty"),
        ("directory", [], "--raw-data-file: {raw}: is a directory, expected a file"),
        ("test.txt", [], "{raw}: looks like Criteo-Kaggle's unlabelled test.txt"),
        ("sample", ["--data-split=by-day"], "--data-split: by-day is not a split of kaggle"),
        ("sample", ["--arch-mlp-bot=4-8-4"], "--arch-mlp-bot: must start with 13 for kaggle"),
        ("sample", ["--cat-min-count=0"], "--cat-min-count: must be >= 1"),
        ("sample", ["--max-ind-range=-2"], "--max-ind-range: must be >= 0"),
        (
            "sample",
            ["--arch-embedding-size=10-10"],
            "--arch-embedding-size: gives 2 tables, the data have 26 categorical features (C1 ... C26)",
        ),
        ("sample", ["--processed-data-file={raw}"], "--processed-data-file: {raw} is a file"),
    ],
)
def test_bad_data_set_flags_and_files_give_one_line(setup, flags: list[str], message: str, tmp_path, capsys) -> None:
    raw = tmp_path / "train.txt"
    if setup == "empty":
        raw.write_bytes(b"")
    elif setup == "directory":
        raw.mkdir()
    elif setup == "test.txt":
        raw.write_text("\n".join(sample_lines("criteo_kaggle_test_head1999_nolabel.txt")[:50]))
    elif setup == "sample":
        raw.write_text("\n".join(sample_lines("criteo_kaggle_train_sample100.txt")))
    argv = (
        dataset_argv("kaggle", raw, tmp_path)
        if setup
        else ["--data-generation=dataset", "--arch-mlp-bot=13-8-4", *MODEL]
    )
    code, _, err = run_cli(override_flags(argv, *(f.format(raw=raw) for f in flags)), capsys)
    assert code == 2
    assert one_error_line(err).startswith(message.format(raw=raw))


def test_randomize_by_day_without_days_is_refused_before_preprocessing(tmp_path, capsys) -> None:
    raw = tmp_path / "train.txt"
    raw.write_text("\n".join(sample_lines("criteo_kaggle_train_sample100.txt")))
    assert preprocess_main(raw, tmp_path, "kaggle", capsys)[0] == 0
    made = (tmp_path / "p" / "meta.json").read_text()
    argv = dataset_argv("kaggle", raw, tmp_path, "--data-split=random-811", "--data-randomize=day")
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and one_error_line(err) == (
        "--data-randomize=day: the random-811 split of kaggle has no days; use total or none"
    )
    assert "preprocessing" not in out and (tmp_path / "p" / "meta.json").read_text() == made  # the dlrm data stay


@pytest.mark.parametrize(("value", "placement"), [(-16, "off"), (-16, "on"), ("too large", "off")])
def test_a_damaged_id_in_processed_data_is_refused_naming_file_and_row(value, placement: str, tmp_path, capsys) -> None:
    raw = tmp_path / "train.txt"
    raw.write_text("\n".join(sample_lines("criteo_kaggle_train_head1999.txt")))
    assert preprocess_main(raw, tmp_path, "kaggle", capsys)[0] == 0
    cat = tmp_path / "p" / "train.cat.npy"
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    ids = np.load(cat, mmap_mode="r+")
    ids[46, 22] = value if value != "too large" else meta["vocabulary_sizes"][22] + 1
    bad, bound = int(ids[46, 22]), meta["vocabulary_sizes"][22]
    ids.flush()
    del ids
    argv = override_flags(dataset_argv("kaggle", raw, tmp_path), f"--data-on-device={placement}", "--num-batches=0")
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and one_error_line(err) == (
        f"{cat}: row 46: id {bad} of C23 is outside 0..{bound} (its vocabulary); the processed data are damaged: "
        f"delete {tmp_path / 'p'} and give --raw-data-file to rebuild them"
    )


def test_upstream_processed_npz_is_named_as_upstreams_format(tmp_path, capsys) -> None:
    npz = tmp_path / "kaggleAdDisplayChallenge_processed.npz"
    zeros = np.zeros((4, 26), np.int32)
    np.savez_compressed(npz, X_int=zeros[:, :13], X_cat=zeros, y=zeros[:, 0], counts=np.ones(26, np.int32))
    raw = tmp_path / "train.txt"
    raw.write_text("\n".join(sample_lines("criteo_kaggle_train_sample100.txt")))
    named = f"--processed-data-file: {npz} is upstream DLRM's processed .npz (X_int, X_cat, y"
    for argv in (
        override_flags(dataset_argv("kaggle", raw, tmp_path), f"--processed-data-file={npz}"),
        override_flags(dataset_argv("kaggle", raw, tmp_path), f"--processed-data-file={npz}", "--raw-data-file="),
    ):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and one_error_line(err).startswith(named), err
        assert "give the raw train.txt as --raw-data-file and a new directory here" in err
    code, _, err = run_cli(dataset_argv("kaggle", npz, tmp_path), capsys)
    assert code == 2 and one_error_line(err).startswith(f"--raw-data-file: {npz}: is upstream DLRM's processed .npz")
    code = data_utils.command_line(["preprocess", f"--raw-data-file={raw}", f"--processed-data-file={npz}"])
    assert code == 2 and named in capsys.readouterr().err
    other = tmp_path / "other.npz"
    np.savez(other, a=zeros)  # any other file is just a file
    code, _, err = run_cli(
        override_flags(dataset_argv("kaggle", raw, tmp_path), f"--processed-data-file={other}"), capsys
    )
    assert code == 2 and one_error_line(err).startswith(f"--processed-data-file: {other} is a file")


def test_avazu_bottom_mlp_takes_one_constant_input(tmp_path, capsys) -> None:
    raw = tmp_path / "train.csv"
    raw.write_text("\n".join(sample_lines("avazu_train_head2994_crlf.csv")[:300]))
    argv = dataset_argv("avazu", raw, tmp_path)
    code, _, err = run_cli([*argv, "--arch-mlp-bot=13-8-4"], capsys)
    assert code == 2 and "--arch-mlp-bot: must start with 1 for avazu" in err
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    sizes = re.search(r"model: 23 tables \(plain, d=4, ([\d,]+) rows\)", out)
    assert sizes is not None


def test_a_matching_embedding_size_is_accepted_and_eval_split_val_is_reported(tmp_path, capsys) -> None:
    raw = tmp_path / "train.txt"
    raw.write_text("\n".join(sample_lines("criteo_kaggle_train_head1999.txt")))
    out_json = tmp_path / "r.json"
    code, out, err = run_cli(
        dataset_argv("kaggle", raw, tmp_path, "--cat-min-count=2", f"--results-json={out_json}"), capsys
    )
    assert code == 0, err
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    result = json.loads(out_json.read_text())
    sizes = result["model_config"]["table_sizes"]
    assert len(sizes) == 26 and all(1 < n <= v + 1 for n, v in zip(sizes, meta["vocabulary_sizes"]) if v > 1)
    assert result["final"]["samples"] == meta["rows"]["test"] == 143
    assert (
        (result["val"]["epoch"], result["val"]["iteration"])
        == (result["final"]["epoch"], result["final"]["iteration"])
        == (0, result["iterations"])
    )
    assert result["val"]["samples"] == meta["rows"]["val"]
    given = "--arch-embedding-size=" + "-".join(map(str, sizes))
    code, out, err = run_cli(
        dataset_argv(
            "kaggle", raw, tmp_path, "--cat-min-count=2", given, "--eval-split=val", f"--results-json={out_json}"
        ),
        capsys,
    )
    assert code == 0, err
    assert "using processed data" in out and "evaluating on val" in out
    assert "Validating at - " in out and "Testing at" not in out and ", val 142" in out
    assert json.loads(out_json.read_text())["final"]["samples"] == meta["rows"]["val"] == 142
    code, out, err = run_cli(
        dataset_argv("kaggle", raw, tmp_path, "--test-data-size=50", f"--results-json={out_json}"), capsys
    )
    assert code == 0 and json.loads(out_json.read_text())["final"]["samples"] == 50


DATA_SET_FLAGS = ("--cat-min-count=2", "--max-ind-range=50", "--data-split=random-811", "--data-sub-sample-rate=0.5")
"""Data-set flags that a checkpoint's data differ in (resume and --inference-only compare them)."""


def test_resuming_a_data_set_run_compares_the_data_set_flags(tmp_path, capsys) -> None:
    raw = tmp_path / "train.txt"
    raw.write_text("\n".join(sample_lines("criteo_kaggle_train_head1999.txt")))
    saved = tmp_path / "m.pt"
    assert run_cli(dataset_argv("kaggle", raw, tmp_path, f"--save-model={saved}"), capsys)[0] == 0
    made = (tmp_path / "p" / "meta.json").read_text()
    for flag in DATA_SET_FLAGS:
        code, out, err = run_cli(dataset_argv("kaggle", raw, tmp_path, flag, f"--load-model={saved}"), capsys)
        assert code == 2 and f"--load-model {saved}: {flag.split('=')[0]}: checkpoint has " in err, err
        assert "preprocessing" not in out and (tmp_path / "p" / "meta.json").read_text() == made  # refused first
    code, out, err = run_cli(
        dataset_argv("kaggle", raw, tmp_path, "--data-size=10", "--num-indices-per-lookup=3", f"--load-model={saved}"),
        capsys,
    )
    assert code == 0, err  # flags of generated data do not touch a data set's stream
    assert "--data-size=10 (checkpoint: 1)" in out and "--num-indices-per-lookup=3 (checkpoint: 10)" in out


def test_evaluating_a_data_set_checkpoint_compares_the_data_set_flags(tmp_path, capsys) -> None:
    """--inference-only on another split (or other id limits) would score other rows, or read other table rows
    for their ids: refused before any preprocessing, as resuming is; the checkpoint's own data is evaluated."""
    raw = tmp_path / "train.txt"
    raw.write_text("\n".join(sample_lines("criteo_kaggle_train_head1999.txt")))
    saved, collapsed = tmp_path / "m.pt", tmp_path / "c.pt"
    trained = dataset_argv("kaggle", raw, tmp_path, f"--save-model={saved}", f"--save-collapsed={collapsed}")
    assert run_cli(trained, capsys)[0] == 0
    made = (tmp_path / "p" / "meta.json").read_text()
    for checkpoint in (saved, collapsed):
        for flag in DATA_SET_FLAGS:
            evaluate = dataset_argv("kaggle", raw, tmp_path, flag, f"--load-model={checkpoint}", "--inference-only")
            code, out, err = run_cli(evaluate, capsys)
            assert code == 2 and f"--load-model {checkpoint}: {flag.split('=')[0]}: checkpoint was trained with " in err
            assert "give the checkpoint's value" in err and err.count("\n") == 1, err
            assert "preprocessing" not in out and (tmp_path / "p" / "meta.json").read_text() == made  # refused first
    # the split seed seeds nothing in the dlrm split; the training order is not the evaluated data
    same = dataset_argv("kaggle", raw, tmp_path, "--data-split-seed=5", "--data-randomize=none")
    code, out, err = run_cli([*same, f"--load-model={collapsed}", "--inference-only"], capsys)
    assert code == 0 and "Testing at" in out, err


def test_evaluating_on_another_split_with_tables_of_the_same_sizes_is_refused(tmp_path, capsys) -> None:
    """Tables capped by --max-ind-range have the same sizes in every split, so the architecture check cannot see
    the other split: the data-set flags are compared first."""
    raw = tmp_path / "train.txt"
    raw.write_text("\n".join(sample_lines("criteo_kaggle_train_head1999.txt")))
    saved = tmp_path / "m.pt"
    assert run_cli(dataset_argv("kaggle", raw, tmp_path, "--max-ind-range=2", f"--save-model={saved}"), capsys)[0] == 0
    other = dataset_argv("kaggle", raw, tmp_path / "other", "--max-ind-range=2", "--data-split=random-811")
    code, _, err = run_cli([*other, f"--load-model={saved}", "--inference-only"], capsys)
    assert code == 2 and "--data-split: checkpoint was trained with dlrm, the flags give random-811" in err, err
    assert not (tmp_path / "other").exists()  # refused before preprocessing


@pytest.mark.parametrize(
    ("flag", "says"),
    [
        ("--mlet-hidden=8", "--mlet-hidden: checkpoint has 16, the flags give 8"),
        ("--arch-mlp-top=4-1", "--arch-mlp-top: checkpoint has 8-1, the flags give 4-1"),
    ],
)
@pytest.mark.parametrize("evaluate", [False, True])
def test_another_architecture_is_refused_before_the_data_set_is_preprocessed(
    tmp_path, capsys, flag: str, says: str, evaluate: bool
) -> None:
    """A flag of the model that differs from the checkpoint's was refused only once the data had been read: on
    first use of a --processed-data-file, after preprocessing the whole raw file (hours for Criteo Terabyte)."""
    raw = tmp_path / "train.txt"
    raw.write_text("\n".join(sample_lines("criteo_kaggle_train_head1999.txt")))
    saved = tmp_path / "m.pt"
    assert run_cli(dataset_argv("kaggle", raw, tmp_path, "--mlet-hidden=16", f"--save-model={saved}"), capsys)[0] == 0
    other = [*dataset_argv("kaggle", raw, tmp_path / "other", "--mlet-hidden=16", flag), f"--load-model={saved}"]
    code, out, err = run_cli([*other, *(["--inference-only"] if evaluate else [])], capsys)
    assert code == 2 and f"--load-model {saved}: " in err and err.count("\n") == 1, err
    evaluating_k = evaluate and flag == "--mlet-hidden=8"  # evaluation takes K or 0, and says so
    assert ("MLET tables trained with K=16, the flags give 8" if evaluating_k else says) in err
    assert "preprocessing" not in out and not (tmp_path / "other").exists()


NOT_THE_DATA = "is not the data the checkpoint was trained on"


def test_evaluating_or_resuming_on_another_data_file_is_noted(tmp_path, capsys) -> None:
    """Another data set file is allowed (a day's data; tables capped by --max-ind-range have the same sizes), with
    a line naming both files; a moved copy of the same file (same sampled fingerprint) gets none, and resuming
    no longer lists the paths as changed flags."""
    lines = sample_lines("criteo_kaggle_train_head1999.txt")
    raw, other, moved = tmp_path / "train.txt", tmp_path / "day1.txt", tmp_path / "moved" / "train.txt"
    raw.write_text("\n".join(lines))
    other.write_text("\n".join(reversed(lines)))
    moved.parent.mkdir()
    moved.write_text(raw.read_text())  # a copy: other path and modification time, same content
    saved, collapsed, quantized = tmp_path / "m.pt", tmp_path / "c.pt", tmp_path / "q.pt"
    trained = dataset_argv("kaggle", raw, tmp_path, "--max-ind-range=2", f"--save-model={saved}")
    assert run_cli([*trained, f"--save-collapsed={collapsed}"], capsys)[0] == 0
    assert checkpoint_command.main(["quantize", str(collapsed), str(quantized), "--bits", "8"]) == 0
    for checkpoint in (saved, collapsed, quantized):
        same = dataset_argv("kaggle", moved, tmp_path / "moved", "--max-ind-range=2", f"--load-model={checkpoint}")
        code, out, err = run_cli([*same, "--inference-only"], capsys)
        assert code == 0 and NOT_THE_DATA not in out, err
        evaluated = dataset_argv("kaggle", other, tmp_path / "o", "--max-ind-range=2", f"--load-model={checkpoint}")
        code, out, err = run_cli([*evaluated, "--inference-only"], capsys)
        note = f"--raw-data-file: {other} {NOT_THE_DATA}, {raw} (other content: the sampled fingerprints of the raw"
        assert code == 0 and note in out, err
    resumed = dataset_argv("kaggle", other, tmp_path / "o", "--max-ind-range=2", f"--load-model={saved}")
    code, out, err = run_cli(resumed, capsys)
    assert code == 0 and f"--raw-data-file: {other} {NOT_THE_DATA}, {raw}" in out, err
    assert "--raw-data-file=" not in out and "--processed-data-file=" not in out  # not a changed flag


def test_a_checkpoint_without_data_files_compares_the_processed_directories(tmp_path, capsys) -> None:
    """Older checkpoints record no fingerprint: the processed directory, by path, tells the data apart."""
    raw = tmp_path / "train.txt"
    raw.write_text("\n".join(sample_lines("criteo_kaggle_train_head1999.txt")))
    saved = tmp_path / "m.pt"
    assert run_cli(dataset_argv("kaggle", raw, tmp_path, f"--save-model={saved}"), capsys)[0] == 0
    ckpt = torch.load(saved, weights_only=False)
    assert ckpt.pop("data_files")["fingerprint"] == read_meta(tmp_path / "p")["source"]["fingerprint"]
    torch.save(ckpt, saved)
    code, out, err = run_cli(dataset_argv("kaggle", raw, tmp_path, f"--load-model={saved}", "--inference-only"), capsys)
    assert code == 0 and NOT_THE_DATA not in out, err
    elsewhere = dataset_argv("kaggle", raw, tmp_path / "q", f"--load-model={saved}", "--inference-only")
    code, out, err = run_cli(elsewhere, capsys)
    assert code == 0, err
    assert f"--raw-data-file: {raw} {NOT_THE_DATA}, {raw} (the checkpoint records no fingerprint" in out


def test_arch_embedding_size_is_checked_as_soon_as_the_data_sizes_are_known(tmp_path, capsys) -> None:
    """What no data can match (another number of tables, a table past --max-ind-range) is refused before any
    preprocessing; other sizes as soon as pass 1 has counted the values (a line; the build goes on and is kept),
    and at once where the processed data exist. Each line names the flag, the table and both sizes."""
    raw = tmp_path / "train.txt"
    raw.write_text("\n".join(sample_lines("criteo_kaggle_train_head1999.txt")))
    processed = tmp_path / "p"
    for sizes, extra, message in (
        ("-".join(["5"] * 25), [], "--arch-embedding-size: gives 25 tables, the data have 26 categorical features"),
        (
            "-".join(["5"] * 2 + ["100"] + ["5"] * 23),
            ["--max-ind-range=50"],
            "--arch-embedding-size: table 3 (C3) has 100 rows, more than any table of the data can have under"
            " --max-ind-range=50 (it caps every table at 50 rows)",
        ),
    ):
        code, out, err = run_cli(
            dataset_argv("kaggle", raw, tmp_path, f"--arch-embedding-size={sizes}", *extra), capsys
        )
        assert code == 2 and one_error_line(err).startswith(message), err
        assert not processed.exists() and "preprocessing" not in out  # refused before reading the raw file

    wrong = "-".join(["7"] * 26)
    code, out, err = run_cli(dataset_argv("kaggle", raw, tmp_path, f"--arch-embedding-size={wrong}"), capsys)
    line = one_error_line(err)
    found = re.search(r"the data's sizes: ([\d-]+)\)", line)
    assert code == 2 and found is not None, err
    sizes = found.group(1).split("-")
    first = next(t for t, n in enumerate(sizes) if n != "7")
    assert line.startswith(
        f"--arch-embedding-size: table {first + 1} (C{first + 1}) has 7 rows, the data's has {int(sizes[first]):,}"
    )
    notice = f"{line}; preprocessing goes on, so that the next run reuses it, then this run stops"
    assert out.index("pass 1/2: ") < out.index(notice) < out.index("  done: ")  # after pass 1, the build goes on
    assert read_meta(processed) is not None  # the processed data are kept

    code, out, err = run_cli(dataset_argv("kaggle", raw, tmp_path, f"--arch-embedding-size={wrong}"), capsys)
    assert code == 2 and one_error_line(err) == line and "using processed data" in out and "preprocessing" not in out
    right = dataset_argv("kaggle", raw, tmp_path, f"--arch-embedding-size={found.group(1)}")
    assert run_cli(right, capsys)[0] == 0


def test_evaluating_a_synthetic_data_checkpoint_compares_its_click_model(tmp_path, capsys) -> None:
    """Synthetic data of another click model (another seed or --synthetic-* flag) is not the data the checkpoint
    learned: --inference-only refuses it; the same model is evaluated. Random data is scored whatever it draws
    (upstream times inference on it with any seed)."""
    saved = tmp_path / "m.pt"
    synthetic = override_flags(RESUME_FLAGS, "--nepochs=1")
    assert run_cli([*synthetic, f"--save-model={saved}"], capsys)[0] == 0
    for flag, recorded in (("--numpy-rand-seed=5", "123"), ("--synthetic-rank=2", "4")):
        code, _, err = run_cli([*synthetic, flag, f"--load-model={saved}", "--inference-only"], capsys)
        name = flag.split("=")[0]
        assert code == 2 and f"{name}: checkpoint was trained with {recorded}, the flags give " in err, err
        assert "another click model" in err and err.count("\n") == 1, err
    code, out, err = run_cli([*synthetic, f"--load-model={saved}", "--inference-only"], capsys)
    assert code == 0 and "Testing at" in out, err
    random = tmp_path / "r.pt"
    assert run_cli([*TINY, f"--save-model={random}"], capsys)[0] == 0
    code, out, err = run_cli([*TINY, "--numpy-rand-seed=5", f"--load-model={random}", "--inference-only"], capsys)
    assert code == 0 and "Testing at" in out, err
