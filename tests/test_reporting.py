"""What a run reports besides its log: TensorBoard scalars, a profiler trace, MLPerf lines, stop thresholds,
wall time, debug output, ONNX at the end."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, TINY, run_cli

from mlet.core import launch
from mlet.core.files import replace_atomically
from mlet.training import trainer


def mllog(out: str) -> list[dict]:
    """The MLPerf records of a log."""
    return [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith(":::MLLOG ")]


def test_tensorboard_scalars_read_back(tmp_path, capsys) -> None:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    board = tmp_path / "tb"
    code, _, err = run_cli([*TINY, "--print-freq=3", "--test-freq=6", f"--tensor-board-filename={board}"], capsys)
    assert code == 0, err
    events = event_accumulator.EventAccumulator(str(board))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == {
        "Train/Loss",
        "Train/LearningRate",
        "Train/SamplesPerSecond",
        "Test/AUC",
        "Test/LogLoss",
        "Test/Acc",
    }
    assert [e.step for e in events.Scalars("Train/Loss")] == [3, 6, 9, 12]
    assert all(e.value == pytest.approx(0.1) for e in events.Scalars("Train/LearningRate"))
    assert all(e.value > 0 for e in events.Scalars("Train/SamplesPerSecond"))
    assert [e.step for e in events.Scalars("Test/AUC")] == [6, 12]
    assert all(0 <= e.value <= 1 for e in events.Scalars("Test/Acc"))


def test_tensorboard_logs_the_same_losses_as_the_log(tmp_path, capsys) -> None:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    board = tmp_path / "tb"
    code, out, _ = run_cli([*TINY, "--print-freq=4", "--eval-split=val", f"--tensor-board-filename={board}"], capsys)
    assert code == 0
    logged = [float(m) for m in re.findall(r"Finished training it \d+/12 of epoch 0, loss (\S+)", out)]
    events = event_accumulator.EventAccumulator(str(board))
    events.Reload()
    assert [round(e.value, 6) for e in events.Scalars("Train/Loss")] == pytest.approx(logged, abs=1e-6)
    assert "Val/AUC" in events.Tags()["scalars"]  # the reported split is named


def test_missing_tensorboard_is_one_line(monkeypatch, capsys) -> None:
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    code, out, err = run_cli([*TINY, "--tensor-board-filename=tb"], capsys)
    assert code == 2 and "Finished training" not in out
    assert err.strip() == (
        "dlrm_mlet.py: error: --tensor-board-filename: needs the tensorboard package "
        "(pip install tensorboard, or pip install 'dlrm-mlet[tensorboard]')"
    )


def test_profiling_writes_a_trace_and_the_top_ops(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli([*TINY, "--enable-profiling", "--tensor-board-filename=tb"], capsys)
    assert code == 0, err
    trace = json.loads((tmp_path / "dlrm_mlet.json").read_text())
    names = {event.get("name", "") for event in trace["traceEvents"]}
    assert any(name.startswith("aten::") for name in names)  # ops of the profiled steps
    table = (tmp_path / "dlrm_mlet.prof").read_text()
    assert "Self CPU" in table and "aten::" in table
    assert (tmp_path / "tb" / "dlrm_mlet.pt.trace.json").read_bytes() == (tmp_path / "dlrm_mlet.json").read_bytes()
    assert "profiling: 5 training steps after the first 2" in out and "Self CPU" in out


def test_profiling_a_run_shorter_than_the_window(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli([*TINY, "--num-batches=4", "--enable-profiling"], capsys)
    assert code == 0 and "profiling: 2 training steps after the first 2" in out
    assert (tmp_path / "dlrm_mlet.json").exists()


def test_profiler_that_cannot_write_logs_one_line_and_training_goes_on(tmp_path, capsys) -> None:
    import torch

    from mlet.training.profiling import SKIPPED_STEPS, StepProfiler

    (tmp_path / "afile").write_text("")
    profiler = StepProfiler(str(tmp_path / "afile" / "p"), steps=1)  # its files would go under a regular file
    for iteration in range(SKIPPED_STEPS + 2):
        torch.ones(4).sum()
        profiler.stepped(iteration)
    assert profiler.state == "written"
    assert f"profiling: cannot write {tmp_path / 'afile' / 'p.prof'} (Not a directory); training goes on" in (
        capsys.readouterr().out
    )


def test_runs_sharing_a_folder_profile_into_their_own_files(tmp_path, monkeypatch, capsys) -> None:
    """Two runs with their own --save-model (or --profile-prefix) in one folder: distinct profiler files, and the
    log says where each went; without either, upstream's fixed names in the current folder."""
    monkeypatch.chdir(tmp_path)
    logs = {}
    for name, flags in (
        ("a", ["--save-model=runs/a.pt"]),
        ("b", ["--save-model=runs/b.pt"]),
        ("c", ["--profile-prefix=prof/c"]),
        ("default", []),
    ):
        code, out, err = run_cli([*TINY, "--num-batches=4", "--enable-profiling", *flags], capsys)
        assert code == 0, err
        logs[name] = out
    for name, prefix in (("a", "runs/a.profile"), ("b", "runs/b.profile"), ("c", "prof/c"), ("default", "dlrm_mlet")):
        assert f"trace {prefix}.json, top ops {prefix}.prof:" in logs[name]
        assert "Self CPU" in (tmp_path / f"{prefix}.prof").read_text()
        assert json.loads((tmp_path / f"{prefix}.json").read_text())["traceEvents"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "a.profile.json",
        "a.profile.prof",
        "a.pt",
        "b.profile.json",
        "b.profile.prof",
        "b.pt",
    ]
    code, out, err = run_cli([*TINY, "--num-batches=4", "--profile-prefix=prof/d"], capsys)
    assert code == 0 and "--profile-prefix: ignored without --enable-profiling" in out, err
    assert not (tmp_path / "prof" / "d.json").exists()


@pytest.mark.parametrize("prefix", [".", "./", "..", "made/", "made/.", "existing", "existing/"])
def test_a_profile_prefix_naming_a_folder_puts_the_default_names_in_it(prefix: str, tmp_path, monkeypatch, capsys):
    """A folder as --profile-prefix (one that exists, or written as one: ``.``, ``..``, a trailing ``/``) holds
    dlrm_mlet.json and dlrm_mlet.prof; taken as a stem it gave ``..json`` and ``..prof`` (or hidden ``.json``)."""
    cwd = tmp_path / "cwd"
    (cwd / "existing").mkdir(parents=True)
    monkeypatch.chdir(cwd)
    code, out, err = run_cli([*TINY, "--num-batches=4", "--enable-profiling", f"--profile-prefix={prefix}"], capsys)
    assert code == 0, err
    folder = (cwd / prefix).resolve()
    assert sorted(p.name for p in folder.iterdir() if p.suffix in (".json", ".prof")) == [
        "dlrm_mlet.json",
        "dlrm_mlet.prof",
    ]
    written = Path(prefix) / "dlrm_mlet"
    assert f"trace {written}.json, top ops {written}.prof:" in out


def test_a_profiler_file_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch, capsys) -> None:
    """A trace export that fails half-way leaves the earlier run's trace as it was (and no temporary): the files
    are written under a temporary name and renamed into place; the line names the file, not the temporary."""
    import torch

    from mlet.training.profiling import SKIPPED_STEPS, StepProfiler

    (tmp_path / "p.json").write_text('{"traceEvents": ["the earlier run"]}')
    profiler = StepProfiler(str(tmp_path / "p"), steps=1)

    def half_written(path: str) -> None:
        Path(path).write_text('{"traceEvents": [')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(profiler.profiler, "export_chrome_trace", half_written)
    for iteration in range(SKIPPED_STEPS + 2):
        torch.ones(4).sum()
        profiler.stepped(iteration)
    assert (tmp_path / "p.json").read_text() == '{"traceEvents": ["the earlier run"]}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json", "p.prof"]
    assert f"profiling: cannot write {tmp_path / 'p.json'} (No space left on device); training goes on" in (
        capsys.readouterr().out
    )


def reporting_cases(tmp_path) -> dict[str, tuple[list[str], str]]:
    """Reporting flags whose files cannot be written (run in ``tmp_path``), and the line each gives."""
    (tmp_path / "afile").write_text("")
    (tmp_path / "dlrm_mlet.onnx").mkdir()
    (tmp_path / "dlrm_mlet.json").mkdir()
    return {
        "board-is-save-model": (
            ["--save-model=a.pt", "--tensor-board-filename=a.pt"],
            "--tensor-board-filename a.pt: same file as --save-model; one would overwrite the other",
        ),
        "board-is-a-file": (
            ["--tensor-board-filename=afile"],
            "--tensor-board-filename afile: is a file; give a folder",
        ),
        "board-under-a-file": (
            ["--tensor-board-filename=afile/tb"],
            "--tensor-board-filename afile/tb: afile is a file, not a folder",
        ),
        "onnx-is-a-folder": (
            ["--save-onnx"],
            f"--save-onnx {tmp_path / 'dlrm_mlet.onnx'}: is a folder; give a file name",
        ),
        "onnx-is-save-model": (
            ["--save-model=dlrm_mlet.onnx", "--save-onnx"],
            f"--save-onnx {tmp_path / 'dlrm_mlet.onnx'}: same file as --save-model",
        ),
        "trace-is-a-folder": (
            ["--enable-profiling"],
            f"--enable-profiling {tmp_path / 'dlrm_mlet.json'}: is a folder; give a file name",
        ),
        "top-ops-is-save-model": (
            ["--save-model=dlrm_mlet.prof", "--enable-profiling", "--profile-prefix=dlrm_mlet"],
            f"--enable-profiling (top ops) {tmp_path / 'dlrm_mlet.prof'}: same file as --save-model",
        ),
        "onnx-data-is-results": (
            ["--results-json=dlrm_mlet.onnx.data", "--save-onnx"],
            f"--save-onnx (external data) {tmp_path / 'dlrm_mlet.onnx.data'}: same file as --results-json",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "board-is-save-model",
        "board-is-a-file",
        "board-under-a-file",
        "onnx-is-a-folder",
        "onnx-is-save-model",
        "trace-is-a-folder",
        "top-ops-is-save-model",
        "onnx-data-is-results",
    ],
)
def test_reporting_outputs_are_checked_before_training(case: str, tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)
    flags, message = reporting_cases(tmp_path)[case]
    code, out, err = run_cli([*TINY, *flags], capsys)
    assert code == 2 and "time/loss" not in out
    assert err.count("\n") == 1 and err.startswith(f"dlrm_mlet.py: error: {message}"), err


@pytest.mark.parametrize(
    ("flag", "folder"), [("--tensor-board-filename=tb", "tb"), ("--save-onnx", "."), ("--enable-profiling", ".")]
)
def test_a_read_only_folder_is_one_line_before_training(flag: str, folder: str, tmp_path, monkeypatch, capsys) -> None:
    """A folder that refuses new files (a read-only file system; as root, permission bits do not refuse)."""
    import tempfile

    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)
    real_mkstemp = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if Path(dir or ".").resolve() == (tmp_path / folder).resolve():
            raise OSError(30, "Read-only file system")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    code, out, err = run_cli([*TINY, flag], capsys)
    assert code == 2 and "time/loss" not in out
    assert err.count("\n") == 1 and err.startswith(f"dlrm_mlet.py: error: {flag.split('=')[0]} ")
    assert err.rstrip().endswith("cannot write there (Read-only file system)"), err


def test_auc_threshold_stops_training_and_says_when(tmp_path, capsys) -> None:
    out_json = tmp_path / "r.json"
    code, out, err = run_cli(
        [*TINY, "--test-freq=4", "--mlperf-auc-threshold=0.01", f"--results-json={out_json}"], capsys
    )
    assert code == 0, err
    assert "Finished training it 5/" not in out  # stopped at the first test, iteration 4
    assert re.search(r"--mlperf-auc-threshold 0.01 reached: test auc \S+ at iteration 4 \(epoch 0", out)
    result = json.loads(out_json.read_text())
    assert result["iterations"] == 4 and result["final"]["iteration"] == 4
    assert result["stopped"]["flag"] == "--mlperf-auc-threshold" and result["stopped"]["iteration"] == 4


def test_unreached_threshold_trains_to_the_end(tmp_path, capsys) -> None:
    out_json = tmp_path / "r.json"
    code, _, _ = run_cli([*TINY, "--test-freq=4", "--mlperf-acc-threshold=1.0", f"--results-json={out_json}"], capsys)
    result = json.loads(out_json.read_text())
    assert code == 0 and result["iterations"] == 12 and result["stopped"] is None


def test_mlperf_log_lines(capsys) -> None:
    code, out, _ = run_cli([*TINY, "--nepochs=2", "--test-freq=6", "--mlperf-logging"], capsys)
    assert code == 0
    records = mllog(out)
    keys = [r["key"] for r in records]
    for key in ("cache_clear", "init_start", "init_stop", "run_start", "seed", "global_batch_size"):
        assert key in keys
    assert keys.index("init_start") < keys.index("init_stop") < keys.index("run_start") < keys.index("epoch_start")
    assert keys.count("epoch_start") == keys.count("epoch_stop") == 2
    evals = [r for r in records if r["key"] == "eval_accuracy"]
    assert [r["metadata"]["epoch_num"] for r in evals] == [1.5, 2.0, 2.5, 3.0]
    assert all(0 <= r["value"] <= 1 for r in evals)
    assert records[-1]["key"] == "run_stop" and records[-1]["metadata"]["status"] == "aborted"
    assert all(
        r["time_ms"] > 1.6e12 and r["event_type"] in ("POINT_IN_TIME", "INTERVAL_START", "INTERVAL_END")
        for r in records
    )


def test_mlperf_timing_starts_after_scikit_learn_is_imported() -> None:
    """With ``--mlperf-logging`` the metrics' import (about a second) happens before ``run_start``, not inside
    the timed run's first evaluation. In a fresh process: elsewhere in the suite scikit-learn is loaded."""
    code = (
        "import sys, dlrm_mlet\n"
        "from mlet.training.observers import MLPerfLog\n"
        "started = MLPerfLog.run_started\n"
        "def run_started(self, *args):\n"
        "    print('sklearn.metrics loaded at run_start:', 'sklearn.metrics' in sys.modules)\n"
        "    started(self, *args)\n"
        "MLPerfLog.run_started = run_started\n"
        f"sys.exit(dlrm_mlet.main({[*TINY, '--mlperf-logging']!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "sklearn.metrics loaded at run_start: True" in done.stdout


def test_mlperf_run_stop_success_when_the_target_is_reached(capsys) -> None:
    code, out, _ = run_cli([*TINY, "--test-freq=6", "--mlperf-logging", "--mlperf-auc-threshold=0.01"], capsys)
    records = mllog(out)
    assert code == 0 and records[-1]["key"] == "run_stop" and records[-1]["metadata"]["status"] == "success"


@pytest.mark.parametrize("pause", ["--save-freq=4", "--test-freq=4"])
def test_a_save_or_a_test_inside_a_window_is_left_out_of_its_rate_and_its_steps_are_not(
    pause: str, tmp_path, monkeypatch, capsys
) -> None:
    # Each step takes at least STEP_S, each save and test at least PAUSE_S. The clock restarted after a save or a
    # test, losing the window's steps before it: a GPU trial's window with a --save-freq save logged 0.04 ms/it
    # where its steps took 0.3 ms, and the results' training time lost those steps too.
    step_s, pause_s = 0.02, 0.3
    step, evaluate, save = trainer.Trainer.step, trainer.Trainer.evaluate, trainer.atomic_save
    monkeypatch.setattr(trainer.Trainer, "step", lambda self, batch: (time.sleep(step_s), step(self, batch))[1])
    monkeypatch.setattr(trainer.Trainer, "evaluate", lambda *a, **k: (time.sleep(pause_s), evaluate(*a, **k))[1])
    monkeypatch.setattr(trainer, "atomic_save", lambda *a: (time.sleep(pause_s), save(*a))[1])
    results = tmp_path / "r.json"
    argv = [
        *TINY,
        "--print-freq=6",
        "--print-time",
        pause,
        f"--save-model={tmp_path / 'm.pt'}",
        f"--results-json={results}",
    ]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    ms_per_it = [float(m) for m in re.findall(r"Finished training it \d+/12 of epoch 0, ([\d.]+) ms/it", out)]
    assert len(ms_per_it) == 2 and all(1000 * step_s <= ms < 1000 * (step_s + pause_s / 6) for ms in ms_per_it), out
    seconds = json.loads(results.read_text())["train_seconds"]
    assert 12 * step_s <= seconds < 12 * step_s + pause_s  # every step, no pause


def test_print_wall_time(capsys) -> None:
    code, out, _ = run_cli([*TINY, "--print-wall-time"], capsys)
    lines = [line for line in out.splitlines() if line.startswith("Finished training it")]
    assert code == 0 and lines and all(re.search(r"loss \S+ \(\d\d:\d\d\)$", line) for line in lines)


def test_a_log_line_is_written_whole(monkeypatch) -> None:
    """A log line and its end go out in one write: torchrun's watch, on another thread, wrote its line between
    the two writes of ``tqdm.write`` and was glued to a 'Finished training it' line (and the exception it then
    raised in the main thread lost that line's end)."""
    writes: list[str] = []
    monkeypatch.setattr(sys, "stdout", type("Out", (), {"write": writes.append, "flush": lambda self: None})())
    launch.log("Finished training it 6/10 of epoch 0, loss 1.141231")
    assert writes == ["Finished training it 6/10 of epoch 0, loss 1.141231\n"]


def test_debug_mode_prints_architecture_batches_and_parameters(capsys) -> None:
    code, out, _ = run_cli([*TINY, "--mini-batch-size=2", "--num-batches=3", "--debug-mode"], capsys)
    assert code == 0
    assert "model arch:" in out and "mlp bot arch 2 layers, with input to output dimensions: 13-8-4" in out
    assert [line for line in out.splitlines() if line.startswith("mini-batch:")] == [
        f"mini-batch: {i}" for i in range(3)
    ]
    assert out.index("initial parameters") < out.index("time/loss") < out.index("updated parameters")
    assert "tables.weight:" in out


@pytest.mark.slow
def test_save_onnx_writes_the_inference_model(tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli([*TINY, "--mlet-hidden=8", "--save-onnx", "--save-model=m.pt"], capsys)
    assert code == 0, err
    assert (tmp_path / "dlrm_mlet.onnx").stat().st_size > 0 and "saved dlrm_mlet.onnx" in out
    # with --inference-only the evaluated model is exported too (as upstream), its MLET tables collapsed
    (tmp_path / "dlrm_mlet.onnx").unlink()
    code, out, err = run_cli([*TINY, "--mlet-hidden=8", "--save-onnx", "--load-model=m.pt", "--inference-only"], capsys)
    assert code == 0, err
    assert (tmp_path / "dlrm_mlet.onnx").stat().st_size > 0 and "saved dlrm_mlet.onnx" in out
    # quantized tables are not exported: one line, before the evaluation
    code, out, err = run_cli(
        [*TINY, "--mlet-hidden=8", "--load-model=m.pt", "--inference-only", "--save-onnx", "--quantize-emb-with-bit=8"],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1
    assert "--save-onnx: the evaluated model has row-wise quantized tables" in err


def test_replace_atomically_keeps_the_old_file_when_a_write_fails(tmp_path) -> None:
    """A write that fails half-way leaves the previous file whole and no temporary; the error names the target.
    A write that succeeds replaces the file."""
    target = tmp_path / "results.json"
    target.write_text("old\n")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("ne")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left on device") as raised:
        replace_atomically(target, half_then_fail)
    assert raised.value.filename == str(target)
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    replace_atomically(target, lambda tmp: tmp.write_text("new\n"))
    assert target.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_every_reporting_output_is_checked_distinct_and_writable(tmp_path, monkeypatch) -> None:
    """The files the reporting flags write, as the distinctness check lists them, are the ones probed before
    training (but the ONNX model's external data, written only past 2 GiB beside the probed model)."""
    from mlet.cli import reporting

    monkeypatch.chdir(tmp_path)
    checked: dict[str, str] = {}
    monkeypatch.setattr(reporting, "check_output_file", lambda flag, path: checked.setdefault(path, flag))
    monkeypatch.setattr(reporting, "check_writable_folder", lambda flag, path: checked.setdefault(path, flag))
    every = reporting.Reporting(tensorboard_dir="tb", profiling=True, profile_prefix="p", save_onnx=True)
    reporting.check_reporting_files(every)
    onnx = str(tmp_path / reporting.ONNX_FILE)
    assert reporting.reporting_files(every) == {
        "--tensor-board-filename": "tb",
        "--enable-profiling (trace)": str(tmp_path / "p.json"),
        "--enable-profiling (top ops)": str(tmp_path / "p.prof"),
        "--save-onnx": onnx,
        "--save-onnx (external data)": f"{onnx}.data",
    }
    assert checked == {
        "tb": "--tensor-board-filename",
        str(tmp_path / "p.json"): "--enable-profiling",
        str(tmp_path / "p.prof"): "--enable-profiling",
        onnx: "--save-onnx",
    }
    assert not any(reporting.reporting_files(reporting.Reporting()).values())  # nothing asked, nothing written
