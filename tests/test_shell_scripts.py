"""scripts/quickstart.sh and reproduce.sh through bash: paths from the caller's directory, usage lines.

``PY`` is ``helpers.RECORDER``, which records the commands instead of running them: well under a second.
"""

from __future__ import annotations

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


def test_reproduce_without_a_data_set_prints_its_usage_line(tmp_path) -> None:
    done, calls = run_script("reproduce.sh", tmp_path)
    assert done.returncode == 2 and calls == []
    assert done.stderr == (
        "usage: bash scripts/reproduce.sh kaggle|avazu [RAW_FILE] [sweep.py flags ...] [-- dlrm_mlet.py flags ...]\n"
    )
