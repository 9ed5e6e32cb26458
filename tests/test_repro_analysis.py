"""Effective rank, the rare/frequent split, validation metrics in the results JSON, and analyze_rank.py end to end."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import data_utils
import dlrm_mlet
from mlet.core.errors import UserError
from mlet.data.preprocessing.vocabulary import IdBounds, IdLimits
from mlet.data.sources import ArraySource
from mlet.repro import rank_analysis as analyze_rank
from mlet.repro.analysis import (
    bin_labels,
    data_key,
    effective_rank,
    frequency_metrics,
    parse_edges,
    rarest_id_counts,
    singular_values,
    table_spectra,
    training_counts,
    transformed_ids,
)
from mlet.training.checkpoints import atomic_save, load_checkpoint
from mlet.training.metrics import ctr_metrics


def matrix_with_spectrum(values: list[float], rows: int = 40, seed: int = 0) -> torch.Tensor:
    """A rows x len(values) matrix whose singular values are ``values``: U diag(values) V^T with random
    orthonormal U, V."""
    gen = torch.Generator().manual_seed(seed)
    k = len(values)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(k, k, generator=gen, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v.T


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.0, 1.0, 1.0, 1.0], 4.0),  # equal singular values: the rank
        ([5.0, 0.0, 0.0], 1.0),  # one direction
        ([2.0, 2.0, 0.0, 0.0], 2.0),  # zeros do not count
        ([3.0, 1.0], math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))),  # p = (3/4, 1/4)
        ([0.0, 0.0], 0.0),  # a zero matrix
    ],
)
def test_effective_rank_of_known_spectra(values: list[float], expected: float) -> None:
    assert effective_rank(np.array(values)) == pytest.approx(expected, rel=1e-12)
    recovered = singular_values(matrix_with_spectrum(values))
    assert recovered == pytest.approx(sorted(values, reverse=True), abs=1e-9)
    assert effective_rank(recovered) == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_effective_rank_is_scale_invariant_and_between_one_and_rank() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        values = np.sort(rng.exponential(size=rng.integers(1, 10)))[::-1]
        e = effective_rank(values)
        assert 1.0 - 1e-12 <= e <= len(values) + 1e-12
        assert effective_rank(7.5 * values) == pytest.approx(e)
    with pytest.raises(ValueError):
        effective_rank(np.array([1.0, -1.0]))


def test_table_spectra_of_a_low_rank_table_and_its_frequent_rows() -> None:
    gen = torch.Generator().manual_seed(1)
    low = torch.randn(30, 1, generator=gen) @ torch.randn(1, 8, generator=gen)  # rank 1
    full = torch.cat([low, torch.randn(10, 8, generator=gen)])  # plus 10 random rows
    (entry,) = table_spectra([full], [np.arange(40) < 30])
    assert entry["rows"] == 40 and entry["dim"] == 8 and entry["frequent_rows"] == 30
    assert entry["effective_rank_frequent"] == pytest.approx(1.0, abs=1e-6)
    assert entry["effective_rank"] > 2


def test_table_spectra_mark_non_finite_tables_diverged_instead_of_failing() -> None:
    gen = torch.Generator().manual_seed(2)
    finite, broken = torch.randn(20, 4, generator=gen), torch.randn(20, 4, generator=gen)
    broken[3, 1], broken[15, 0] = math.nan, math.inf  # row 3 is rare, row 15 frequent
    good, bad = table_spectra([finite, broken], [np.arange(20) >= 10, np.arange(20) < 10])
    assert not good["diverged"] and good["effective_rank"] > 1 and len(good["singular_values"]) == 4
    assert bad["diverged"] and bad["singular_values"] is None and bad["effective_rank"] is None
    assert bad["frequent_rows"] == 10 and bad["effective_rank_frequent"] is None  # its frequent rows hold the NaN too


def test_rare_and_frequent_split_on_a_tiny_data_set() -> None:
    # two tables; training ids: table 0 id 0 x4, id 1 x1; table 1 id 0 x3, id 2 x2 (id 1 unseen)
    train_ids = np.array([[0, 0], [0, 0], [0, 0], [0, 2], [1, 2]])
    source = ArraySource(np.zeros((5, 1), np.float32), train_ids, np.zeros(5), batch_size=2)
    counts = training_counts(source, [2, 3], chunk=2)
    assert [c.tolist() for c in counts] == [[4, 1], [3, 0, 2]]
    test_ids = np.array([[0, 0], [1, 0], [0, 1], [0, 2]])
    assert rarest_id_counts(test_ids, counts).tolist() == [3, 1, 0, 2]  # the rarest id decides; unseen counts 0
    # a transform (as IdLimits) is applied before counting
    folded = ArraySource(
        np.zeros((5, 1), np.float32),
        train_ids,
        np.zeros(5),
        batch_size=2,
        id_transform=lambda ids, tables=None: np.minimum(ids, 1),
    )
    assert [c.tolist() for c in training_counts(folded, [2, 3])] == [[4, 1], [3, 2, 0]]

    probs = np.array([0.9, 0.2, 0.8, 0.3, 0.6, 0.4])
    labels = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    rarest = np.array([0, 0, 5, 5, 50, 50])
    bins = frequency_metrics(probs, labels, rarest, [2, 10])
    assert [b["bin"] for b in bins] == ["< 2", "2-9", ">= 10"] == bin_labels([2, 10])
    assert [b["share"] for b in bins] == pytest.approx([1 / 3] * 3)
    assert [b["samples"] for b in bins] == [2, 2, 2]
    assert [b["auc"] for b in bins] == [1.0, 0.0, 1.0]
    assert bins[1]["logloss"] == pytest.approx(ctr_metrics(probs[2:4], labels[2:4])["logloss"])
    assert parse_edges("10,100") == [10, 100]
    for bad in ("100,10", "0,5", "x"):
        with pytest.raises(ValueError):
            parse_edges(bad)


@pytest.mark.parametrize(("bad", "row"), [(7, 3), (-1, 4)])
def test_the_analysis_refuses_ids_outside_their_vocabulary_naming_file_row_and_feature(bad: int, row: int) -> None:
    """A damaged processed file: an id past its vocabulary (which the id limits would fold into the rare row) or
    a negative one stops the counts with the reader's one line, as training's batches do."""
    ids = np.array([[1, 2], [2, 0], [1, 1], [0, 2], [2, 2]], np.int32)
    ids[row, 1] = bad
    bounds = IdBounds(np.array([2, 2], np.uint32), Path("p/train.cat.npy"), ("C1", "C2"))
    limits = IdLimits.from_counts([np.array([5, 1]), np.array([4, 3])], min_count=2, modulus=0)
    source = ArraySource(np.zeros((5, 1), np.float32), ids, np.zeros(5), 2, id_transform=limits, id_bounds=bounds)
    message = rf"^p/train.cat.npy: row {row}: id {bad} of C2 is outside 0..2 \(its vocabulary\)"
    with pytest.raises(UserError, match=message):
        training_counts(source, limits.table_sizes, chunk=2)
    with pytest.raises(UserError, match=message):
        transformed_ids(source, slice(0, 5))
    ids[row, 1] = 2  # sound again; C1's id 2, seen once in training, is rare
    assert [c.tolist() for c in training_counts(source, limits.table_sizes)] == [[3, 2], [1, 1, 3]]


def test_diverged_predictions_give_nan_metrics_not_an_error() -> None:
    m = ctr_metrics(np.array([0.2, np.nan, 0.7]), np.array([0.0, 1.0, 1.0]))
    assert math.isnan(m["auc"]) and math.isnan(m["logloss"]) and m["samples"] == 3
    assert math.isnan(m["accuracy"])  # a NaN prediction is not a correct "no click"


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A generated Kaggle-format file; a baseline and an MLET run on it (results JSONs and collapsed checkpoints)."""
    root = tmp_path_factory.mktemp("repro")
    raw = root / "train.txt"
    assert (
        data_utils.command_line(
            ["generate", "kaggle", "--rows", "6000", "--seed", "3", "--out", str(raw), "--scale", "0.0005"]
        )
        == 0
    )
    common = [
        "--data-generation=dataset",
        "--data-set=kaggle",
        f"--raw-data-file={raw}",
        f"--processed-data-file={root / 'processed'}",
        "--arch-sparse-feature-size=4",
        "--arch-mlp-bot=13-8-4",
        "--arch-mlp-top=8-1",
        "--mini-batch-size=128",
        "--learning-rate=0.5",
        "--progress=false",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, extra in (
            ("base", []),
            ("mlet", ["--mlet-hidden=16"]),
            ("mlet_val", ["--mlet-hidden=16", "--eval-split=val"]),
        ):
            argv = [*common, *extra, f"--results-json={root / name}.json", f"--save-collapsed={root / name}.pt"]
            assert dlrm_mlet.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.mark.slow
def test_results_json_holds_validation_and_test_metrics_of_the_same_model(tiny_runs) -> None:
    meta = json.loads((tiny_runs / "processed" / "meta.json").read_text())
    test_run = json.loads((tiny_runs / "mlet.json").read_text())
    assert test_run["final"]["samples"] == meta["rows"]["test"] and test_run["val"]["samples"] == meta["rows"]["val"]
    assert test_run["val"]["iteration"] == test_run["final"]["iteration"]
    assert test_run["val"]["auc"] != test_run["final"]["auc"]  # other samples
    val_run = json.loads((tiny_runs / "mlet_val.json").read_text())
    assert val_run["val"] == val_run["final"]  # --eval-split=val: the reported metrics are the validation ones
    assert val_run["val"]["auc"] == pytest.approx(test_run["val"]["auc"], abs=1e-12)  # same seed, same model
    generated = [
        "--data-generation=synthetic",
        "--arch-embedding-size=50-20",
        "--arch-mlp-bot=13-8-4",
        "--arch-sparse-feature-size=4",
    ]
    generated += [
        "--arch-mlp-top=8-1",
        "--mini-batch-size=64",
        "--num-batches=2",
        "--progress=false",
        f"--results-json={tiny_runs / 'gen.json'}",
    ]
    assert dlrm_mlet.main(generated) == 0
    assert (
        json.loads((tiny_runs / "gen.json").read_text())["val"] is None
    )  # generated data without --eval-split=val: no validation split


@pytest.mark.slow
def test_analyze_rank_command_line(tiny_runs, capsys) -> None:
    out = tiny_runs / "rank"
    code = analyze_rank.main(
        [str(tiny_runs / "base.pt"), str(tiny_runs / "mlet.pt"), "--out", str(out), "--frequency-edges", "5,50"]
    )
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "rank.json").read_text())
    assert [r["label"].split(" (")[0] for r in results] == ["baseline d=4", "MLET d=4 K=16"]
    for r in results:
        assert all(1.0 <= t["effective_rank"] <= 4.0 + 1e-9 for t in r["tables"] if t["rows"] >= 4)
        assert [b["bin"] for b in r["frequency"]] == ["< 5", "5-49", ">= 50"]
        assert (
            sum(b["samples"] for b in r["frequency"])
            == json.loads((tiny_runs / "base.json").read_text())["final"]["samples"]
        )
    # the checkpoints (MLET collapsed) predict as the runs did, sample for sample in the same order
    for r, name in zip(results, ("base", "mlet")):
        final = json.loads((tiny_runs / f"{name}.json").read_text())["final"]
        assert (
            r["overall"]["auc"] == pytest.approx(final["auc"], abs=1e-6) and r["overall"]["samples"] == final["samples"]
        )
    text = (out / "rank.md").read_text()
    assert "Effective rank" in text and "rarest id" in text and (out / "rank.png").stat().st_size > 0
    assert plt.get_fignums() == []  # the figure closed once written (full_scale.py plots one a run)
    assert analyze_rank.main([str(tiny_runs / "base.pt"), "--out", str(out), "--frequency-edges", "50,5"]) == 2
    assert "--frequency-edges" in capsys.readouterr().err
    assert analyze_rank.main([str(tiny_runs / "base.pt"), "--out", str(tiny_runs / "base.json")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert analyze_rank.main([str(tiny_runs / "nope.pt"), "--out", str(out)]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err


@pytest.mark.slow
def test_checkpoints_of_the_same_config_are_told_apart_by_their_file(tiny_runs, capsys) -> None:
    # Two checkpoints trained with the same flags (a run and its copy, or the two-layer and the collapsed file)
    # gave two rows of rank.md under one label, "MLET d=4 K=16 (sgd, lr 0.5, seed 123)".
    out = tiny_runs / "rank_same"
    argv = [str(tiny_runs / "mlet.pt"), str(tiny_runs / "mlet_val.pt"), "--out", str(out), "--no-frequency"]
    assert analyze_rank.main(argv) == 0, capsys.readouterr().err
    labels = [r["label"] for r in json.loads((out / "rank.json").read_text())]
    assert sorted(label.rsplit(" ", 1)[-1] for label in labels) == ["[mlet.pt]", "[mlet_val.pt]"], labels
    assert all(label.startswith("MLET d=4 K=16 (sgd, lr 0.5, seed ") for label in labels)
    base = [str(tiny_runs / "base.pt"), *argv[1:]]
    assert analyze_rank.main(base) == 0  # labels that differ already stay as they were
    assert "[" not in "".join(r["label"] for r in json.loads((out / "rank.json").read_text()))


def diverged_copy(source, target, value: float = math.nan) -> int:
    """``source`` (a collapsed checkpoint) with one weight of its largest table set to ``value``, saved as
    ``target``; returns that table."""
    ckpt = load_checkpoint(source)
    sizes = list(ckpt["model_config"]["table_sizes"])
    largest = int(np.argmax(sizes))
    ckpt["model"]["tables.weight"][sum(sizes[:largest]), 0] = value
    atomic_save(ckpt, target)
    return largest


def test_analyze_rank_reports_a_diverged_checkpoint_and_goes_on(tiny_runs, capsys) -> None:
    largest = diverged_copy(tiny_runs / "mlet.pt", tiny_runs / "diverged.pt")
    out = tiny_runs / "rank_diverged"
    argv = [
        str(tiny_runs / "base.pt"),
        str(tiny_runs / "diverged.pt"),
        "--out",
        str(out),
        "--frequency-edges",
        "5,50,1000000000",
    ]
    code = analyze_rank.main(argv)
    printed = capsys.readouterr()
    assert code == 0, printed.err
    base, diverged = json.loads((out / "rank.json").read_text())
    assert not base["diverged"] and all(t["effective_rank"] is not None for t in base["tables"])
    assert diverged["diverged"] and [t["table"] for t in diverged["tables"] if t["diverged"]] == [largest]
    assert (
        diverged["tables"][largest]["effective_rank"] is None and diverged["tables"][largest]["singular_values"] is None
    )
    assert all(
        t["effective_rank"] is not None for t in diverged["tables"] if t["table"] != largest
    )  # the finite tables still get theirs
    text = (out / "rank.md").read_text()
    assert (
        text in printed.out and f"{diverged['label']}: diverged (non-finite weights)" in text and "| diverged |" in text
    )
    assert "nan" not in text.lower()  # the empty bin (>= 1e9) and the undefined means read n/a
    assert base["frequency"][-1]["samples"] == 0 and "n/a" in text
    (warning,) = printed.err.strip().splitlines()
    assert warning == (
        f"analyze_rank.py: warning: {tiny_runs / 'diverged.pt'}: diverged (non-finite weights); "
        f"no spectrum for table(s) {largest}"
    )


def test_analyze_rank_rejects_a_negative_top_tables(tiny_runs, capsys) -> None:
    assert (
        analyze_rank.main([str(tiny_runs / "base.pt"), "--out", str(tiny_runs / "rank_top"), "--top-tables", "-1"]) == 2
    )
    assert capsys.readouterr().err == "analyze_rank.py: error: --top-tables: must be >= 0, got -1\n"
    assert not (tiny_runs / "rank_top").exists()


@pytest.mark.slow
def test_analyze_rank_uses_the_processed_data_when_the_raw_file_moved(tiny_runs, tmp_path, capsys) -> None:
    def moved(name: str, processed: Path) -> Path:
        """base.pt as if its raw file had moved to tmp_path/gone.txt (processed data recorded in ``processed``)."""
        ckpt = load_checkpoint(tiny_runs / "base.pt")
        ckpt["args"] = {
            **ckpt["args"],
            "raw_data_file": str(tmp_path / "gone.txt"),
            "processed_data_file": str(processed),
        }
        atomic_save(ckpt, tmp_path / name)
        return tmp_path / name

    out = tmp_path / "rank"
    assert analyze_rank.main([str(moved("cached.pt", tiny_runs / "processed")), "--out", str(out)]) == 0
    result = json.loads((out / "rank.json").read_text())[0]
    final = json.loads((tiny_runs / "base.json").read_text())["final"]
    assert result["overall"]["auc"] == pytest.approx(final["auc"], abs=1e-6) and result["frequency"]
    capsys.readouterr()
    lost = moved("lost.pt", tmp_path / "nothing")
    assert analyze_rank.main([str(lost), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"analyze_rank.py: error: {lost}: the raw data file this checkpoint was trained on, {tmp_path / 'gone.txt'}, "
        f"is missing, and there are no processed data in {tmp_path / 'nothing'}; put the file back to measure the "
        "rare/frequent ids, or use --no-frequency\n"
    )


@pytest.mark.slow
def test_analyze_rank_finds_the_data_of_a_moved_sweep_directory(tiny_runs, tmp_path) -> None:
    # a sweep directory moved to another disk: its checkpoints record its data where it was, and the analysis
    # stopped naming the missing raw file
    old, new = tmp_path / "disk1" / "run", tmp_path / "disk2" / "run"
    (new / "checkpoints").mkdir(parents=True)
    shutil.copy2(tiny_runs / "train.txt", new / "train.txt")  # as mv: the processed data stay valid
    shutil.copytree(tiny_runs / "processed", new / "processed")
    ckpt = load_checkpoint(tiny_runs / "base.pt")
    recorded = {"raw_data_file": old / "train.txt", "processed_data_file": old / "processed"}
    ckpt["args"] = {**ckpt["args"], **{k: str(v) for k, v in recorded.items()}}
    ckpt["args"]["save_collapsed"] = str(old / "checkpoints" / "base.pt")
    atomic_save(ckpt, new / "checkpoints" / "base.pt")
    out = tmp_path / "rank"
    assert analyze_rank.main([str(new / "checkpoints" / "base.pt"), "--out", str(out)]) == 0
    result = json.loads((out / "rank.json").read_text())[0]
    final = json.loads((tiny_runs / "base.json").read_text())["final"]
    assert result["overall"]["auc"] == pytest.approx(final["auc"], abs=1e-6) and result["frequency"]


@pytest.mark.parametrize(
    ("generation", "flag", "other"),
    [
        ("dataset", "data_sub_sample_rate", 0.875),  # sub-sampled negatives: other training rows, other counts
        ("dataset", "skip_bad_rows", True),
        ("synthetic", "synthetic_zipf", 1.2),  # another click model
        ("synthetic", "synthetic_rank", 4),
    ],
)
def test_runs_on_other_data_do_not_share_their_training_counts(generation: str, flag: str, other: object) -> None:
    """The rank analysis computes training id counts once per data key: data that differ must not share one (runs
    with other sub-sampling or another click model were given the first one's counts)."""
    flags = {"data_generation": generation, "data_set": "kaggle", "data_sub_sample_rate": 0.0,
             "skip_bad_rows": False, "synthetic_zipf": 1.05, "synthetic_rank": 16, "numpy_rand_seed": 1}  # fmt: skip
    assert data_key(flags) != data_key({**flags, flag: other})
    assert data_key(flags) == data_key(dict(flags))
