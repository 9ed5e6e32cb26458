"""A signal to a script in scripts/ alone (``kill PID``, a batch system's cancel) reaches the command it runs
(scripts/lib/run_child.sh): the command says its one line, the script ends with its status, nothing is left running.

Before, bash died at once without a word and the command ran on, orphaned (SIGINT: bash waited for the command,
which never got it). The scripts run a stand-in for Python (:data:`FAKE`): well under a second a test.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, kill_running, wait_for

FAKE = """#!{python}
# A stand-in for a script's Python (or mypy): notes each call; the SLOW one waits for a signal, says its line as our
# commands do, and ends with 128 + the signal's number (FAKE_EXIT: another status, as a command that finished).
import os, signal, sys, time
from pathlib import Path
marks = Path(os.environ["MARKS"])
key = sys.argv[1] if len(sys.argv) > 1 else Path(sys.argv[0]).name
with open(marks / "calls", "a") as calls:
    calls.write(key + "\\n")
if key != os.environ["SLOW"]:
    sys.exit(0)
got = []
for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(number, lambda number, frame: got.append(signal.Signals(number).name))
(marks / "pid.tmp").write_text(str(os.getpid()))
(marks / "pid.tmp").rename(marks / "pid")
if os.environ.get("FAKE_STOP"):  # as a command that reads the terminal from a background process group (SIGTTIN)
    os.kill(os.getpid(), signal.SIGSTOP)
while not got:
    time.sleep(0.01)
time.sleep(0.3)  # a signal passed on twice would come again by now
(marks / "signals").write_text(" ".join(got))
print("the command's last line")  # to the script's log, where it tees one
print(f"{{key}}: " + ("interrupted" if got[0] == "SIGINT" else f"terminated ({{got[0]}})"), file=sys.stderr)
sys.exit(int(os.environ.get("FAKE_EXIT", 128 + signal.Signals[got[0]])))
"""

SCRIPTS = {  # script: (its arguments, the call that runs long)
    "quickstart.sh": (["{tmp}/run", "300"], "dlrm_mlet.py"),
    "criteo_terabyte.sh": ([], "dlrm_mlet.py"),
    "reproduce.sh": (["kaggle", "{tmp}/train.txt"], "scripts/sweep.py"),
    "setup.sh": ([], "-m"),  # pip
    "test.sh": ([], "mypy"),
}


def repository_copy(tmp: Path, fake: Path, installed: bool) -> Path:
    """A repository with scripts/setup.sh, test.sh and lib/, whose .venv's python, ruff and mypy are ``fake``;
    ``installed``: setup.sh finds the stamp of the requirements it installed (and installs nothing)."""
    repo = tmp / "repo"
    shutil.copytree(ROOT / "scripts" / "lib", repo / "scripts" / "lib")
    for name in ("scripts/setup.sh", "scripts/test.sh", "requirements.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, repo / name)
    (repo / ".venv" / "bin").mkdir(parents=True)
    for tool in ("python", "ruff", "mypy"):
        shutil.copy(fake, repo / ".venv" / "bin" / tool)
    if installed:
        stamp = hashlib.sha256((repo / "requirements.txt").read_bytes() + (repo / "pyproject.toml").read_bytes())
        (repo / ".venv" / ".requirements.sha256").write_text(stamp.hexdigest() + "\n")
    return repo


def start(
    script: str, tmp: Path, env: dict[str, str] | None = None, ignoring: signal.Signals | None = None
) -> tuple[subprocess.Popen, Path]:
    """``bash scripts/SCRIPT`` in its own session (as a terminal's job) with the :data:`FAKE` for Python, started
    with signal ``ignoring`` ignored; the process and the folder of the fake's marks, once the long call runs."""
    marks = tmp / "marks"
    marks.mkdir()
    fake = tmp / "fake_python"
    fake.write_text(FAKE.format(python=sys.executable))
    fake.chmod(0o755)
    argv, slow = SCRIPTS[script]
    root = ROOT
    if script in ("setup.sh", "test.sh"):
        root = repository_copy(tmp, fake, installed=script == "test.sh")  # test.sh: on to ruff and mypy
    (tmp / "train.txt").write_text("stand-in: the fake never reads it\n")
    base = {k: v for k, v in os.environ.items() if k not in ("RUN_DIR", "FAKE_EXIT", "FAKE_STOP")}
    process = subprocess.Popen(
        ["bash", str(root / "scripts" / script), *(arg.format(tmp=tmp) for arg in argv)],
        cwd=tmp,
        env={**base, "PY": str(fake), "MARKS": str(marks), "SLOW": slow, "RUN_DIR": str(tmp / "run"), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=None if ignoring is None else lambda: signal.signal(ignoring, signal.SIG_IGN),
    )
    try:
        wait_for(lambda: (marks / "pid").exists() or process.poll() is not None, f"{slow} to start", timeout=15)
    except BaseException:
        kill_running([process])
        raise
    assert process.poll() is None, process.communicate()
    return process, marks


def ended(process: subprocess.Popen, marks: Path) -> tuple[int, list[str], int]:
    """The script's status and stderr's lines once it ends, and the long call's pid (killed if it ran on)."""
    pid = int((marks / "pid").read_text())
    try:
        _, err = process.communicate(timeout=10)
    finally:
        kill_running([process])
        if alive(pid):  # an orphan, left by the script
            os.kill(pid, signal.SIGKILL)
    return process.returncode, err.splitlines(), pid


def state(pid: int) -> str:
    """Process ``pid``'s state letter (R, S, T for stopped, Z for ended but not waited for), or "" where gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs, or is stopped (a zombie counts as ended)."""
    return state(pid) not in ("", "Z")


LINES = {signal.SIGTERM: "terminated (SIGTERM)", signal.SIGINT: "interrupted", signal.SIGHUP: "terminated (SIGHUP)"}


@pytest.mark.parametrize("signum", list(LINES), ids=lambda signum: signum.name)
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_a_signal_to_the_script_alone_reaches_its_command(script: str, signum: signal.Signals, tmp_path) -> None:
    process, marks = start(script, tmp_path)
    os.kill(process.pid, signum)
    status, err, pid = ended(process, marks)
    assert (marks / "signals").read_text() == signum.name  # passed on, once
    assert status == 128 + signum
    slow = SCRIPTS[script][1]
    assert [line for line in err if ": " in line] == [f"{slow}: {LINES[signum]}"]  # the command's line alone
    assert not alive(pid)
    if script == "reproduce.sh":  # stopped after the sweep, as before: no summary
        assert (marks / "calls").read_text().splitlines() == ["scripts/sweep.py"]


@pytest.mark.parametrize("script", ["quickstart.sh", "reproduce.sh"])
def test_a_terminals_ctrl_c_reaches_the_command_once(script: str, tmp_path) -> None:
    """Ctrl-C at a terminal: SIGINT to the script's process group. The command gets it once (the script passes it
    on; the terminal's own does not reach it), says one line, and the log it tees gets its last line."""
    process, marks = start(script, tmp_path)
    os.killpg(process.pid, signal.SIGINT)
    status, err, pid = ended(process, marks)
    assert ((marks / "signals").read_text(), status) == ("SIGINT", 130)
    assert [line for line in err if ": " in line] == [f"{SCRIPTS[script][1]}: interrupted"]
    assert not alive(pid)
    if script == "quickstart.sh":
        assert (tmp_path / "run" / "baseline_d4.log").read_text() == "the command's last line\n"


def test_a_command_that_finishes_as_sigterm_comes_still_stops_the_script_with_its_line(tmp_path) -> None:
    """The sweep ends with 0 though SIGTERM came (it had just finished): the script stops all the same, before the
    summary, and says the line nobody else said, with status 143."""
    process, marks = start("reproduce.sh", tmp_path, env={"FAKE_EXIT": "0"})
    os.kill(process.pid, signal.SIGTERM)
    status, err, _ = ended(process, marks)
    assert (status, err[-1]) == (143, "reproduce.sh: terminated (SIGTERM)")
    assert (marks / "calls").read_text().splitlines() == ["scripts/sweep.py"]


def test_a_signal_the_script_was_started_with_ignored_stays_ignored(tmp_path) -> None:
    """``trap '' TERM`` in a wrapper: SIGTERM to the script changes nothing (bash sets no trap on a signal ignored
    when it started, and the command inherits it ignored); the script still ends on Ctrl-C."""
    process, marks = start("quickstart.sh", tmp_path, ignoring=signal.SIGTERM)
    os.kill(process.pid, signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=1)
    assert not (marks / "signals").exists()
    os.kill(process.pid, signal.SIGINT)
    status, _, _ = ended(process, marks)
    assert ((marks / "signals").read_text(), status) == ("SIGINT", 130)


def test_sigterm_reaches_a_command_stopped_as_it_read_the_terminal(tmp_path) -> None:
    """A command that reads the terminal is stopped (SIGTTIN: its process group is not the terminal's): SIGTERM to
    the script still ends it (passed on with SIGCONT); before, the script waited for it for good."""
    process, marks = start("quickstart.sh", tmp_path, env={"FAKE_STOP": "1"})
    pid = int((marks / "pid").read_text())
    wait_for(lambda: state(pid) == "T", "the command to stop", timeout=10)
    os.kill(process.pid, signal.SIGTERM)
    status, err, _ = ended(process, marks)
    assert ((marks / "signals").read_text(), status, err[-1]) == ("SIGTERM", 143, "dlrm_mlet.py: terminated (SIGTERM)")
