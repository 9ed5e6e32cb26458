"""The commands on Ctrl-C and SIGTERM: while their modules import, in the run, and pressed again as they exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from helpers import ROOT, TINY

import checkpoint
import dlrm_mlet
from mlet.repro.sweep import RESUMABLE

IMPATIENT_USER = """
import atexit, os, signal, sys


class SecondCtrlC:  # stderr that sends the process a second Ctrl-C right after the interrupted line
    def __init__(self, inner):
        self.inner = inner

    def write(self, text):
        written = self.inner.write(text)
        if "interrupted" in text:
            os.kill(os.getpid(), signal.SIGINT)
        return written

    def flush(self):
        self.inner.flush()


sys.stderr = SecondCtrlC(sys.stderr)
atexit.register(os.kill, os.getpid(), signal.SIGINT)  # and a third one as the interpreter exits
"""
"""Ctrl-C pressed again as the command reports the first one and as it exits: CPython would turn the exit status
130 into death by SIGINT (-2) if either reached the command."""

INTERRUPTED_IMPORT = (
    IMPATIENT_USER
    + """
import time
os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while torch imports, the command's main not yet reached
time.sleep(30)
"""
)

SWALLOWED_IMPORT = """
import os, signal, time
try:  # as a library's import that catches everything (numpy's, under torch's): a KeyboardInterrupt would be lost
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while torch imports
    time.sleep(30)
except BaseException:
    pass
"""

INTERRUPTED_RUN = (
    IMPATIENT_USER
    + """
import importlib
command = importlib.import_module(sys.argv[1])
setattr(command, sys.argv[2], lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGINT))  # Ctrl-C in the run
sys.argv = [sys.argv[1], *sys.argv[3:]]
command.cli()
"""
)


def run_command_as_from_a_terminal(argv: list[str], pythonpath: str) -> subprocess.CompletedProcess:
    """``python ARGV`` in the project's folder with Ctrl-C not ignored (as from a terminal), its output captured."""
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": pythonpath},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.parametrize(
    ("command", "prog"),
    [
        (["dlrm_mlet.py", "--help"], dlrm_mlet.PROG),
        (["-c", "import dlrm_mlet; dlrm_mlet.cli()"], dlrm_mlet.PROG),  # as the dlrm-mlet console command starts
        (["checkpoint.py", "info", "x.pt"], checkpoint.PROG),
        (["data_utils.py", "--help"], "data_utils.py"),
        *[
            ([f"scripts/{name}", "--help"], name)
            for name in ("sweep.py", "full_scale.py", "summarize.py", "analyze_rank.py")
        ],
    ],
)
def test_ctrl_c_while_the_modules_import_ends_as_in_the_run(command: list[str], prog: str, tmp_path) -> None:
    """A stand-in torch, first on the path, sends the process SIGINT as it is imported: the same one line and
    exit status 130 as a Ctrl-C later in the run (``main``), not a traceback; Ctrl-C pressed twice more as the
    line is written and as the interpreter exits changes neither."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(INTERRUPTED_IMPORT)
    done = run_command_as_from_a_terminal(command, f"{tmp_path}:{ROOT}")
    assert (done.returncode, done.stderr, done.stdout) == (130, f"{prog}: interrupted\n", "")


@pytest.mark.parametrize(
    ("command", "prog"),
    [
        (["dlrm_mlet.py", "--help"], dlrm_mlet.PROG),
        (["checkpoint.py", "info", "x.pt"], checkpoint.PROG),
        (["data_utils.py", "--help"], "data_utils.py"),
    ],
)
def test_sigterm_while_the_modules_import_ends_as_in_the_run(command: list[str], prog: str, tmp_path) -> None:
    """A stand-in torch sends the process SIGTERM as it is imported (a batch system's kill in the first seconds):
    the run's one line and status 143, where the process used to die with no line at all."""
    (tmp_path / "torch").mkdir()
    killed = INTERRUPTED_IMPORT.replace("SIGINT)  # Ctrl-C while torch imports", "SIGTERM)  # while torch imports")
    assert killed != INTERRUPTED_IMPORT
    (tmp_path / "torch" / "__init__.py").write_text(killed)
    done = run_command_as_from_a_terminal(command, f"{tmp_path}:{ROOT}")
    assert (done.returncode, done.stderr, done.stdout) == (143, f"{prog}: terminated (SIGTERM)\n", "")


@pytest.mark.parametrize(
    ("command", "prog"),
    [(["dlrm_mlet.py", "--help"], dlrm_mlet.PROG), (["checkpoint.py", "info", "x.pt"], checkpoint.PROG)],
)
def test_ctrl_c_while_the_modules_import_ends_even_where_the_import_catches_it(
    command: list[str], prog: str, tmp_path
) -> None:
    """A stand-in torch that catches everything its import raises, as the real one's import of numpy can: the
    Ctrl-C still ends the command with the one line and status 130 (a KeyboardInterrupt there was lost, and the
    command went on: --help printed, status 0)."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(SWALLOWED_IMPORT)
    done = run_command_as_from_a_terminal(command, f"{tmp_path}:{ROOT}")
    assert (done.returncode, done.stderr, done.stdout) == (130, f"{prog}: interrupted\n", "")


@pytest.mark.parametrize(
    ("module", "interrupted", "argv", "line", "repeats"),
    [
        ("dlrm_mlet", "validate", [], "dlrm_mlet.py: interrupted", 3),  # main's own Ctrl-C handling
        (
            "data_utils",
            "generate_command",
            ["generate", "kaggle", "--rows=1", "--out=x"],
            "data_utils.py: interrupted",
            1,
        ),
        ("mlet.repro.sweep", "run_command", ["--run-dir=x"], "sweep.py: " + RESUMABLE, 1),  # run_reporting_errors
        ("mlet.repro.summary", "summarize_sweep", ["."], "summarize.py: interrupted", 1),  # main catches no Ctrl-C
    ],
)
def test_ctrl_c_pressed_again_as_the_command_exits_keeps_status_130(
    module: str, interrupted: str, argv: list[str], line: str, repeats: int, tmp_path
) -> None:
    """Ctrl-C in the run, then again right after the command's interrupted line and once more as the interpreter
    exits (an impatient user): every time exit status 130 and the one line, not death by SIGINT (-2) with a
    traceback, which CPython gives a process whose Ctrl-C escapes as it exits."""
    (tmp_path / "interrupted_run.py").write_text(INTERRUPTED_RUN)
    for _ in range(repeats):
        done = run_command_as_from_a_terminal([str(tmp_path / "interrupted_run.py"), module, interrupted, *argv], ROOT)
        assert (done.returncode, done.stderr) == (130, f"{line}\n"), done.stderr


def test_ctrl_c_in_the_run_gives_the_line_and_status_of_ctrl_c_in_the_imports(monkeypatch, capsys) -> None:
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(dlrm_mlet, "validate", interrupted)
    assert dlrm_mlet.main([*TINY]) == 130
    assert capsys.readouterr().err == f"{dlrm_mlet.PROG}: interrupted\n"
    # main called in-process leaves Ctrl-C working for its caller (only the command's exit ignores it)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
