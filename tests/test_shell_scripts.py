"""scripts/quickstart.sh and reproduce.sh through bash: paths from the caller's directory, usage lines.

``PY`` is a stand-in that records each command the script would run (one file per call, one argument a line)
instead of running it, so these tests take well under a second.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from helpers import ROOT

RECORDER = '#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$CALLS/$(ls "$CALLS" | wc -l)"\n'


def run_script(script: str, caller_dir: Path, *argv: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """``bash scripts/SCRIPT ARGV...`` started in ``caller_dir`` with ``PY`` recording; the result and the calls."""
    calls = caller_dir / "calls"
    calls.mkdir()
    python = caller_dir / "record_python"
    python.write_text(RECORDER)
    python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "RUN_DIR"} | {"PY": str(python), "CALLS": str(calls)}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / script), *argv],
        cwd=caller_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    recorded = [(calls / str(i)).read_text().splitlines() for i in range(len(list(calls.iterdir())))]
    return done, recorded


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
