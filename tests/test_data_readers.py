"""Raw file readers: the real sample rows, line ends, gzip, layout detection, field decoding."""

from __future__ import annotations

import datetime
import gzip
import shutil

import numpy as np
import pyarrow as pa
import pytest
from helpers import SHARED_DATA

from mlet.core.errors import UserError
from mlet.data.preprocessing import layouts, raw_data
from mlet.data.preprocessing.layouts import detect_layout
from mlet.data.preprocessing.raw_data import MISSING, read_blocks

KAGGLE_FILES = {
    "criteo_kaggle_train_sample100.txt": 100,
    "criteo_kaggle_train_head1999.txt": 1999,
    "criteo_kaggle_competition_train_head1999.csv": 1999,
}
AVAZU_FILES = {"avazu_train_head100.csv": 100, "avazu_train_head2994_crlf.csv": 2994}


def shared(name: str):
    """A file of ../shared/data (skip the test where the directory is absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA / name


def read_all(path, data_set: str, block_bytes: int = 1 << 20) -> dict[str, np.ndarray]:
    """Every block of a file, concatenated."""
    blocks = list(read_blocks(path, detect_layout(path, data_set), block_bytes=block_bytes))
    return {
        "rows": np.concatenate([b.rows for b in blocks]),
        "labels": np.concatenate([b.labels for b in blocks]),
        "counts": np.concatenate([b.counts for b in blocks]),
        "keys": np.concatenate([b.keys for b in blocks], axis=1).T,
        "dates": np.concatenate([b.dates for b in blocks]),
        "errors": np.concatenate([b.errors for b in blocks]),
        "wrong_width": [w for b in blocks for w in b.wrong_width],
    }


def reference_rows(path, delimiter: str, header: bool) -> list[list[str]]:
    """The file split the slow, obvious way."""
    lines = path.read_bytes().decode().splitlines()
    return [line.split(delimiter) for line in lines[1 if header else 0 :]]


def hex_key(text: str) -> int:
    """What a hex field should decode to."""
    return int(text, 16) if text else int(MISSING)


@pytest.mark.parametrize(("name", "rows"), KAGGLE_FILES.items())
def test_kaggle_samples_parse_to_the_right_values(name: str, rows: int) -> None:
    path = shared(name)
    csv = name.endswith(".csv")
    ref = reference_rows(path, "," if csv else "\t", header=csv)
    ref = [r[1:] for r in ref] if csv else ref  # drop Id
    got = read_all(path, "kaggle", block_bytes=1 << 16)  # several blocks
    assert (
        len(ref) == rows
        and got["labels"].shape == (rows,)
        and got["counts"].shape == (rows, 13)
        and got["keys"].shape == (rows, 26)
    )
    assert not got["errors"].any() and not got["wrong_width"]
    assert np.array_equal(got["rows"], np.arange(rows))
    assert got["labels"].tolist() == [int(r[0]) for r in ref]
    assert got["counts"].tolist() == [[int(v) if v else 0 for v in r[1:14]] for r in ref]
    assert got["keys"].tolist() == [[hex_key(v) for v in r[14:]] for r in ref]
    assert (got["counts"] < 0).any() and (
        got["keys"] == MISSING
    ).any()  # the samples do have negatives and empty fields


def test_crlf_competition_csv_and_missing_final_newline_read_as_the_tsv() -> None:
    tsv = read_all(shared("criteo_kaggle_train_head1999.txt"), "kaggle")
    csv = read_all(shared("criteo_kaggle_competition_train_head1999.csv"), "kaggle")
    for key in ("labels", "counts", "keys"):
        assert np.array_equal(tsv[key], csv[key])
    assert not shared("criteo_kaggle_train_sample100.txt").read_bytes().endswith(b"\n")
    assert shared("criteo_kaggle_competition_train_head1999.csv").read_bytes().count(b"\r\n") == 2000


@pytest.mark.parametrize(
    ("name", "data_set"),
    [
        ("criteo_kaggle_competition_train_head1999.csv", "kaggle"),
        ("criteo_kaggle_train_head1999.txt", "kaggle"),
        ("avazu_train_head100.csv", "avazu"),
    ],
)
@pytest.mark.parametrize("compressed", [False, True])
def test_a_utf8_byte_order_mark_is_skipped(name: str, data_set: str, compressed: bool, tmp_path) -> None:
    path = shared(name)
    marked = tmp_path / (name + (".gz" if compressed else ""))
    data = b"\xef\xbb\xbf" + path.read_bytes()
    marked.write_bytes(gzip.compress(data) if compressed else data)
    assert detect_layout(marked, data_set) == detect_layout(path, data_set)
    plain, with_mark = read_all(path, data_set), read_all(marked, data_set)
    assert not with_mark["errors"].any() and not with_mark["wrong_width"]
    for key in ("rows", "labels", "counts", "keys"):
        assert np.array_equal(plain[key], with_mark[key])
    assert layouts.count_lines(marked) == layouts.count_lines(path)


@pytest.mark.parametrize(("name", "rows"), AVAZU_FILES.items())
def test_avazu_samples_parse_to_the_right_values(name: str, rows: int) -> None:
    path = shared(name)
    ref = reference_rows(path, ",", header=True)
    got = read_all(path, "avazu", block_bytes=1 << 16)
    layout = detect_layout(path, "avazu")
    assert (
        layout.categorical_features[:3] == ("hour_of_day", "weekday", "C1") and len(layout.categorical_features) == 23
    )
    assert got["keys"].shape == (rows, 23) and got["counts"].shape == (rows, 0) and not got["errors"].any()
    assert got["labels"].tolist() == [int(r[1]) for r in ref]
    hours = [r[2] for r in ref]
    assert got["keys"][:, 0].tolist() == [int(h[6:]) for h in hours]
    assert got["keys"][:, 1].tolist() == [
        datetime.date(2000 + int(h[:2]), int(h[2:4]), int(h[4:6])).weekday() for h in hours
    ]
    assert got["dates"].tolist() == [int(h[:6]) for h in hours]
    columns = layouts.AVAZU_COLUMNS[3:]
    expected = [[int(v, 16) if c in layouts.AVAZU_HEX else int(v) for c, v in zip(columns, r[3:])] for r in ref]
    assert got["keys"][:, 2:].tolist() == expected


def test_avazu_crlf_file_starts_with_the_lf_sample() -> None:
    lf = read_all(shared("avazu_train_head100.csv"), "avazu")
    crlf = read_all(shared("avazu_train_head2994_crlf.csv"), "avazu")
    assert np.array_equal(lf["keys"], crlf["keys"][:100]) and np.array_equal(lf["labels"], crlf["labels"][:100])


def test_gzip_input_reads_like_the_plain_file(tmp_path) -> None:
    plain = shared("criteo_kaggle_train_sample100.txt")
    packed = tmp_path / "train.txt.gz"
    with gzip.open(packed, "wb") as f:
        f.write(plain.read_bytes())
    a, b = read_all(plain, "kaggle"), read_all(packed, "kaggle")
    assert all(np.array_equal(a[k], b[k]) for k in ("labels", "counts", "keys"))
    assert layouts.count_lines(packed) == layouts.count_lines(plain) == 100


@pytest.mark.parametrize(
    ("name", "data_set", "message"),
    [
        ("criteo_kaggle_test_head1999_nolabel.txt", "kaggle", "unlabelled test.txt"),
        ("avazu_train_head100.csv", "kaggle", "use --data-set=avazu"),
        ("criteo_kaggle_train_sample100.txt", "avazu", "use --data-set=kaggle"),
    ],
)
def test_files_that_are_not_training_data_are_refused(name: str, data_set: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        detect_layout(shared(name), data_set)


def test_unlabelled_avazu_and_competition_test_files_are_refused(tmp_path) -> None:
    avazu = tmp_path / "avazu_test.csv"
    header = [c for c in layouts.AVAZU_COLUMNS if c != "click"]
    avazu.write_text(",".join(header) + "\n")
    with pytest.raises(UserError, match="unlabelled test file"):
        detect_layout(avazu, "avazu")
    competition = tmp_path / "test.csv"
    competition.write_text("Id,I1,I2\n")
    with pytest.raises(UserError, match="unlabelled test CSV"):
        detect_layout(competition, "kaggle")


def test_missing_empty_and_directory_inputs_give_one_line(tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    for path, message in [
        (tmp_path / "nope.txt", "no such file"),
        (empty, "file is empty"),
        (tmp_path, "is a directory"),
    ]:
        with pytest.raises(UserError, match=message) as info:
            detect_layout(path, "kaggle")
        assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_row_numbers_follow_lines_across_blocks_and_rejected_rows(tmp_path) -> None:
    """Rows with a wrong column count are counted as rows, wherever they fall among blocks."""
    lines = shared("criteo_kaggle_train_head1999.txt").read_text().splitlines()
    bad_at = [0, 3, 700, 701, 1500, len(lines) - 1]
    for i in bad_at:
        lines[i] = "\t".join(lines[i].split("\t")[:-2])  # 38 fields
    path = tmp_path / "t.txt"
    path.write_text("\n".join(lines))
    got = read_all(path, "kaggle", block_bytes=1 << 15)
    assert [w for w, _ in got["wrong_width"]] == bad_at and {f for _, f in got["wrong_width"]} == {38}
    assert got["rows"].tolist() == [i for i in range(len(lines)) if i not in bad_at]
    ref = read_all(shared("criteo_kaggle_train_head1999.txt"), "kaggle")
    assert np.array_equal(got["keys"], ref["keys"][got["rows"]])


def test_field_decoders() -> None:
    keys, bad = raw_data.parse_hex(pa.array(["0000000a", None, "FFFFFFFF", "12345g78", "abc", "deadbeef"]))
    assert bad.tolist() == [False, False, False, True, True, False]
    assert keys.tolist() == [10, int(MISSING), 2**32 - 1, int(MISSING), int(MISSING), 0xDEADBEEF]
    values, missing, bad, out_of_range = raw_data.parse_int(
        pa.array(["12", None, "-3", "1.5", "x", "99999999999999999999"])
    )
    assert values[:3].tolist() == [12, 0, -3] and missing.tolist() == [False, True, False, False, False, False]
    assert bad.tolist() == [False, False, False, True, True, False]
    assert out_of_range.tolist() == [False, False, False, False, False, True]
    labels, bad = raw_data.parse_label(pa.array(["0", "1", "2", None, "10", "/"]))
    assert labels[:2].tolist() == [0, 1] and bad.tolist() == [False, False, True, True, True, True]
    hour, weekday, date, bad = raw_data.parse_hour(
        pa.array(["14102100", "14103023", "14113100", "14102124", "1410210", None, "14022900"])
    )
    assert bad.tolist() == [False, False, True, True, True, True, True]
    assert (
        hour[:2].tolist() == [0, 23] and weekday[:2].tolist() == [1, 3] and date[:2].tolist() == [141021, 141030]
    )  # Tuesday, Thursday


INTEGER_RULE = {  # field: value, or "bad" (not an integer) or "range" (more than 18 significant digits)
    "007": 7,
    "-5": -5,
    "-0": 0,
    "999999999999999999": 10**18 - 1,
    "-999999999999999999": -(10**18) + 1,
    "0000000000000000000001": 1,
    "0x10": "bad",
    "0X1f": "bad",
    "+5": "bad",
    "-": "bad",
    " 5": "bad",
    "1e3": "bad",
    "1.": "bad",
    "1/2": "bad",
    "1000000000000000000": "range",
    "9223372036854775807": "range",
    "-9223372036854775808": "range",
    "99999999999999999999": "range",
}


@pytest.mark.parametrize("text", INTEGER_RULE)
def test_one_integer_rule_on_the_fast_path_and_the_fallback(text: str) -> None:
    """Alone, a field takes pyarrow's whole-column cast where it can; beside a bad field, the fallback."""
    expected = INTEGER_RULE[text]
    for column in ([text], [text, "x"], ["1", text, "2"]):
        values, missing, bad, out_of_range = raw_data.parse_int(pa.array(column))
        i = column.index(text)
        assert not missing[i] and bool(bad[i]) == (expected == "bad") and bool(out_of_range[i]) == (expected == "range")
        assert values[i] == (expected if isinstance(expected, int) else 0), column


def test_count_lines_counts_a_last_line_without_newline_and_not_empty_lines_at_the_end(tmp_path) -> None:
    cases = [
        (b"a\nb\n", 2),
        (b"a\nb", 2),
        (b"a\r\nb\r\n", 2),
        (b"x", 1),
        (b"a\nb\n\n", 2),
        (b"a\r\nb\r\n\r\n\r\n", 2),
        (b"a\n\nb\n\n", 3),
        (b"\n", 0),
    ]
    for data, lines in cases:
        (tmp_path / "f").write_bytes(data)
        assert layouts.count_lines(tmp_path / "f", chunk=3) == layouts.count_lines(tmp_path / "f") == lines, data


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_empty_lines_at_the_end_are_not_rows_but_in_the_middle_are_errors(line_end: str, tmp_path) -> None:
    lines = [line.rstrip("\r") for line in shared("criteo_kaggle_train_sample100.txt").read_text().splitlines()]
    path = tmp_path / "train.txt"
    clean = read_all(shared("criteo_kaggle_train_sample100.txt"), "kaggle")
    for tail in (1, 3, 3000):  # 3000: over several blocks of empty lines only
        path.write_text(line_end.join(lines) + line_end * (tail + 1), newline="")
        got = read_all(path, "kaggle", block_bytes=4096)
        assert got["rows"].tolist() == list(range(100)) and not got["errors"].any() and not got["wrong_width"]
        assert np.array_equal(got["keys"], clean["keys"]) and np.array_equal(got["labels"], clean["labels"])
    path.write_text(line_end.join([*lines[:99], *[""] * 3000, lines[99]]) + line_end, newline="")
    got = read_all(path, "kaggle", block_bytes=4096)
    empty = np.flatnonzero(got["errors"])
    assert empty.tolist() == list(range(99, 3099)) and got["rows"][-1] == 3099


def test_a_gzip_file_is_recognised_by_content_not_name(tmp_path) -> None:
    src = shared("avazu_train_head100.csv")
    packed = tmp_path / "train.csv.gz"
    with open(src, "rb") as f, gzip.open(packed, "wb") as out:
        shutil.copyfileobj(f, out)
    renamed = tmp_path / "train"
    packed.rename(renamed)
    assert layouts.is_gzip(renamed) and detect_layout(renamed, "avazu").name == "avazu"
    assert len(read_all(renamed, "avazu")["labels"]) == 100
