"""scripts/quickstart.sh, reproduce.sh and criteo_terabyte.sh through bash: paths from the caller's directory,
default run directories in the repository, usage lines.

``PY`` is ``helpers.RECORDER``, which records the commands instead of running them: well under a second.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import ROOT, run_script


def test_quickstart_takes_a_relative_run_dir_from_the_callers_directory(tmp_path) -> None:
    caller = tmp_path.resolve()
    done, calls = run_script("quickstart.sh", caller, "runs/qs", "30000")
    assert done.returncode == 0, done.stderr
    run_dir = caller / "runs" / "qs"
    assert run_dir.is_dir() and not (ROOT / "runs" / "qs").exists()
    generate, *trainings, summary = calls
    assert generate[:2] == ["data_utils.py", "generate"] and generate[-2:] == ["--out", f"{run_dir / 'train.txt'}"]
    assert [call[0] for call in trainings] == ["dlrm_mlet.py"] * 3
    assert all(f"--raw-data-file={run_dir / 'train.txt'}" in call for call in trainings)
    assert f"--results-json={run_dir / 'mlet_d4_k64.json'}" in trainings[2]
    assert summary == [
        "scripts/summarize.py",
        *(f"{run_dir / n}.json" for n in ("baseline_d4", "baseline_d32", "mlet_d4_k64")),
    ]
    assert (run_dir / "summary.md").exists() and (run_dir / "mlet_d4_k64.log").exists()


def test_quickstart_passes_the_flags_after_dashes_to_its_three_runs(tmp_path) -> None:
    # a GPU machine's user: bash scripts/quickstart.sh DIR ROWS -- --use-gpu, as reproduce.sh takes them
    done, calls = run_script("quickstart.sh", tmp_path.resolve(), "qs", "30000", "--", "--use-gpu", "--bf16")
    assert done.returncode == 0, done.stderr
    generate, *trainings, _ = calls
    assert "30000" in generate and all("--use-gpu" not in call for call in (generate, _))
    assert len(trainings) == 3 and all(call[-3:-1] == ["--use-gpu", "--bf16"] for call in trainings)
    repo, caller = _repository_copy(tmp_path, "quickstart.sh")  # the default RUN_DIR and ROWS, in a copy's runs/
    done, calls = run_script("quickstart.sh", caller, "--", "--use-gpu", root=repo)
    assert done.returncode == 0, done.stderr
    assert calls[0][-1] == "runs/quickstart/train.txt" and "2333334" in calls[0] and "--use-gpu" in calls[1]


def test_quickstart_refuses_a_flag_before_the_dashes(tmp_path) -> None:
    done, calls = run_script("quickstart.sh", tmp_path, "--use-gpu")
    assert done.returncode == 2 and calls == []
    assert done.stderr == (
        "quickstart.sh: error: --use-gpu: dlrm_mlet.py's flags go after -- "
        "(usage: [LR=1.0] bash scripts/quickstart.sh [RUN_DIR] [ROWS] [-- dlrm_mlet.py flags ...])\n"
    )


def test_reproduce_without_a_data_set_prints_its_usage_line(tmp_path) -> None:
    done, calls = run_script("reproduce.sh", tmp_path)
    assert done.returncode == 2 and calls == []
    assert done.stderr == (
        "usage: bash scripts/reproduce.sh kaggle|avazu [RAW_FILE] [sweep.py flags ...] [-- dlrm_mlet.py flags ...]\n"
    )


def _repository_copy(tmp_path: Path, script: str) -> tuple[Path, Path]:
    """A repository holding only ``scripts/SCRIPT`` (and ``scripts/lib``, which it sources), and a caller's
    directory beside it: where a default run directory lands can be seen without writing into this repository's
    runs/."""
    repo, caller = tmp_path / "repo", tmp_path / "caller"
    shutil.copytree(ROOT / "scripts" / "lib", repo / "scripts" / "lib")
    shutil.copy(ROOT / "scripts" / script, repo / "scripts" / script)
    caller.mkdir()
    return repo.resolve(), caller.resolve()


def test_criteo_terabyte_puts_its_default_run_dir_in_the_repository(tmp_path) -> None:
    repo, caller = _repository_copy(tmp_path, "criteo_terabyte.sh")
    done, calls = run_script("criteo_terabyte.sh", caller, root=repo)
    assert done.returncode == 0, done.stderr
    assert (repo / "runs" / "criteo_terabyte" / "train.log").exists() and not (caller / "runs").exists()
    generate, train = calls
    assert generate[-1] == "runs/criteo_terabyte/synthetic_4days_250000rows_scale0.0005/day.gz"
    assert "--processed-data-file=runs/criteo_terabyte/processed" in train


def test_criteo_terabyte_takes_a_relative_run_dir_from_the_callers_directory(tmp_path) -> None:
    repo, caller = _repository_copy(tmp_path, "criteo_terabyte.sh")
    done, calls = run_script("criteo_terabyte.sh", caller, "input/day", root=repo, env={"RUN_DIR": "runs/tb"})
    assert done.returncode == 0, done.stderr
    run_dir = caller / "runs" / "tb"
    assert (run_dir / "train.log").exists() and not (repo / "runs").exists()
    [train] = calls
    assert f"--raw-data-file={caller / 'input' / 'day'}" in train
    assert f"--processed-data-file={run_dir / 'processed'}" in train


SCRIPT_ARGS = {"quickstart.sh": ["qs", "300"], "reproduce.sh": ["kaggle", "train.txt"], "criteo_terabyte.sh": []}


@pytest.mark.parametrize("script", sorted(SCRIPT_ARGS))
def test_a_python_given_by_name_runs_the_commands_and_nothing_is_set_up(script, tmp_path) -> None:
    # PY=python3 on a GPU machine with its own torch: the scripts took a PY that is not a path for a missing .venv
    # and ran setup.sh (pip, offline: failed) before using PY anyway. The copy has no setup.sh: running it fails.
    repo, caller = _repository_copy(tmp_path, script)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "site-python").write_text(f'#!/bin/sh\nexec "{caller / "record_python"}" "$@"\n')
    (bin_dir / "site-python").chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    (caller / "train.txt").touch()  # reproduce.sh's RAW_FILE
    done, calls = run_script(script, caller, *SCRIPT_ARGS[script], root=repo, env={"PY": "site-python", "PATH": path})
    assert done.returncode == 0, done.stderr
    assert calls and not (repo / ".venv").exists()


@pytest.mark.parametrize("script", sorted(SCRIPT_ARGS))
def test_a_python_that_is_not_a_command_is_one_line(script, tmp_path) -> None:
    repo, caller = _repository_copy(tmp_path, script)
    (caller / "train.txt").touch()
    done, calls = run_script(script, caller, *SCRIPT_ARGS[script], root=repo, env={"PY": "no-such-python3"})
    assert done.returncode == 2 and calls == []
    assert done.stderr == f"{script}: error: PY=no-such-python3: no such command\n"
