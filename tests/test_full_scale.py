"""The full-scale reproduction's machinery, small and on the CPU: the click model generated as tensors, the
in-process pieces (order, budget, resume), the in-memory rank analysis and the report."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    GRID,
    ROOT,
    ROWS,
    SCALE,
    SNIPPET_ENV,
    TRAIN,
    fake_payload,
    piece_args,
    run_snippet,
    running,
    wait_for,
)

from mlet.core.errors import UserError
from mlet.data.device_click import DeviceClickModel, kaggle_rows, split_bounds, zipf_cdf
from mlet.data.preprocessing.layouts import KAGGLE_CATEGORICAL
from mlet.data.preprocessing.raw_generate import KAGGLE_MISSING
from mlet.data.synthetic import ClickModel, ClickModelConfig
from mlet.repro import full_scale, full_scale_pool, full_scale_run, summary, sweep, sweep_plan, sweep_runs
from mlet.repro.analysis import gram_singular_values
from mlet.repro.experiments import Config, RunSpec
from mlet.repro.run_results import load_run_dir


@pytest.fixture(scope="module")
def rows():
    """A small generated data set (the same for every test here)."""
    return kaggle_rows(ROWS, seed=3, scale=SCALE, device="cpu", chunk=1 << 13)


def test_the_same_seed_gives_the_same_rows_and_another_seed_others(rows):
    again = kaggle_rows(ROWS, seed=3, scale=SCALE, device="cpu", chunk=1 << 12)  # other chunks: other draws
    same = kaggle_rows(ROWS, seed=3, scale=SCALE, device="cpu", chunk=1 << 13)
    other = kaggle_rows(ROWS, seed=4, scale=SCALE, device="cpu", chunk=1 << 13)
    assert same.checksum_text == rows.checksum_text
    assert torch.equal(same.ids, rows.ids) and torch.equal(same.dense, rows.dense)
    assert other.checksum_text != rows.checksum_text
    assert again.checksum_text != rows.checksum_text


def test_split_is_upstreams_seven_days():
    # 100 rows: days of 15, 15, 14, 14, 14, 14, 14; six days train, half of the last (rounded up) test
    assert split_bounds(100) == (86, 93)
    assert split_bounds(700) == (600, 650)


def test_vocabulary_numbers_training_values_by_frequency(rows):
    train = rows.ids[: rows.train_end].long()
    for t, size in enumerate(rows.table_sizes):
        counts = rows.train_counts[t]
        assert len(counts) == size and int(counts[0]) == 0  # 0: unseen in training
        assert int(counts.sum()) == rows.train_end
        assert bool((counts[1:] > 0).all()) and bool((counts[1:-1] >= counts[2:]).all())  # decreasing
        assert torch.equal(torch.bincount(train[:, t], minlength=size), counts)
        assert int(rows.ids[:, t].max()) < size and int(train[:, t].min()) >= 1
    assert int(rows.ids[rows.train_end :].min()) >= 0


def test_blank_fields_at_kaggles_rates(rows):
    # C22 is blank in 81.6% of rows: its blank value is the most frequent one, id 1
    share = dict(KAGGLE_MISSING)[("C22",)]
    c22 = KAGGLE_CATEGORICAL.index("C22")
    assert abs(float(rows.train_counts[c22][1]) / rows.train_end - share) < 0.02
    # I12 is blank in 77.7% of rows: a blank count reads as 0, so log(1 + count) is 0 at least that often
    assert float((rows.dense[:, 11] == 0).float().mean()) >= share * 0.9


def test_device_model_matches_the_cpu_model_in_distribution():
    config = ClickModelConfig(table_sizes=(3, 50, 2000), seed=5)
    cpu, device = ClickModel(config), DeviceClickModel(config, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    _, ids, labels = device.sample(40_000, gen)
    _, cpu_ids, cpu_labels = cpu.sample(40_000, seed=1)
    assert abs(float(labels.double().mean()) - float(cpu_labels.mean())) < 0.02
    # Zipf popularity: the most popular value of the 3-value table holds p(rank 0) of the samples
    expected = float(zipf_cdf(3, config.zipf_exponent, torch.device("cpu"))[0])
    top = torch.bincount(ids[:, 0], minlength=3).max().item() / len(ids)
    cpu_top = np.bincount(cpu_ids[:, 0], minlength=3).max() / len(cpu_ids)
    assert abs(top - expected) < 0.01 and abs(cpu_top - expected) < 0.01


def test_gram_singular_values_equal_the_svd():
    matrix = torch.randn(500, 6, dtype=torch.float64) @ torch.diag(
        torch.tensor([5.0, 3, 1, 0.5, 0.1, 0.01], dtype=torch.float64)
    )
    expected = torch.linalg.svdvals(matrix).numpy()
    assert np.allclose(gram_singular_values(matrix.float(), chunk=64), expected, rtol=1e-4, atol=1e-6)
    assert np.allclose(gram_singular_values(matrix.t()), expected, rtol=1e-6)  # a wide matrix too


def test_priority_puts_the_headline_first(tmp_path):
    _, settings = full_scale.parse(piece_args(tmp_path / "run"))
    assert settings is not None
    todo = full_scale.wanted(settings)
    names = [s.name for s in todo]
    assert names[:3] == ["sgd_base_d4_lr0.2_s1", "sgd_mlet_d4_k64_lr0.2_s1", "sgd_base_d8_lr0.2_s1"]
    assert all(s.seed == 1 for s in todo[:6]) and all(s.seed == 2 for s in todo[6:])


@pytest.mark.slow
def test_pieces_resume_and_report(tmp_path, capsys):
    run_dir = tmp_path / "run"
    # no time left after generating the data: nothing trains, the session is recorded
    assert full_scale.main(piece_args(run_dir, "--budget-s", "0.001")) == 0
    assert "0 runs finished, 0 failed, 12 still to do" in capsys.readouterr().out
    assert not list((run_dir / "results").glob("*.json"))
    assert full_scale.main(piece_args(run_dir, "--budget-s", "300")) == 0
    names = {r.spec.name for r in load_run_dir(run_dir)}
    # the initial grid (3 configs x 2 rates x 2 seeds), plus widening where a rate at an edge was best
    assert {f"sgd_{c}_lr{lr}_s{s}" for c in ("base_d4", "base_d8", "mlet_d4_k64") for lr in ("0.2", "0.8")
            for s in (1, 2)} <= names  # fmt: skip
    payload = json.loads((run_dir / "results" / "sgd_base_d4_lr0.2_s1.json").read_text())
    assert payload["full_scale"]["checksum"] == kaggle_rows(ROWS, 1, SCALE, "cpu").checksum_text
    assert payload["args"]["table_sizes"] == payload["model_config"]["table_sizes"]
    assert math.isfinite(payload["val"]["auc"]) and payload["val"]["auc"] != payload["final"]["auc"]
    # rank entries for the first seed's paper-rate runs only
    entries = sorted(p.name for p in (run_dir / "rank" / "sgd").glob("*.json"))
    assert entries == ["sgd_base_d4_lr0.2_s1.json", "sgd_base_d8_lr0.2_s1.json", "sgd_mlet_d4_k64_lr0.2_s1.json"]
    sessions = json.loads((run_dir / "sweep.json").read_text())["sessions"]
    assert len(sessions) == 2 and sessions[0]["data_checksum"] == sessions[1]["data_checksum"]
    # a third start finds nothing to do and trains nothing
    assert full_scale.main(piece_args(run_dir)) == 0
    assert "0 runs finished, 0 failed, 0 still to do" in capsys.readouterr().out
    assert full_scale.main(["--run-dir", str(run_dir), "--report"]) == 0  # no device, no grid flags needed
    assert (run_dir / "summary.md").exists() and (run_dir / "rank" / "sgd" / "rank.png").exists()
    rank = (run_dir / "rank" / "sgd" / "rank.md").read_text()
    assert "AUC >= 1000" in rank and "MLET d=4 K=64 (sgd, lr 0.2, seed 1)" in rank
    # a damaged results JSON: the others reported, the damaged one named, exit 1 as summarize.py's
    (run_dir / "results" / "sgd_base_d8_lr0.8_s2.json").write_text('{"final": ')
    assert full_scale.main(["--run-dir", str(run_dir), "--report"]) == 1
    assert "sgd_base_d8_lr0.8_s2.json" in (run_dir / "summary.md").read_text()


NO_CUDA = ["--device", "cuda"] if not torch.cuda.is_available() else ["--rows", "3"]


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--scale", "0"], "--scale: must be in (0, 1]"),
        (["--budget-s", "-1"], "--budget-s: must be > 0"),
        (["--frequency-edges", "10,5"], "--frequency-edges: expected increasing"),
        (["--rows", "3"], "--rows"),
        (NO_CUDA, NO_CUDA[0]),
        (["--device", "tpu"], "--device: expected cpu or cuda[:N], got 'tpu'"),
        (["--qr-dims", "4"], "--qr-dims: the full-scale grid compares plain tables with MLET only"),
        (["--mlet-qr-dims", "4"], "--mlet-qr-dims: the full-scale grid compares"),
        (["--md-dims", "4"], "--md-dims: the full-scale grid compares"),
        (["--mlet-md-dims", "4"], "--mlet-md-dims: the full-scale grid compares"),
        (["--quantize-bits", "8"], "--quantize-bits: the full-scale grid compares"),
        (["--jobs", "2"], "--jobs: the full-scale runs train one at a time per --device entry"),
        (["--device", "cpu,meta"], "--device: expected cpu or cuda[:N], got 'meta'"),
        (["--", "--budget-s", "5"], "--budget-s 5: not a dlrm_mlet.py flag (the flags after -- go to every run;"),
        (["--step-rates-json", "rates.json"], "--step-rates-json: holds the rates --measure-batches times"),
        (["--device", "cpu,cpu", "--measure-batches", "512"], "--measure-batches: the step rates are timed on one"),
    ],
)
def test_bad_flags_are_one_line(tmp_path, capsys, flag, message):
    dashes = flag.index("--") if "--" in flag else len(flag)  # flags after -- go to every run
    argv = ["--run-dir", str(tmp_path / "run"), "--device", "cpu", *flag[:dashes], *GRID, *TRAIN, *flag[dashes + 1 :]]
    assert full_scale.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("full_scale.py: error: ") and message in err and "\n" not in err
    if "grid compares" in message:
        assert "scripts/reproduce.sh's embedded default compares" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("grid", "flag"),
    [(["--qr-dims", "4"], "--qr-flag"), (["--md-dims", "4"], "--md-flag"), (["--quantize-bits", "8"], "--quantize")],
)
def test_build_trainer_refuses_what_it_would_not_build(tmp_path, rows, grid, flag):
    # settings made past full_scale.parse's refusal: build_trainer itself refuses, never trains plain tables
    args = sweep.build_parser().parse_args(["--run-dir", str(tmp_path), *GRID, *grid, *TRAIN])
    args.train_flags = [*full_scale.DEFAULT_TRAIN, *args.train_flags]
    settings = sweep.settings_from_args(args)
    piece = full_scale_run.Piece(settings, rows, torch.device("cpu"), [10, 100])
    spec = next(s for s in full_scale.wanted(settings) if s.config.method or flag == "--quantize")
    with pytest.raises(UserError, match=f"^{flag}.*: the full-scale grid compares plain tables with MLET only"):
        full_scale_run.build_trainer(spec, piece)


def test_errors_carry_this_commands_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        full_scale.main(piece_args(tmp_path / "run", "--bogus"))
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "full_scale.py: error: unrecognized arguments: --bogus\n"
    assert full_scale.main(["--run-dir", str(tmp_path / "missing"), "--report"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("full_scale.py: error: --run-dir ") and "no such folder" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("session", "flag", "old"),
    [
        ({"rows": ROWS + 1, "scale": SCALE, "data_seed": 1}, "--rows", ROWS + 1),
        ({"rows": ROWS, "scale": 0.001, "data_seed": 1}, "--scale", 0.001),
        ({"rows": ROWS, "scale": SCALE, "data_seed": 2}, "--data-seed", 2),
    ],
)
def test_other_data_flags_on_a_run_dir_are_refused_before_generating(tmp_path, capsys, monkeypatch, session, flag, old):
    run_dir = tmp_path / "run"
    _, settings = full_scale.parse(piece_args(run_dir))
    assert settings is not None
    later = {"started": "then"}  # a later session without the data flags (a piece that was cut short) is skipped
    record = {"settings": settings.to_dict(), "sessions": [session, later]}
    run_dir.mkdir()
    (run_dir / "sweep.json").write_text(json.dumps(record, default=str))
    monkeypatch.setattr(full_scale_pool, "kaggle_rows", lambda *a, **k: pytest.fail("generated data"))
    assert full_scale.main(piece_args(run_dir)) == 2
    err = capsys.readouterr().err
    new = {"--rows": ROWS, "--scale": SCALE, "--data-seed": 1}[flag]
    assert err.startswith(f"full_scale.py: error: {flag}: the runs in --run-dir {run_dir} were trained on data ")
    assert f"with {flag} {old}, this piece gives {flag} {new}; give {flag} {old}" in err and err.count("\n") == 1


def test_data_flags_of_an_older_run_dir_come_from_its_results(tmp_path, capsys, monkeypatch):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "bad.json").write_text("{")
    (tmp_path / "results" / "sgd_base_d4_lr0.2_s1.json").write_text(
        json.dumps({"full_scale": {"rows": ROWS, "data_seed": 1, "checksum": "ids 1"}})
    )
    assert full_scale.earlier_data(tmp_path) == {"rows": ROWS, "data_seed": 1}
    monkeypatch.setattr(full_scale_pool, "kaggle_rows", lambda *a, **k: pytest.fail("generated data"))
    assert full_scale.main(piece_args(tmp_path, "--data-seed", "5")) == 2
    assert "--data-seed: the runs in --run-dir" in capsys.readouterr().err
    assert full_scale.earlier_data(tmp_path / "new") == {}


INTERRUPTED_PIECE = """
import os, signal, sys, time
from mlet.repro import full_scale, full_scale_run
train_one = full_scale_run.train_one
started = []
def interrupted(spec, piece):  # Ctrl-C in the second run
    started.append(spec.name)
    if len(started) == 2:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(10)
    return train_one(spec, piece)
full_scale_run.train_one = interrupted
sys.exit(full_scale.main(sys.argv[1:]))
"""


def test_ctrl_c_in_a_piece_prints_one_line_and_records_the_piece(tmp_path):
    run_dir = tmp_path / "run"
    argv = ["--run-dir", str(run_dir), "--rows", "5000", "--scale", str(SCALE), "--device", "cpu", "--budget-s",
            "300", *GRID, *TRAIN]  # fmt: skip
    done = run_snippet(INTERRUPTED_PIECE, argv, timeout=300)
    message = "full_scale.py: interrupted; finished runs are kept, the same command continues with the rest\n"
    assert done.returncode == 130 and done.stderr.endswith(message) and "Traceback" not in done.stderr, done.stderr
    assert [p.name for p in (run_dir / "results").glob("*.json")] == ["sgd_base_d4_lr0.2_s1.json"]
    record = json.loads((run_dir / "sweep.json").read_text())
    statuses = {name: run["status"] for name, run in record["runs"].items()}
    assert statuses == {"sgd_base_d4_lr0.2_s1": "finished", "sgd_mlet_d4_k64_lr0.2_s1": "interrupted"}
    session = record["sessions"][-1]
    assert (session["finished"], session["failed"], session["left"], session["interrupted"]) == (1, 0, 11, True)
    assert (session["rows"], session["scale"], session["data_seed"]) == (5000, SCALE, 1)
    log = (run_dir / "logs" / "sgd_mlet_d4_k64_lr0.2_s1.log").read_text()
    assert log.endswith("full_scale.py: interrupted\n")


class TwoWorkersInterrupted:
    """A stand-in :class:`full_scale_pool.Workers` of two workers: Ctrl-C comes while both train, the first
    having written its results just before it."""

    data = full_scale_pool.DataInfo("cpu x2 workers (cpu, cpu)", 0.0, ROWS, 1, SCALE, "ids 1", "")

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.busy, self.closed = run_dir, [], 0

    def idle(self) -> bool:
        return len(self.busy) < 2

    def start(self, spec: RunSpec) -> None:
        self.busy.append(spec)

    def wait(self):
        write_fake_result(self.run_dir, self.busy[0], 0.2)
        raise KeyboardInterrupt

    def close(self) -> None:
        self.closed += 1


class InterruptedAgainWhileClosing(TwoWorkersInterrupted):
    """:class:`TwoWorkersInterrupted` where a second Ctrl-C comes while the workers stop."""

    def close(self) -> None:
        super().close()
        os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("workers", [TwoWorkersInterrupted, InterruptedAgainWhileClosing], ids=["once", "twice"])
def test_ctrl_c_on_workers_records_the_runs_in_flight(tmp_path, workers):
    # as scripts/sweep.py: each run in flight at Ctrl-C is listed, interrupted, or finished if its results are in;
    # also when a second Ctrl-C comes while the workers stop (it skipped the bookkeeping)
    run_dir = tmp_path / "run"
    _, settings = full_scale.parse(piece_args(run_dir, "--dry-run"))
    runner = workers(run_dir)
    with pytest.raises(KeyboardInterrupt):
        full_scale.run_piece(settings, runner, budget_s=300, started=time.perf_counter())
    first, second = (spec.name for spec in runner.busy)
    record = json.loads((run_dir / "sweep.json").read_text())
    assert {name: run["status"] for name, run in record["runs"].items()} == {
        first: "finished",
        second: "interrupted",
    }
    assert runner.closed == 1  # the workers stopped before their runs were judged
    session = record["sessions"][-1]
    assert (session["finished"], session["failed"], session["left"], session["interrupted"]) == (1, 0, 11, True)


def test_a_piece_on_other_rows_is_refused_unless_accepted(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({"settings": {}, "sessions": [{"data_checksum": "ids 1"}]}))
    full_scale.check_data(tmp_path, "ids 1", accept=False)  # the same rows: fine
    with pytest.raises(UserError, match="checksum 'ids 1', this piece generated 'ids 2'"):
        full_scale.check_data(tmp_path, "ids 2", accept=False)
    full_scale.check_data(tmp_path, "ids 2", accept=True)
    full_scale.check_data(tmp_path / "fresh", "ids 2", accept=False)  # no earlier pieces


def write_fake_result(run_dir, spec: RunSpec, peak: float) -> None:
    """A finished run's results JSON (AUC peaking at rate ``peak``)."""
    path = sweep_plan.result_path(spec, run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fake_payload(spec, peak)))


def test_a_config_widens_only_once_its_first_seed_tried_every_initial_rate(tmp_path):
    # runs end out of order on several workers: 0.8 (the upper edge) done before 0.2 must not widen to 3.2 yet
    run_dir = tmp_path / "run"
    _, settings = full_scale.parse(piece_args(run_dir))
    assert settings is not None
    write_fake_result(run_dir, RunSpec("sgd", Config(4), 0.8, 1), peak=3.2)
    assert "sgd_base_d4_lr3.2_s1" not in [s.name for s in full_scale.wanted(settings)]
    write_fake_result(run_dir, RunSpec("sgd", Config(4), 0.2, 1), peak=3.2)
    names = [s.name for s in full_scale.wanted(settings)]
    assert "sgd_base_d4_lr3.2_s1" in names and "sgd_base_d4_lr0.8_s1" not in names
    assert "sgd_base_d8_lr3.2_s1" not in names  # its seed 1 has tried nothing yet


SMALL_GRID = ["--baseline-dims", "4", "--mlet-dims", "4", "--seeds", "1", *GRID[GRID.index("--optimizers") :]]
"""Two configs (d=4, MLET d=4) at :data:`GRID`'s two rates, one seed."""


@pytest.mark.slow
def test_workers_on_several_devices_train_what_one_process_trains(tmp_path, capsys):
    runs = {}
    for name, devices in (("one", "cpu"), ("two", "cpu,cpu")):
        run_dir = tmp_path / name
        argv = ["--run-dir", str(run_dir), "--rows", str(ROWS), "--scale", str(SCALE), "--device", devices,
                *SMALL_GRID, *TRAIN]  # fmt: skip
        assert full_scale.main(argv) == 0
        runs[name] = {r.spec.name: r for r in load_run_dir(run_dir)}
    out = capsys.readouterr().out
    assert "on cpu x2 workers (cpu, cpu): synthetic click model" in out
    assert runs["one"].keys() == runs["two"].keys() and len(runs["one"]) >= 4  # 2 configs x 2 rates, widened
    for name, run in runs["one"].items():
        assert runs["two"][name].test_auc == pytest.approx(run.test_auc, abs=1e-6), name
        assert runs["two"][name].val_auc == pytest.approx(run.val_auc, abs=1e-6), name
    session = json.loads((tmp_path / "two" / "sweep.json").read_text())["sessions"][-1]
    assert session["device"] == "cpu x2 workers (cpu, cpu)" and session["finished"] == len(runs["two"])
    ranks = sorted(p.name for p in (tmp_path / "two" / "rank" / "sgd").glob("*.json"))
    assert ranks == sorted(p.name for p in (tmp_path / "one" / "rank" / "sgd").glob("*.json")) and ranks


def test_a_second_piece_at_once_on_a_run_dir_is_refused(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setattr(full_scale_pool, "kaggle_rows", lambda *a, **k: pytest.fail("generated data"))
    with full_scale.only_piece(run_dir):  # a piece training there
        assert full_scale.main(piece_args(run_dir)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"full_scale.py: error: --run-dir {run_dir}: another piece is training in it; wait for")
    assert err.count("\n") == 1 and not (run_dir / "sweep.json").exists()
    with full_scale.only_piece(run_dir):  # held by the piece alone, released when it ends
        pass


def test_a_dry_run_lists_the_runs_for_devices_this_machine_lacks(tmp_path, capsys):
    # planning a GPU grid on a laptop: the list needs no device (its runs' flags still say --use-gpu)
    argv = ["--run-dir", str(tmp_path / "run"), "--device", "cuda:0,cuda:63", "--dry-run", *GRID, *TRAIN]
    assert full_scale.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("full_scale.py: 12 runs to do") and "\nsgd_base_d4_lr0.2_s1\n" in out
    assert not (tmp_path / "run").exists()


def test_the_summary_names_the_pieces_of_each_device():
    one, six = "NVIDIA H200", "NVIDIA H200 x6 workers (cuda:0, cuda:1, cuda:0, cuda:1, cuda:0, cuda:1)"
    sessions = [{"device": one}, {"device": six}, {"started": "killed before its data"}, {"device": six}]
    assert summary.how_runs_ran({"settings": {}, "sessions": sessions}) == f"1 piece on {one}, 2 pieces on {six}"


SIGNALLED_PIECE = """
import json, os, signal, sys
from mlet.repro import full_scale, full_scale_pool
check_ready = full_scale_pool.Workers.check_ready
def ctrl_c_at_start(self):  # Ctrl-C while the workers start (a terminal's reaches every process of the group)
    with open(sys.argv[1], "w") as out:
        json.dump([process.pid for process in self.processes], out)
    for process in self.processes:
        os.kill(process.pid, signal.SIGINT)
    return check_ready(self)
full_scale_pool.Workers.check_ready = ctrl_c_at_start
sys.exit(full_scale.main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_signals_end_a_piece_on_workers_cleanly(tmp_path):
    # a Ctrl-C while the workers start is the parent's alone (no traceback of theirs); a worker killed mid-run
    # fails its run; SIGTERM to the piece (a batch system, timeout) ends it as Ctrl-C does: one line, the piece
    # recorded, no worker left behind
    run_dir, pids = tmp_path / "run", tmp_path / "pids.json"
    argv = ["--run-dir", str(run_dir), "--rows", "5000", "--scale", str(SCALE), "--device", "cpu,cpu",
            "--budget-s", "600", *SMALL_GRID, *TRAIN, "--nepochs=10000"]  # fmt: skip
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        command = [sys.executable, "-c", SIGNALLED_PIECE, str(pids), *argv]
        piece = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=ROOT, env=SNIPPET_ENV)
    workers: list[int] = []
    try:
        wait_for(lambda: len(list((run_dir / "logs").glob("*.log"))) == 2 or piece.poll() is not None, "two runs")
        workers = json.loads(pids.read_text())
        assert piece.poll() is None, err.read_text()
        os.kill(workers[0], signal.SIGKILL)
        # its run's line comes once the run is recorded (the worker's "stopped" line comes before that)
        recorded = "sgd_base_d4_lr0.2_s1: failed (exit code -9)"
        wait_for(lambda: recorded in out.read_text() or piece.poll() is not None, "the dead worker's run recorded")
        children = [int(pid) for pid in Path(f"/proc/{piece.pid}/task/{piece.pid}/children").read_text().split()]
        piece.send_signal(signal.SIGTERM)
        assert piece.wait(timeout=60) == 143, err.read_text()
        # the worker and multiprocessing's resource tracker (which would warn of what a worker left) end too
        wait_for(lambda: not any(running(pid) for pid in children), "the piece's processes to end", timeout=30)
    finally:
        for pid in [piece.pid, *workers]:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
    assert (
        err.read_text()
        == "full_scale.py: terminated (SIGTERM); finished runs are kept, the same command continues with the rest\n"
    )
    assert "the worker on cpu stopped: its process ended with exit code -9" in out.read_text()
    record = json.loads((run_dir / "sweep.json").read_text())
    statuses = {name: run["status"] for name, run in record["runs"].items()}
    # the other worker's run, in flight at SIGTERM, is listed as interrupted
    assert statuses == {"sgd_base_d4_lr0.2_s1": "failed (exit code -9)", "sgd_mlet_d4_k64_lr0.2_s1": "interrupted"}
    session = record["sessions"][-1]
    assert (session["finished"], session["failed"], session["interrupted"]) == (0, 1, True)
    assert (run_dir / "logs" / "sgd_mlet_d4_k64_lr0.2_s1.log").read_text().endswith("full_scale.py: interrupted\n")


def test_a_run_dir_of_another_device_is_refused_in_the_devices_terms(tmp_path, capsys):
    # --device cuda adds --use-gpu to every run's flags: the refusal names --device, not the flag lists
    run_dir = tmp_path / "run"
    _, settings = full_scale.parse(["--run-dir", str(run_dir), "--device", "cpu", "--dry-run", *GRID, *TRAIN])
    assert settings is not None
    sweep_runs.Manifest(settings)  # as a piece on the CPU leaves it
    assert full_scale.main(["--run-dir", str(run_dir), "--device", "cuda:0", "--dry-run", *GRID, *TRAIN]) == 2
    assert capsys.readouterr().err == (
        f"full_scale.py: error: --run-dir {run_dir}: its runs were trained otherwise: --device cuda:0 where it had "
        "--device cpu; finished runs would be taken for this sweep's: give another --run-dir (or the same flags)\n"
    )
