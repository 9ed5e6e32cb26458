"""SIGTERM (kill, a batch system) ends every command as Ctrl-C does: one line, exit status 143, no temporary
file and nothing half-written left; two runs building the same processed cache at once take turns."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import BUILD_HELD, ROOT, TINY, kill_running, run_snippet, wait_for

import dlrm_mlet
from mlet.core.errors import UserError
from mlet.core.files import one_at_a_time, sole_writer
from mlet.core.signals import HELD, AtBoundaries, Terminated, handling, signals_held, terminate
from mlet.data.preprocessing import cache
from mlet.data.preprocessing.raw_generate import RawGenerator
from mlet.repro.sweep import RESUMABLE
from mlet.repro.sweep_runs import CtrlC

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
import os, signal, sys, time
from mlet.repro import sweep
def run(spec, argv, log):  # a run in flight as the sweep gets SIGTERM (kill, a batch system); it ends as runs do
    log.write_text("a run\\n")
    os.kill(os.getpid(), signal.SIGTERM)
    # a run takes a moment to end on SIGTERM; returning at once raced the signal's delivery to the main thread,
    # and the worker took the next run before the sweep had seen the signal (the test failed now and then)
    time.sleep(0.5)
    return 143
sweep.subprocess_runner = lambda threads: run
sweep.cli()
"""


# A sweep started as the background job of a script (``python scripts/sweep.py ... &`` in a non-interactive shell)
# inherits SIGINT ignored. Its SIGTERM used to go unnoted then: the runs in flight were not recorded and the session
# had no ``interrupted``.
SIGINT_IGNORED = "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"


@pytest.mark.slow
@pytest.mark.parametrize("start", ["", SIGINT_IGNORED], ids=["from-a-terminal", "sigint-ignored"])
def test_sigterm_to_a_sweep_records_its_runs_and_ends_with_one_line(tmp_path, start) -> None:
    argv = ["--run-dir", str(tmp_path), "--protocols", "paper", "--baseline-dims", "2", "4", "--mlet-dims",
            "--seeds", "1", "--jobs", "1", "--", "--data-generation=synthetic", "--arch-embedding-size=20-10",
            "--data-size=64", "--mini-batch-size=32"]  # fmt: skip
    done = run_snippet(start + TERMINATED_SWEEP, argv, timeout=120)
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
    with handling({signal.SIGTERM: terminate}), pytest.raises(Terminated):
        cache.prepare(str(raw), str(target), "kaggle", "random-811", progress=False, log=lambda line: None)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed", "raw.txt"]
    assert cache.read_meta(target)["settings"]["data_split"] == "random-811"


HELD_PREPROCESS = (
    BUILD_HELD
    + """
import data_utils
sys.exit(data_utils.command_line(sys.argv[3:]))
"""
)


@pytest.mark.slow
def test_a_second_run_building_the_same_cache_waits_for_the_first_and_uses_its_build(tmp_path) -> None:
    raw = raw_kaggle_file(tmp_path / "raw.txt")
    target = tmp_path / "cache" / "processed"
    argv = ["preprocess", "--data-set=kaggle", f"--raw-data-file={raw}", f"--processed-data-file={target}",
            "--progress=false"]  # fmt: skip
    building, go = tmp_path / "building", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    outputs = [tmp_path / "first.txt", tmp_path / "second.txt"]
    with open(outputs[0], "w") as out:
        command = [sys.executable, "-c", HELD_PREPROCESS, str(building), str(go), *argv]
        first = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    second = None
    try:
        wait_for(lambda: building.exists() or first.poll() is not None, "the first run's build")
        with open(outputs[1], "w") as out:
            command = [sys.executable, "data_utils.py", *argv]
            second = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        waits = f"waiting for another run's build of {target} (pid {first.pid} on {socket.gethostname()})"
        wait_for(lambda: waits in outputs[1].read_text() or second.poll() is not None, "the second run to wait")
        go.touch()
        codes = [first.wait(timeout=120), second.wait(timeout=120)]
    finally:
        kill_running([first, second])
    said = [path.read_text() for path in outputs]
    assert codes == [0, 0], said
    assert f"preprocessing {raw} into {target}" in said[0] and waits not in said[0]
    assert waits in said[1] and f"using processed data in {target}" in said[1] and "preprocessing" not in said[1]
    assert os.listdir(target.parent) == ["processed"]  # no build left aside, no lock file


def test_a_waiter_whose_lock_file_was_removed_locks_the_new_one(tmp_path) -> None:
    """The holder removes the lock file as it leaves; a run that waited on that file must not take it as locked
    (a third run would lock the file now there at the same time): it locks the new one, which refuses others."""
    target = tmp_path / "processed"
    waits, inside, leave = threading.Event(), threading.Event(), threading.Event()
    holders: list[str] = []

    def second_run() -> None:
        with one_at_a_time(target, lambda holder: (holders.append(holder), waits.set())):
            inside.set()
            leave.wait(60)

    with one_at_a_time(target, lambda holder: pytest.fail("nobody holds it yet")):
        waiter = threading.Thread(target=second_run)
        waiter.start()
        assert waits.wait(60)
    try:
        assert inside.wait(60)
        with pytest.raises(UserError, match="another run is writing it"), sole_writer("--flag", str(target)):
            pass
    finally:
        leave.set()
        waiter.join(60)
    assert holders == [f"pid {os.getpid()} on {socket.gethostname()}"]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("landing", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_as_held_handlers_are_put_back_leaves_none_on_the_temporary_one(monkeypatch, landing, when) -> None:
    """A Ctrl-C that lands as one handler is put back (``signal.signal`` runs the pending handlers ``before``
    installing, Python ``after``) raises out of the restore: every other handler is back all the same."""
    originals = {signum: signal.getsignal(signum) for signum in HELD}
    real, raised = signal.signal, []

    def restore_interrupted(signum: int, handler):
        if signum == landing and handler is originals[signum] and not raised:
            raised.append(signum)
            if when == "after":
                real(signum, handler)
            raise KeyboardInterrupt
        return real(signum, handler)

    monkeypatch.setattr(signal, "signal", restore_interrupted)
    with pytest.raises(KeyboardInterrupt), signals_held():
        pass
    monkeypatch.undo()
    assert raised == [landing]
    assert {signum: signal.getsignal(signum) for signum in HELD} == originals


@pytest.mark.parametrize("swap", ["handling", "held", "ctrl-c"])
def test_a_handler_set_outside_python_is_put_back_as_the_default(monkeypatch, swap) -> None:
    """``signal.signal`` gives None for a handler installed outside Python: putting it back must not fail (it
    raised TypeError), and the signal gets its default handler."""
    originals = {signum: signal.getsignal(signum) for signum in HELD}
    real = signal.signal

    def set_outside_python(signum: int, handler):
        old = real(signum, handler)
        return None if signum == signal.SIGINT and old is originals[signum] else old

    monkeypatch.setattr(signal, "signal", set_outside_python)
    swapped = {
        "handling": lambda: handling({signal.SIGINT: signal.SIG_IGN}),
        "held": signals_held,
        "ctrl-c": CtrlC,
    }[swap]
    try:
        with swapped():
            pass
        assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
    finally:
        monkeypatch.undo()
        real(signal.SIGINT, originals[signal.SIGINT])
    assert signal.getsignal(signal.SIGTERM) is originals[signal.SIGTERM]


def test_at_boundaries_keeps_a_signal_inside_a_unit_and_leaves_ignored_ones_alone() -> None:
    """A SIGTERM inside a unit waits for :meth:`take`; between units it raises at once; an ignored Ctrl-C (a
    shell's background job) stays ignored; not wanted, nothing is swapped. The handlers from before come back."""
    originals = {signum: signal.getsignal(signum) for signum in HELD}
    boundaries = AtBoundaries()
    with handling({signal.SIGTERM: terminate, signal.SIGINT: signal.SIG_IGN}):
        with boundaries.watching(False):
            assert signal.getsignal(signal.SIGTERM) is terminate
        with boundaries.watching(True):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            boundaries.inside = True
            os.kill(os.getpid(), signal.SIGTERM)  # kept: the unit goes on
            boundaries.inside = False
            with pytest.raises(Terminated):
                boundaries.take()
            boundaries.take()  # taken once
            with pytest.raises(Terminated):
                os.kill(os.getpid(), signal.SIGTERM)  # between units: at once
        assert signal.getsignal(signal.SIGTERM) is terminate
    assert {signum: signal.getsignal(signum) for signum in HELD} == originals


def test_the_signals_module_loads_nothing_but_the_standard_library() -> None:
    """The command files import it before torch, to guard those imports: it must not load them itself."""
    probe = "import sys, mlet.core.signals; print(*sorted(m for m in sys.modules if m.split('.')[0] in PROJECT))"
    project = "PROJECT = ('mlet', 'torch', 'numpy'); "
    done = subprocess.run([sys.executable, "-c", project + probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.split() == ["mlet", "mlet.core", "mlet.core.signals"]


def test_a_failed_install_of_a_rebuilt_cache_puts_the_old_one_back(tmp_path, monkeypatch) -> None:
    """The old processed data are moved aside, then the new moved in: should that second rename fail, the old
    data go back (the build's clean-up removed them too, leaving no processed data at all)."""
    raw = raw_kaggle_file(tmp_path / "raw.txt")
    target = tmp_path / "processed"
    cache.prepare(str(raw), str(target), "kaggle", "dlrm", progress=False, log=lambda line: None)
    replace = os.replace

    def failing_install(source, destination) -> None:
        if Path(source).name.startswith(".processed.tmp-"):
            raise OSError(errno.EIO, "Input/output error")
        replace(source, destination)

    monkeypatch.setattr(os, "replace", failing_install)
    with pytest.raises(OSError, match="Input/output error"):
        cache.prepare(str(raw), str(target), "kaggle", "random-811", progress=False, log=lambda line: None)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed", "raw.txt"]
    assert cache.read_meta(target)["settings"]["data_split"] == "dlrm"


@pytest.mark.slow
@pytest.mark.parametrize("command", ["summarize", "analyze_rank"])
def test_sigterm_ends_the_reporting_commands_with_one_line(command: str, checkpoints, tmp_path) -> None:
    """summarize.py and analyze_rank.py end on SIGTERM as the other commands do (they died with -15, no line)."""
    if command == "summarize":
        results = tmp_path / "r.json"
        assert dlrm_mlet.main([*TINY, "--num-batches=2", f"--results-json={results}"]) == 0
        argv = ["mlet.repro.summary", "check_results_files", "mlet.repro.summary", str(results)]
    else:
        out = tmp_path / "rank"
        argv = ["mlet.repro.rank_analysis", "checked_edges", "mlet.repro.rank_analysis", str(checkpoints["mlet"])]
        argv += ["--no-frequency", f"--out={out}"]
    done = run_snippet(TERMINATED_WRITE, argv, timeout=120)
    assert (done.returncode, done.stderr) == (143, f"{command}.py: terminated (SIGTERM)\n"), done.stderr
    assert not (tmp_path / "rank").exists()


TERMINATED_EXIT = """
import atexit, importlib, signal, sys
# SIGTERM as the interpreter exits, after the command's main returned: the exit waits for the threads still at work
# (a dlrm_mlet.py run: the next epoch's shuffle, begun when the data were read; minutes at Criteo Terabyte's size)
atexit.register(signal.raise_signal, signal.SIGTERM)
command = importlib.import_module(sys.argv[1])
sys.argv = [sys.argv[1] + ".py", *sys.argv[2:]]
command.cli()
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "argv", "output"),
    [
        ("dlrm_mlet", [*TINY, "--num-batches=2"], "Testing at"),
        ("data_utils", ["preprocess", "--data-set=kaggle", "--raw-data-file={raw}", "--progress=false"], "rows"),
        ("checkpoint", ["info", "{mlet}"], "MLET"),
    ],
    ids=["dlrm_mlet", "data_utils-preprocess", "checkpoint-info"],
)
def test_sigterm_as_a_command_exits_ends_it_with_one_line(
    module: str, argv: list[str], output: str, checkpoints, tmp_path
) -> None:
    """A SIGTERM once the command's main has returned, while the interpreter exits, ends it with the command's one
    line and status 143: it was back on its default there, and the process died with no line (-15)."""
    raw = raw_kaggle_file(tmp_path / "raw.txt")
    flags = [flag.format(raw=raw, **checkpoints) for flag in argv]
    done = run_snippet(TERMINATED_EXIT, [module, *flags], timeout=120)
    assert done.returncode == 143 and done.stderr.endswith(f"{module}.py: terminated (SIGTERM)\n"), done.stderr
    assert done.stderr.count("terminated") == 1 and output in done.stdout


@pytest.mark.slow
def test_sigterm_as_a_terminated_command_exits_adds_no_second_line(checkpoints, tmp_path) -> None:
    """A second SIGTERM as a command that a first one ended exits: the one line and status 143 (it died with -15)."""
    snippet = TERMINATED_WRITE.replace("import importlib,", "import atexit, importlib,").replace(
        "command.cli()", "atexit.register(signal.raise_signal, signal.SIGTERM)\ncommand.cli()"
    )
    assert snippet.count("atexit") == 2
    argv = ["torch", "save", "checkpoint", "collapse", str(checkpoints["mlet"]), str(tmp_path / "model.pt")]
    done = run_snippet(snippet, argv, timeout=120)
    assert (done.returncode, done.stderr) == (143, "checkpoint.py: terminated (SIGTERM)\n"), done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "argv", "prog"),
    [
        ("checkpoint", ["info", "{mlet}"], "checkpoint.py"),
        ("data_utils", ["generate", "kaggle", "--rows=10", "--out={out}/raw.txt"], "data_utils.py"),
        ("mlet.repro.summary", ["{out}"], "summarize.py"),
    ],
    ids=["checkpoint", "data_utils", "summarize"],
)
def test_sigterm_as_a_command_reads_its_flags_ends_it_with_one_line(
    module: str, argv: list[str], prog: str, checkpoints, tmp_path
) -> None:
    """SIGTERM once the flags are parsed, before the command's main sets its handler: the one line and status 143
    (it died with -15, no line), and nothing written."""
    out = tmp_path / "out"
    out.mkdir()
    flags = [flag.format(out=out, **checkpoints) for flag in argv]
    done = run_snippet(TERMINATED_WRITE, ["argparse", "ArgumentParser.parse_args", module, *flags], timeout=120)
    assert (done.returncode, done.stderr) == (143, f"{prog}: terminated (SIGTERM)\n"), done.stderr
    assert os.listdir(out) == []


SPAWNED_WORKER = """
import multiprocessing, os, signal, time
from mlet.core.signals import interrupt_exits

with interrupt_exits("command.py"):  # as the command files' imports, which a spawned worker runs again
    if __name__ == "__mp_main__":
        os.kill(os.getpid(), signal.SIGTERM)  # SIGTERM to the whole process group as the worker imports
        time.sleep(30)


def work():
    pass


if __name__ == "__main__":
    worker = multiprocessing.get_context("spawn").Process(target=work)
    worker.start()
    worker.join()
    print(worker.exitcode)
"""


@pytest.mark.slow
def test_a_spawned_worker_ended_as_it_imports_the_command_leaves_the_line_to_its_parent(tmp_path) -> None:
    """A worker process that multiprocessing spawns (Terabyte's day readers, full_scale.py's runners) imports the
    command's file again: SIGTERM (or Ctrl-C) to the process group there ends it with status 143 and no line of
    its own, the command saying its one line (a batch system's kill during Terabyte preprocessing printed it once
    per reading process too)."""
    (tmp_path / "command.py").write_text(SPAWNED_WORKER)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "command.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "143\n", ""), done.stderr


# A wrapper that ignores SIGTERM for its command (``trap '' TERM`` in a shell script, as ``nohup`` does SIGHUP).
SIGTERM_IGNORED = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
GENERATE_600 = ["generate", "kaggle", "--rows=600", "--out={out}/raw.txt"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("snippet", "argv", "output"),
    [
        (
            TERMINATED_WRITE,
            ["argparse", "ArgumentParser.parse_args", "dlrm_mlet", *TINY, "--num-batches=2"],
            "Testing at",
        ),
        (
            TERMINATED_WRITE,
            ["mlet.data.preprocessing.raw_generate", "RawGenerator.table", "data_utils", *GENERATE_600],
            "wrote 600 kaggle rows",
        ),
        (TERMINATED_WRITE, ["argparse", "ArgumentParser.parse_args", "checkpoint", "info", "{mlet}"], "MLET"),
        (TERMINATED_EXIT, ["checkpoint", "info", "{mlet}"], "MLET"),
    ],
    ids=["dlrm_mlet-run", "data_utils-writing", "checkpoint-flags", "checkpoint-exiting"],
)
def test_a_command_started_with_sigterm_ignored_keeps_it_ignored(
    snippet: str, argv: list[str], output: str, checkpoints, tmp_path
) -> None:
    """SIGTERM ignored by the command's parent stays ignored, as an ignored SIGINT does: a SIGTERM during the run
    (in the action, while the flags are read, as the process exits) changes nothing. ``exit_status``,
    ``run_reporting_errors`` and ``dlrm_mlet.main`` set their handler all the same, and the command ended (143)."""
    flags = [flag.format(out=tmp_path, **checkpoints) for flag in argv]
    done = run_snippet(SIGTERM_IGNORED + snippet, flags, timeout=120)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert output in done.stdout
