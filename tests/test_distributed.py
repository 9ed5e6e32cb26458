"""Several processes (gloo on the CPU) train exactly like one.

The multi-process runs start one process per rank (forked from a server that
has torch loaded, so they cost no interpreter start) and call
``dlrm_mlet.main`` with torchrun's environment (``RANK``, ``WORLD_SIZE``, ...);
one test launches the real ``torchrun``.
The comparisons themselves live in ``bench/distributed_equivalence.py``, which
runs them on GPUs too.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from helpers import ROOT, InterruptedFile, random_inputs, torchrun_command
from ranks import RUN_TIMEOUT_S, Fault, in_process, run_ranks

import checkpoint
import dlrm_mlet
from mlet.cli import configs
from mlet.core.errors import UserError
from mlet.core.files import sole_writer
from mlet.data.preprocessing import cache
from mlet.data.preprocessing.raw_generate import RawGenerator
from mlet.parallel import process_group
from mlet.parallel.equivalence import (
    RESUME_SCENARIO,
    TOLERANCE,
    Outcome,
    compare_resume,
    compare_scenario,
    scenario_flags,
    step_losses,
)


@pytest.fixture
def runner(tmp_path):
    """``run(nproc, argv)``: in this process for 1, forked ranks for more (rank 0's output, worst exit code)."""

    def run(nproc: int, argv: list[str]) -> Outcome:
        if nproc == 1:
            return in_process(argv)
        ranks = run_ranks(nproc, argv, tmp_path)
        failed = [o for o in ranks if o.code != 0]
        return Outcome(
            max(o.code for o in ranks), ranks[0].stdout, "\n".join(o.stderr for o in failed) or ranks[0].stderr
        )

    return run


# -- equivalence -----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "scenario",
    [
        "mlet-sgd-4-tables",
        "baseline-sgd-1-table",
        "mlet-adagrad-3-tables",
        "mlet-rwsadagrad-2-tables",
        "baseline-adam-4-tables",
        "mlet-sgd-4-tables-on-device",
    ],
)
def test_two_processes_train_like_one(scenario: str, runner, tmp_path) -> None:
    """30 steps, uneven last batches: per-step losses, final parameters and optimizer state to 1e-5; same AUC."""
    diff = compare_scenario(scenario, runner, tmp_path, nproc=2)
    assert diff["steps"] == 30
    assert diff["loss"] <= TOLERANCE and diff["params"] <= TOLERANCE and diff["optimizer_state"] <= TOLERANCE, diff
    assert diff["test_samples"] == [101, 101]
    assert diff["auc"] <= 1e-6 and diff["logloss"] <= 1e-6, diff


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [RESUME_SCENARIO, "mlet-rwsadagrad-2-tables"])
def test_checkpoints_resume_across_world_sizes(scenario: str, runner, tmp_path) -> None:
    """Adagrad, 3 tables (per-element state), and row-wise Adagrad, 2 tables (a value per row; 3 processes
    leave one without tables): a 1-process checkpoint continued by 2 processes, a 2-process one by 1 and by 3."""
    rows = compare_resume(runner, tmp_path, nproc=2, resume_nproc=3, name=scenario)
    assert len(rows) == 3
    for row in rows:
        assert row["params"] <= TOLERANCE and row["optimizer_state"] <= TOLERANCE, row


def test_distributed_checkpoint_is_complete_and_collapses(runner, tmp_path) -> None:
    """Every table and every row of optimizer state is in the file; it rebuilds and collapses in one process."""
    from mlet.training.checkpoints import load_checkpoint, model_from_checkpoint

    path = tmp_path / "two.pt"
    runner(2, scenario_flags("mlet-adagrad-3-tables", ["--nepochs=1", f"--save-model={path}"]))
    ckpt = load_checkpoint(path)
    assert ckpt["model"]["tables.weight"].shape == (50 + 7 + 300, 16)
    assert ckpt["model"]["tables.projection"].shape == (3, 16, 4)
    assert ckpt["optimizer"]["state"]["tables.weight"]["sum"].shape == (357, 16)
    assert ckpt["distributed"]["plan"]["tables_of_rank"] == [[2], [0, 1]]
    info = io.StringIO()
    with redirect_stdout(info):
        assert checkpoint.main(["info", str(path)]) == 0
    assert "\nprocesses   trained by 2 (gloo): rank 0: tables 2; rank 1: tables 0,1; stored whole" in info.getvalue()
    model = model_from_checkpoint(ckpt)
    dense, features = random_inputs(model.config, batch=8, seed=0, bag=2)
    torch.testing.assert_close(model.collapse()(dense, features), model(dense, features), rtol=1e-5, atol=1e-6)
    evaluate = scenario_flags("mlet-adagrad-3-tables", ["--inference-only", f"--load-model={path}"])
    one, two = in_process(evaluate), runner(2, evaluate)
    assert one.code == two.code == 0
    (loss1, auc1), (loss2, auc2) = (
        map(float, re.search(r"loss ([0-9.]+), auc ([0-9.]+)", out).groups()) for out in (one.stdout, two.stdout)
    )
    assert abs(loss1 - loss2) <= 1e-6 and abs(auc1 - auc2) <= 1e-6
    served = [re.search(r"served model: .* bytes with the MLPs", out) for out in (one.stdout, two.stdout)]
    assert served[0] and served[1] and served[0].group(0) == served[1].group(0)  # the whole model's, not a share


# -- what rank 0 alone prints and writes; errors ---------------------------------
def test_rank_zero_alone_prints_and_states_the_plan(tmp_path) -> None:
    results = tmp_path / "r.json"
    ranks = run_ranks(2, scenario_flags("mlet-sgd-4-tables", ["--nepochs=1", f"--results-json={results}"]), tmp_path)
    assert [o.code for o in ranks] == [0, 0]
    assert ranks[1].stdout == "" and ranks[1].stderr == ""
    out = ranks[0].stdout
    assert out.count("sharding plan: 4 tables on 2 processes") == 1
    assert "rank 0: tables 2,3 (2 tables, 302 rows" in out and "rank 1: tables 0,1 (2 tables, 57 rows" in out
    assert (
        "64 B/sample forward" in out
        and "32 B/sample of it between processes" in out
        and "K-wide vectors would be 256 B/sample" in out
    )
    payload = json.loads(results.read_text())
    assert payload["distributed"]["world_size"] == 2 and payload["final"]["samples"] == 101
    config = payload["model_config"]  # the whole model's collapsed tables, not rank 0's share
    assert payload["parameters"]["embedding_inference_bytes"] == sum(config["table_sizes"]) * config["dim"] * 4


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--mlet-hidden=-1", "--optimizer=rmsprop"])
def test_bad_flag_is_reported_once(flag: str, tmp_path) -> None:
    ranks = run_ranks(2, scenario_flags("mlet-sgd-4-tables", [flag]), tmp_path)
    assert [o.code for o in ranks] == [2, 2]
    assert len(ranks[0].stderr.strip().splitlines()) == 1 and flag.split("=")[0] in ranks[0].stderr
    assert ranks[1].stderr == ""


def missing_checkpoint_on_rank_one(rank: int) -> None:
    """Fault: the checkpoint file is absent on rank 1 only (a host without the shared disk)."""

    def absent(path: str) -> None:
        raise UserError(f"{path}: no such checkpoint file")

    if rank == 1:
        configs.check_file = absent


def unreadable_checkpoint_on_rank_one(rank: int) -> None:
    """Fault: the checkpoint cannot be read on rank 1 only (found when loading, after the flag checks)."""

    def unreadable(path: str) -> dict:
        raise UserError(f"{path}: not a readable checkpoint (EOFError)")

    if rank == 1:
        dlrm_mlet.load_checkpoint = unreadable


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (missing_checkpoint_on_rank_one, "--load-model {path}: no such checkpoint file"),
        (unreadable_checkpoint_on_rank_one, "--load-model {path}: not a readable checkpoint (EOFError)"),
    ],
)
@pytest.mark.slow
def test_error_on_one_rank_stops_all_with_its_message(fault: Fault, message: str, tmp_path) -> None:
    path = tmp_path / "ckpt.pt"
    in_process(scenario_flags("mlet-sgd-4-tables", ["--nepochs=1", f"--save-model={path}"]))
    ranks = run_ranks(2, scenario_flags("mlet-sgd-4-tables", [f"--load-model={path}"]), tmp_path, fault=fault)
    assert [o.code for o in ranks] == [2, 2]
    assert ranks[0].stderr.strip() == f"dlrm_mlet.py: error: rank 1: {message.format(path=path)}"
    assert ranks[1].stderr == "" and "Finished training" not in ranks[0].stdout


def other_flags_on_rank_one(rank: int) -> None:
    """Fault: rank 1 is started with another --learning-rate and another --results-json path (a host whose
    command line differs)."""
    if rank == 1:
        validate = dlrm_mlet.validate

        def changed(args):
            args.learning_rate, args.results_json = 0.5, args.results_json + ".elsewhere"
            return validate(args)

        dlrm_mlet.validate = changed


def test_processes_started_with_other_flags_are_refused_once(tmp_path) -> None:
    """Unrefused, they trained different models without a word (a learning rate, a table size) or died in a
    mismatched collective (a batch size); a path (here --results-json) may differ, its presence may not."""
    argv = scenario_flags("mlet-sgd-4-tables", [f"--results-json={tmp_path / 'r.json'}"])
    rate = re.findall(r"--learning-rate=(\S+)", " ".join(argv))[-1]  # the last one given counts
    ranks = run_ranks(2, argv, tmp_path, fault=other_flags_on_rank_one)
    assert [o.code for o in ranks] == [2, 2] and ranks[1].stderr == ""
    assert ranks[0].stderr.strip() == (
        f"dlrm_mlet.py: error: rank 1: started with other flags than rank 0: --learning-rate=0.5 (rank 0: {rate});"
        " give every process the same flags"
    )


def test_flags_that_may_differ_between_processes() -> None:
    first = configs.run_config(scenario_flags("mlet-sgd-4-tables", ["--save-model=a.pt"])).flags or {}
    alike = ["--save-model=/elsewhere/a.pt", "--local-rank=1", "--num-workers=3", "--progress=false"]
    assert configs.flag_differences(first, configs.run_config(scenario_flags("mlet-sgd-4-tables", alike)).flags) is None
    other = configs.run_config(scenario_flags("mlet-sgd-4-tables", ["--mini-batch-size=8"])).flags or {}
    assert configs.flag_differences(first, other) == (
        "started with other flags than rank 0: --mini-batch-size=8 (rank 0: 33), "
        "--save-model not given (rank 0: given); give every process the same flags"
    )


def failing_step_on_rank_one(rank: int) -> None:
    """Fault: rank 1 fails in its fifth training step."""
    if rank == 1:
        step = dlrm_mlet.Trainer.step

        def failing(self, batch):
            if self.iteration == 4:
                raise UserError("simulated failure in a training step")
            return step(self, batch)

        dlrm_mlet.Trainer.step = failing


def test_error_mid_run_stops_the_other_rank(tmp_path) -> None:
    ranks = run_ranks(
        2, scenario_flags("mlet-sgd-4-tables", ["--dist-timeout=20"]), tmp_path, fault=failing_step_on_rank_one
    )
    assert (
        ranks[1].code == 2
        and ranks[1].stderr.strip() == "dlrm_mlet.py: error: rank 1: simulated failure in a training step"
    )
    assert ranks[0].code == 1
    lines = ranks[0].stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlrm_mlet.py: error: rank 0: torch.distributed: rank 1 (pid "), (
        lines
    )
    assert "stopped with an error (see its message); the run cannot go on without it (" in lines[0]


def signal_at_second_save(signum: int, rank: int) -> None:
    """Fault: ``signum`` reaches every process at the second checkpoint, as torchrun passes a signal on to all;
    rank 0 gets it while torch writes the file, rank 1 once it has sent its share."""
    saves: list[int] = []
    if rank == 0:
        write = torch.save

        def interrupted_write(obj, handle, *args, **kwargs) -> None:
            saves.append(1)
            stop = InterruptedFile(handle, lambda: os.kill(os.getpid(), signum))
            write(obj, stop if len(saves) == 2 else handle, *args, **kwargs)

        torch.save = interrupted_write
    else:
        save = dlrm_mlet.Trainer.save

        def interrupted_save(self, *args, **kwargs) -> None:
            save(self, *args, **kwargs)
            saves.append(1)
            if len(saves) == 2:
                os.kill(os.getpid(), signum)

        dlrm_mlet.Trainer.save = interrupted_save


@pytest.mark.parametrize(
    ("signum", "line", "code"),
    [(signal.SIGINT, "dlrm_mlet.py: interrupted", 130), (signal.SIGTERM, "dlrm_mlet.py: terminated (SIGTERM)", 143)],
    ids=["ctrl-c", "sigterm"],
)
def test_a_signal_to_every_rank_during_a_save_ends_the_run_at_the_next_check_with_one_line_and_the_run_saved(
    signum: int, line: str, code: int, tmp_path
) -> None:
    """The save in progress ends (the signal waits: mlet/training/stops.py); at the next check the processes save
    the run and stop together, with rank 0's one line. (Before, each stopped where the signal found it, and the
    run kept --save-freq's checkpoint before.)"""
    from mlet.training.checkpoints import load_checkpoint
    from mlet.training.stops import FIRST_CHECK

    path = tmp_path / "ckpts" / "run.pt"
    argv = scenario_flags("mlet-sgd-4-tables", ["--save-freq=3", f"--save-model={path}"])
    ranks = run_ranks(2, argv, tmp_path, fault=functools.partial(signal_at_second_save, signum))
    assert [o.code for o in ranks] == [code, code]
    assert ranks[0].stderr.strip() == line and ranks[1].stderr == ""
    word, check = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM", FIRST_CHECK
    assert f"\n{word} at iteration {check} (epoch 1, batch 1 of 15): saving the run to {path}" in ranks[0].stdout
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.pt"]  # no temporary left
    assert load_checkpoint(path)["position"]["iteration"] == check


def mpirun_environment(monkeypatch, variables: dict[str, str]) -> None:
    """This process as one that mpirun started (``variables``), torchrun's and other launchers' variables gone."""
    launchers = [*process_group.MPI_LAUNCH, *process_group.MPI_LAUNCH.values(), *process_group.MPI_LOCAL_SIZE]
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", *launchers):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("mpi_rank", ["0", "1"])
def test_an_mpirun_launch_is_refused_once_before_any_work(mpi_rank: str, monkeypatch, tmp_path) -> None:
    """Upstream's other launcher: mpirun's processes have no torchrun environment, and would each train alone."""
    mpirun_environment(monkeypatch, {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": mpi_rank})
    out = in_process(scenario_flags("mlet-sgd-4-tables", [f"--save-model={tmp_path / 'a.pt'}"]))
    assert out.code == 2 and out.stdout == "" and not (tmp_path / "a.pt").exists()
    if mpi_rank == "0":
        assert out.stderr.startswith("dlrm_mlet.py: error: OMPI_COMM_WORLD_SIZE=2: started by mpirun")
        assert "torchrun --nproc_per_node=2 dlrm_mlet.py" in out.stderr and out.stderr.count("\n") == 1
    else:
        assert out.stderr == ""


@pytest.mark.parametrize(
    ("variables", "command"),
    [
        ({"OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, "--nnodes=2 --nproc_per_node=4"),
        ({"PMI_SIZE": "6", "MPI_LOCALNRANKS": "2"}, "--nnodes=3 --nproc_per_node=2"),
        ({"MV2_COMM_WORLD_SIZE": "4", "MV2_COMM_WORLD_LOCAL_SIZE": "4"}, "--nproc_per_node=4"),
        ({"OMPI_COMM_WORLD_SIZE": "4"}, "--nproc_per_node=4"),
    ],
    ids=["open-mpi-2-hosts", "mpich-3-hosts", "mvapich-1-host", "no-local-size"],
)
def test_the_refused_mpirun_launch_suggests_torchrun_per_host(variables, command, monkeypatch) -> None:
    """mpirun's processes on several hosts: torchrun starts the per-host count on each (it suggested the total)."""
    mpirun_environment(monkeypatch, variables)
    with pytest.raises(process_group.SharedError, match=f"torchrun {command} dlrm_mlet.py"):
        process_group.refuse_mpi_launch()


def test_a_second_run_writing_the_same_checkpoint_is_refused_once(tmp_path) -> None:
    path = tmp_path / "ckpts" / "run.pt"
    argv = scenario_flags("mlet-sgd-4-tables", ["--num-batches=2", f"--save-model={path}"])
    with sole_writer("--save-model", str(path)):  # the first run, still writing
        ranks = run_ranks(2, argv, tmp_path)
    assert [o.code for o in ranks] == [2, 2] and not path.exists()
    assert ranks[0].stderr.strip() == (
        f"dlrm_mlet.py: error: --save-model {path}: another run is writing it (pid {os.getpid()} on "
        f"{socket.gethostname()}); wait for it to end, or give another file"
    )
    assert ranks[1].stderr == ""
    assert in_process(argv).code == 0  # once the first has ended
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.pt"]  # no lock file left


def kaggle_flags(raw: Path, processed: Path) -> list[str]:
    """A tiny model trained on a raw Kaggle-format file, preprocessed into ``processed`` on first use."""
    return [
        "--data-generation=dataset",
        "--data-set=kaggle",
        f"--raw-data-file={raw}",
        f"--processed-data-file={processed}",
        "--arch-sparse-feature-size=4",
        "--arch-mlp-bot=13-8-4",
        "--arch-mlp-top=8-1",
        "--mini-batch-size=64",
        "--num-batches=3",
        "--progress=false",
    ]


def no_build_on_rank_one(rank: int) -> None:
    """Fault: rank 1 may not build the processed data (it is to reuse rank 0's)."""

    def refused(*args, **kwargs) -> dict:
        raise UserError("rank 1 built the processed data")

    if rank == 1:
        cache.build = refused


@pytest.mark.parametrize("before", ["none", "other settings"])
def test_data_set_is_preprocessed_by_one_rank_and_reused_by_the_others(before: str, tmp_path) -> None:
    """Rank 0 builds (or rebuilds) the processed data, the other reuses them: the ranks read one cache together,
    neither keeps the other out (each holds it shared for the run)."""
    raw, processed = tmp_path / "train.txt", tmp_path / "processed"
    RawGenerator("kaggle", 3000, seed=3, scale=0.001).write(raw)
    if before == "other settings":  # made by an earlier run, which has ended
        other = ["preprocess", "--data-set=kaggle", "--data-split=random-811", f"--raw-data-file={raw}"]
        made = subprocess.run(
            [sys.executable, "data_utils.py", *other, f"--processed-data-file={processed}", "--progress=false"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        assert made.returncode == 0, made.stderr
    ranks = run_ranks(2, kaggle_flags(raw, processed), tmp_path, fault=no_build_on_rank_one)
    assert [o.code for o in ranks] == [0, 0], ranks[0].stderr + ranks[1].stderr
    assert ranks[0].stdout.count(f"preprocessing {raw} into {processed}") == 1
    assert ranks[1].stdout == "" and ranks[1].stderr == ""
    assert (processed / "meta.json").exists()


@pytest.mark.slow
def test_bad_row_in_a_raw_file_is_reported_once_without_a_rank(tmp_path) -> None:
    raw = tmp_path / "train.txt"
    RawGenerator("kaggle", 3000, seed=3, scale=0.001).write(raw)
    lines = raw.read_text().splitlines()
    lines[99] = "0\tabc" + lines[99][lines[99].index("\t", 2) :]
    raw.write_text("\n".join(lines) + "\n")
    ranks = run_ranks(2, kaggle_flags(raw, tmp_path / "processed"), tmp_path)
    assert [o.code for o in ranks] == [2, 2]
    assert ranks[0].stderr.strip().splitlines() == [
        f"dlrm_mlet.py: error: {raw}:100: I1 is 'abc', expected an integer or empty "
        "(--skip-bad-rows skips and counts such rows)"
    ]
    assert ranks[1].stderr == "" and "preprocessing" not in ranks[1].stdout


@pytest.mark.slow
def test_torchrun_launch(tmp_path) -> None:
    """The README's command: torchrun, 2 gloo processes; the same losses as one process."""
    flags = scenario_flags("mlet-sgd-4-tables", ["--nepochs=1", "--dist-backend=gloo"])
    single = in_process(flags)
    done = subprocess.run(
        torchrun_command(flags),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("sharding plan:") == 1 and done.stdout.count("Testing at") == 1
    one, two = step_losses(single.stdout), step_losses(done.stdout)
    assert len(one) == len(two) == 15
    assert max(abs(a - b) for a, b in zip(one, two)) <= TOLERANCE
