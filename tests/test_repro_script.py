"""scripts/reproduce.sh through bash: paths from the caller's directory, the real-data grid, no RUN_DIR before
RAW_FILE is checked.

A stand-in for ``PY`` records each command the script would run (one file per
call, one argument a line) instead of running it, so these tests take well
under a second.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import RECORDER, ROOT, run_script

from mlet.repro import sweep


def reproduce(
    caller_dir: Path, *argv: str, run_dir: str, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """``RUN_DIR=run_dir bash scripts/reproduce.sh ARGV...`` started in ``caller_dir``, with ``PY`` recording;
    the result and the recorded calls."""
    return run_script("reproduce.sh", caller_dir, *argv, env={"RUN_DIR": run_dir, **(extra_env or {})})


def test_relative_raw_file_and_run_dir_are_the_callers_and_the_real_grid_keeps_d4_checkpoints(tmp_path) -> None:
    caller = tmp_path.resolve()
    (caller / "data").mkdir()
    (caller / "data" / "train.txt").write_text("stand-in: the recorder never reads it\n")
    done, calls = reproduce(caller, "kaggle", "data/train.txt", "--dry-run", run_dir="my_run")
    assert done.returncode == 0, done.stderr
    assert "dry run" in done.stdout
    (call,) = calls  # the sweep only: after a dry run nothing is summarized or analysed
    assert call[0] == "scripts/sweep.py"
    assert (
        f"--raw-data-file={caller / 'data' / 'train.txt'}" in call
        and f"--processed-data-file={caller / 'my_run' / 'processed'}" in call
    )
    assert not (caller / "my_run").exists() and not (ROOT / "my_run").exists()  # a dry run writes nothing
    args = sweep.build_parser().parse_args(call[1:])  # what the real sweep makes of it
    assert args.run_dir == caller / "my_run" and args.checkpoint_dims == [4] and args.dry_run


def test_a_missing_raw_file_is_named_before_run_dir_is_created(tmp_path) -> None:
    caller = tmp_path.resolve()
    done, calls = reproduce(caller, "avazu", "data/missing.txt", run_dir="my_run")
    assert done.returncode == 2 and calls == []
    assert done.stderr == f"reproduce.sh: error: {caller / 'data' / 'missing.txt'}: no such file\n"
    assert not (caller / "my_run").exists() and not (ROOT / "my_run").exists()


def test_the_embedded_default_names_its_data_by_rows_and_scale(tmp_path) -> None:
    """Another ROWS/SCALE gives another raw file, so the sweep's training flags differ and sweep.py refuses to
    mix the runs."""
    caller = tmp_path.resolve()
    raw = caller / "my_run" / "synthetic_kaggle_3000rows_scale0.0005.txt"
    raw.parent.mkdir()
    raw.write_text("generated before: the script does not make it again\n")
    done, calls = reproduce(
        caller, "kaggle", "--dry-run", run_dir="my_run", extra_env={"ROWS": "3000", "SCALE": "0.0005"}
    )
    assert done.returncode == 0, done.stderr
    (sweep_call,) = calls
    assert f"--raw-data-file={raw}" in sweep_call
    done, calls = reproduce(
        caller / "my_run",
        "kaggle",
        run_dir=str(caller / "my_run"),
        extra_env={"ROWS": "4000", "SCALE": "0.0005"},
    )
    generate = calls[0]  # other rows: another file is generated (the recorder writes none, so the script stops there)
    assert (
        generate[:2] == ["data_utils.py", "generate"]
        and f"{raw.with_name('synthetic_kaggle_4000rows_scale0.0005.txt')}.tmp" in generate
    )


def test_a_dry_run_of_the_embedded_default_generates_nothing(tmp_path) -> None:
    caller = tmp_path.resolve()
    done, calls = reproduce(caller, "kaggle", "--dry-run", run_dir="my_run", extra_env={"ROWS": "3000"})
    assert done.returncode == 0, done.stderr
    (sweep_call,) = calls  # no data_utils.py generate
    raw = caller / "my_run" / "synthetic_kaggle_3000rows_scale0.001.txt"
    assert sweep_call[0] == "scripts/sweep.py" and f"--raw-data-file={raw}" in sweep_call
    assert f"the data would be generated first ({raw}, 3000 rows at scale 0.001)" in done.stdout
    assert not (caller / "my_run").exists() and not (ROOT / "my_run").exists()


def test_failed_runs_still_get_the_summary_and_the_script_ends_saying_so(tmp_path) -> None:
    # A run killed by the system (out of memory: exit code -9) made sweep.py exit 1, and set -e ended the script
    # there, silently: no summary, no rank analysis, nothing said after the sweep's "18 runs finished, 1 failed".
    caller = tmp_path.resolve()
    (caller / "train.txt").write_text("stand-in: the recorder never reads it\n")
    failing = caller / "failing_python"  # records every call as the recorder does; the sweep reports failed runs
    failing.write_text(RECORDER + '[ "$1" = scripts/sweep.py ] && exit 1\nexit 0\n')
    failing.chmod(0o755)
    done, calls = reproduce(caller, "kaggle", "train.txt", run_dir="my_run", extra_env={"PY": str(failing)})
    assert [call[0] for call in calls] == ["scripts/sweep.py", "scripts/summarize.py"]
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"reproduce.sh: some runs failed (named above; logs in {caller / 'my_run'}/logs); the summary leaves them "
        "out: the same command retries them"
    )
    for code in (2, 130, 143):  # bad flags, Ctrl-C, SIGTERM: the script ends with the sweep, as before
        stopping = caller / f"python_{code}"
        stopping.write_text(RECORDER + f'[ "$1" = scripts/sweep.py ] && exit {code}\nexit 0\n')
        stopping.chmod(0o755)
        (caller / "calls").rename(caller / f"calls_{code}_before")
        done, calls = reproduce(caller, "kaggle", "train.txt", run_dir="my_run", extra_env={"PY": str(stopping)})
        assert done.returncode == code and [call[0] for call in calls] == ["scripts/sweep.py"]


def test_damaged_results_still_get_the_rank_analysis_and_the_script_ends_saying_so(tmp_path) -> None:
    # summarize.py ends with status 1 when it left out damaged results JSONs; set -e ended the script there, with
    # no rank analysis and no word after summarize's warnings
    caller = tmp_path.resolve()
    (caller / "train.txt").write_text("stand-in: the recorder never reads it\n")
    (caller / "my_run" / "checkpoints").mkdir(parents=True)
    (caller / "my_run" / "checkpoints" / "sgd_base_d4_lr0.2_s1.pt").write_text("stand-in\n")
    damaged = caller / "damaged_python"  # records every call; summarize.py reports damaged results JSONs
    damaged.write_text(RECORDER + '[ "$1" = scripts/summarize.py ] && exit 1\nexit 0\n')
    damaged.chmod(0o755)
    done, calls = reproduce(caller, "kaggle", "train.txt", run_dir="my_run", extra_env={"PY": str(damaged)})
    assert [call[0] for call in calls] == ["scripts/sweep.py", "scripts/summarize.py", "scripts/analyze_rank.py"]
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "reproduce.sh: damaged results JSONs (named above) are left out of the summary: the same command runs "
        "them again"
    )
