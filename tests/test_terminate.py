"""SIGTERM (kill, a batch system) ends every command as Ctrl-C does: one line, exit status 143, no temporary
file and nothing half-written left."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from helpers import TINY, run_snippet

import dlrm_mlet
from mlet.core.errors import Terminated, handling, terminate
from mlet.data.preprocessing import cache
from mlet.data.preprocessing.raw_generate import RawGenerator
from mlet.repro.sweep import RESUMABLE

TERMINATED_WRITE = """
import importlib, os, signal, sys
owner = importlib.import_module(sys.argv[1])
*path, name = sys.argv[2].split(".")
for part in path:
    owner = getattr(owner, part)
original = getattr(owner, name)
def terminated(*args, **kwargs):  # SIGTERM (kill, a batch system) while the command writes its output
    result = original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return result
setattr(owner, name, terminated)
command = importlib.import_module(sys.argv[3])
sys.argv = [sys.argv[3] + ".py", *sys.argv[4:]]
command.cli()
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny MLET checkpoint (to collapse and export) and a baseline one (to quantize)."""
    out = tmp_path_factory.mktemp("checkpoints")
    paths = {"mlet": out / "mlet.pt", "baseline": out / "baseline.pt"}
    assert dlrm_mlet.main([*TINY, "--num-batches=2", "--mlet-hidden=8", f"--save-model={paths['mlet']}"]) == 0
    assert dlrm_mlet.main([*TINY, "--num-batches=2", f"--save-model={paths['baseline']}"]) == 0
    return paths


def raw_kaggle_file(path: Path, rows: int = 600) -> Path:
    """A small raw file of the synthetic click model in the Criteo Kaggle layout."""
    RawGenerator("kaggle", rows, seed=3).write(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "writer", "argv"),
    [
        (["checkpoint", "torch", "save"], "collapse", ["{mlet}", "{out}/model.pt"]),
        (["checkpoint", "torch", "save"], "quantize", ["{baseline}", "{out}/model.pt", "--bits=8"]),
        (["checkpoint", "mlet.serving.onnx_export", "verify"], "export-onnx", ["{mlet}", "{out}/model.onnx"]),
        (
            ["data_utils", "mlet.data.preprocessing.raw_generate", "RawGenerator.table"],
            "generate",
            ["kaggle", "--rows=600", "--out={out}/raw.txt"],
        ),
        (
            ["data_utils", "mlet.data.preprocessing.cache", "renumber_pass"],
            "preprocess",
            ["--data-set=kaggle", "--raw-data-file={raw}", "--processed-data-file={out}/processed", "--progress=false"],
        ),
    ],
    ids=["collapse", "quantize", "export-onnx", "generate", "preprocess"],
)
def test_sigterm_while_a_command_writes_ends_it_with_one_line_and_no_temporary(
    command: list[str], writer: str, argv: list[str], checkpoints, tmp_path
) -> None:
    """The signal comes once the command's output is written to its temporary (a file or folder beside the final
    name), before it is put in place: the temporary is removed, and nothing is at the final name."""
    module, owner, name = command
    out = tmp_path / "out"
    out.mkdir()
    raw = raw_kaggle_file(tmp_path / "raw.txt") if writer == "preprocess" else None
    flags = [flag.format(out=out, raw=raw, **checkpoints) for flag in argv]
    done = run_snippet(TERMINATED_WRITE, [owner, name, module, writer, *flags], timeout=120)
    assert (done.returncode, done.stderr) == (143, f"{module}.py: terminated (SIGTERM)\n"), done.stderr
    assert os.listdir(out) == []


TERMINATED_SWEEP = """
import os, signal, sys
from mlet.repro import sweep
def run(spec, argv, log):  # a run in flight as the sweep gets SIGTERM (kill, a batch system); it ends as runs do
    log.write_text("a run\\n")
    os.kill(os.getpid(), signal.SIGTERM)
    return 143
sweep.subprocess_runner = lambda threads: run
sweep.cli()
"""


@pytest.mark.slow
def test_sigterm_to_a_sweep_records_its_runs_and_ends_with_one_line(tmp_path) -> None:
    argv = ["--run-dir", str(tmp_path), "--protocols", "paper", "--baseline-dims", "2", "4", "--mlet-dims",
            "--seeds", "1", "--jobs", "1", "--", "--data-generation=synthetic", "--arch-embedding-size=20-10",
            "--data-size=64", "--mini-batch-size=32"]  # fmt: skip
    done = run_snippet(TERMINATED_SWEEP, argv, timeout=120)
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "sweep.py: " + RESUMABLE.replace(
        "interrupted", "terminated (SIGTERM)"
    )
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert [run["status"] for run in record["runs"].values()] == ["interrupted (exit code 143)"]  # no run after it
    assert record["sessions"][-1]["interrupted"] is True and "ended" in record["sessions"][-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "results", "sweep.json"]


def test_sigterm_as_a_rebuilt_cache_is_put_in_place_waits_for_it(tmp_path, monkeypatch) -> None:
    """The old processed data are moved aside, then the new moved in: SIGTERM between the two would leave no
    processed data at all. It waits until both are done; then neither the build nor the old data is left."""
    raw = raw_kaggle_file(tmp_path / "raw.txt")
    target = tmp_path / "processed"
    cache.prepare(str(raw), str(target), "kaggle", "dlrm", progress=False, log=lambda line: None)
    replace = os.replace

    def terminated_between(source, destination) -> None:
        replace(source, destination)
        if Path(destination).name.startswith(".processed.old-"):
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(os, "replace", terminated_between)
    with handling(signal.SIGTERM, terminate), pytest.raises(Terminated):
        cache.prepare(str(raw), str(target), "kaggle", "random-811", progress=False, log=lambda line: None)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed", "raw.txt"]
    assert cache.read_meta(target)["settings"]["data_split"] == "random-811"
