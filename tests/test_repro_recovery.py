"""A sweep directory after mishaps: a damaged results JSON, a run stopped after writing its results, the
directory moved to another place. Continuing and summarizing go on with what is there, and nothing is lost."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from helpers import FakeTrainer, make_settings

from mlet.core.errors import UserError
from mlet.repro import summary as summarize
from mlet.repro import sweep
from mlet.repro.experiments import RunSpec
from mlet.repro.sweep_plan import Settings

DAMAGED = "sgd_base_d2_lr0.8_s1"


def damage(run_dir: Path, name: str = DAMAGED) -> str:
    """Cut a results JSON short (a full disk, a killed writer); its text now."""
    path = run_dir / "results" / f"{name}.json"
    path.write_text(path.read_text()[:200])
    return path.read_text()


def test_a_damaged_results_json_is_kept_aside_and_its_run_run_again(tmp_path) -> None:
    settings = make_settings(tmp_path)
    sweep.sweep(settings, runner=FakeTrainer())
    first = damage(tmp_path)
    again = FakeTrainer()
    sweep.sweep(settings, runner=again)
    results = tmp_path / "results" / f"{DAMAGED}.json"
    assert again.calls == [DAMAGED] and json.loads(results.read_text())["final"]["auc"] > 0
    assert (tmp_path / "results" / f"{DAMAGED}.json.damaged").read_text() == first  # nothing lost
    second = damage(tmp_path)
    sweep.sweep(settings, runner=FakeTrainer())
    assert (tmp_path / "results" / f"{DAMAGED}.json.damaged-2").read_text() == second  # the first one kept too
    assert (tmp_path / "results" / f"{DAMAGED}.json.damaged").read_text() == first


def test_summarize_leaves_out_a_damaged_results_json_naming_it_and_exits_1(tmp_path, capsys) -> None:
    sweep.sweep(make_settings(tmp_path, "--protocols", "paper"), runner=FakeTrainer())
    name = "sgd_base_d2_lr0.2_s1"
    damage(tmp_path, name)
    capsys.readouterr()
    assert summarize.main([str(tmp_path), "--no-plots"]) == 1
    err = capsys.readouterr().err.splitlines()
    path = tmp_path / "results" / f"{name}.json"
    assert len(err) == 1 and err[0].startswith(f"summarize.py: warning: {path}: not a dlrm_mlet.py results JSON ("), err
    assert err[0].endswith("): left out of the summary (sweep.py runs it again)")
    summary = (tmp_path / "summary.md").read_text()
    assert (
        f"- **left out, damaged** (not readable as results JSONs): `{name}.json`; `sweep.py` runs them again" in summary
    )
    assert "| paper | sgd | baseline d=8 |" in summary  # the other runs are summarized
    (tmp_path / "results" / f"{name}.json").unlink()
    assert summarize.main([str(tmp_path), "--no-plots"]) == 0  # a run missing, not damaged: as before


class StoppedAfterResults(FakeTrainer):
    """Writes its results, then ends as a run SIGTERM'd during the interpreter's exit does: exit code 143."""

    def __call__(self, spec: RunSpec, argv: list[str], log: Path) -> int:
        super().__call__(spec, argv, log)
        return 143


def test_a_run_stopped_after_writing_its_results_is_recorded_finished(tmp_path) -> None:
    settings = make_settings(tmp_path, "--protocols", "paper", "--baseline-dims", "2", "--mlet-dims", "--seeds", "1")
    totals = sweep.sweep(settings, runner=StoppedAfterResults())
    name = "sgd_base_d2_lr0.2_s1"
    status = json.loads((tmp_path / "sweep.json").read_text())["runs"][name]["status"]
    assert status == "finished (exit code 143 after writing its results)"
    assert (totals["finished"], totals["failed"]) == (1, 0)
    assert (
        (tmp_path / "logs" / f"{name}.log")
        .read_text()
        .endswith("# sweep.py: exit code 143 after the results JSON was written: counted as finished\n")
    )
    assert sweep.sweep(settings, runner=FakeTrainer())["skipped"] == 1  # as the next session takes it


class WithDataPaths(FakeTrainer):
    """Records its results file and data flags in its results JSON, as dlrm_mlet.py does."""

    def __call__(self, spec: RunSpec, argv: list[str], log: Path) -> int:
        code = super().__call__(spec, argv, log)
        flags = dict(a.removeprefix("--").split("=", 1) for a in argv if "=" in a)
        out = Path(flags["results-json"])
        payload = json.loads(out.read_text())
        payload["args"].update({key.replace("-", "_"): flags[key] for key in ("results-json", "processed-data-file")})
        out.write_text(json.dumps(payload))
        return code


def settings_in(run_dir: Path, *seeds: str) -> Settings:
    """The sweep's settings in ``run_dir``, its data in ``run_dir/processed`` (as reproduce.sh's)."""
    settings = make_settings(run_dir, "--protocols", "paper", "--seeds", *seeds)
    settings.train_flags = [f"--processed-data-file={run_dir}/processed", "--data-generation=dataset"]
    return settings


def test_a_moved_sweep_directory_continues_and_summarizes(tmp_path) -> None:
    old, new = tmp_path / "disk1" / "run", tmp_path / "disk2" / "run"
    sweep.sweep(settings_in(old, "1"), runner=WithDataPaths())
    recorded = json.loads((old / "sweep.json").read_text())["settings"]
    assert "./processed" in " ".join(recorded["train_flags"]) and str(old) not in json.dumps(recorded)
    shutil.move(old, new)
    moved = settings_in(new, "1", "2")
    sweep.check_run_dir(moved)  # refused before: "--processed-data-file=.../disk2/... where it had .../disk1/..."
    trainer = WithDataPaths()
    sweep.sweep(moved, runner=trainer)
    assert trainer.calls and all(name.endswith("_s2") for name in trainer.calls)  # seed 1 finished before the move
    assert summarize.main([str(new), "--no-plots"]) == 0  # the runs name their data by both places


def test_an_older_record_with_absolute_paths_still_continues_after_a_move(tmp_path) -> None:
    old, new = tmp_path / "disk1" / "run", tmp_path / "disk2" / "run"
    sweep.sweep(settings_in(old, "1"), runner=WithDataPaths())
    record = json.loads((old / "sweep.json").read_text())
    settings = settings_in(old, "1")
    record["settings"].update(run_dir=str(old), train_flags=settings.train_flags)  # as recorded before 2026-12-01
    (old / "sweep.json").write_text(json.dumps(record))
    shutil.move(old, new)
    sweep.check_run_dir(settings_in(new, "1"))
    moved_elsewhere = settings_in(new, "1")
    moved_elsewhere.train_flags = [f"--processed-data-file={tmp_path}/other/processed", "--data-generation=dataset"]
    elsewhere = f"--processed-data-file={tmp_path}/other/processed where it had --processed-data-file=./processed"
    with pytest.raises(UserError, match=re.escape(elsewhere)):  # data outside the directory: another setup
        sweep.check_run_dir(moved_elsewhere)
