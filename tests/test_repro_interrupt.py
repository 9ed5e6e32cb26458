"""The sweep on Ctrl-C and SIGTERM: no run starts after it, and the runs in flight end (a harder signal for those
that outlast one) and are recorded. Real ``dlrm_mlet.py`` runs; every wait is bounded and fails saying what it
waited for, and no run is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import ROOT, kill_running, wait_for

from mlet.core.signals import Terminated, handling, terminate
from mlet.repro import sweep, sweep_plan, sweep_runs
from mlet.repro.experiments import Config, RunSpec

TRAIN = ["--data-generation=synthetic", "--arch-embedding-size=20-10", "--data-size=256", "--mini-batch-size=32",
         "--nepochs=100000", "--progress=false", "--print-freq=1"]  # fmt: skip
"""Training flags of a run that trains until it is stopped."""


def trains(log: Path) -> bool:
    """Whether the run logging to ``log`` has trained a step."""
    return log.exists() and "Finished training it" in log.read_text()


def ended_by_ctrl_c(run_dir: Path, jobs: int) -> tuple[int, list[str], float]:
    """Start a real sweep of 6 runs (``jobs`` at a time) in its own process group, send the group Ctrl-C as a
    terminal does once the first results JSON is written, and return its exit code, its stderr's lines and how
    many results JSONs there were just after the signal."""
    argv = [sys.executable, str(ROOT / "scripts" / "sweep.py"), "--run-dir", str(run_dir), "--protocols", "paper",
            "--baseline-dims", "2", "4", "--mlet-dims", "--seeds", "1", "2", "3", "--optimizers", "sgd",
            "--jobs", str(jobs), "--", "--data-generation=synthetic", "--arch-embedding-size=20-10",
            "--data-size=256", "--mini-batch-size=32", "--progress=false"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sweep_process = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group, as a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not ignored (as in a shell's `&`)
    )
    try:
        deadline = time.monotonic() + 120
        while not list((run_dir / "results").glob("*.json")):
            assert sweep_process.poll() is None and time.monotonic() < deadline, sweep_process.stderr
            time.sleep(0.02)
        os.killpg(sweep_process.pid, signal.SIGINT)
        at_signal = len(list((run_dir / "results").glob("*.json")))
        _, err = sweep_process.communicate(timeout=60)
    finally:
        if sweep_process.poll() is None:
            os.killpg(sweep_process.pid, signal.SIGKILL)
    return sweep_process.returncode, err.strip().splitlines(), at_signal


@pytest.mark.slow
def test_ctrl_c_starts_no_more_runs_and_records_what_finished(tmp_path) -> None:
    jobs = 2
    code, err, at_signal = ended_by_ctrl_c(tmp_path, jobs)
    assert code == 130 and err[-1] == "sweep.py: " + sweep.RESUMABLE, err
    results = {p.stem for p in (tmp_path / "results").glob("*.json")}
    started = {p.stem for p in (tmp_path / "logs").glob("*.log")}
    # the runs in flight at the signal may end (finished or interrupted); no other run starts
    assert len(started) <= at_signal + jobs < 6 and len(results) <= at_signal + jobs, (started, results, at_signal)
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert set(record["runs"]) == started
    for name, run in record["runs"].items():
        # finished: with its exit code when the Ctrl-C came after its results were written
        assert run["status"].startswith("finished") == (name in results), (name, run)
        assert run["status"].startswith(("finished", "interrupted")), (name, run)
    session = record["sessions"][-1]
    assert (session["finished"], session["failed"], session["interrupted"]) == (len(results), 0, True)


@pytest.mark.slow
def test_the_runner_interrupts_its_runs_and_starts_no_more(tmp_path) -> None:
    # what the sweep does to runs still going GRACE_S after its Ctrl-C (one sent to the sweep alone: kill -INT)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # not ignored (a shell's `&`): nor in the run
    try:
        first, second = interrupted_run(tmp_path)
    finally:
        signal.signal(signal.SIGINT, old)
    # 130; -2 (killed by SIGINT) at times, after its one line: CPython's exit status once a KeyboardInterrupt went
    # through code run by PyRun_String, even if dlrm_mlet.py caught it afterwards
    assert first in (130, -signal.SIGINT) and (tmp_path / "a.log").read_text().endswith("dlrm_mlet.py: interrupted\n")
    assert second is None and not (tmp_path / "b.log").exists()


def interrupted_run(tmp_path: Path) -> tuple[int | None, int | None]:
    """A subprocess runner's endless run, interrupted once it trains (its exit code), and the run it is asked for
    next (None: not started). A run that outlasts its SIGINT by a minute fails the test, killed."""
    runner = sweep_runs.subprocess_runner(threads=1)
    spec = RunSpec("sgd", Config(2), 0.2, 1)
    endless = [*TRAIN, "--arch-sparse-feature-size=2", "--arch-mlp-bot=13-2"]
    log = tmp_path / "a.log"
    codes: list[int | None] = []
    # a daemon: one waiting on a run that never ends kept pytest from exiting (the suite once hung so)
    thread = threading.Thread(target=lambda: codes.append(runner(spec, endless, log)), daemon=True)
    thread.start()
    try:
        wait_for(lambda: trains(log) or not thread.is_alive(), "the run to train")
        assert thread.is_alive(), log.read_text()
    finally:
        runner.interrupt()
        thread.join(timeout=60)
        if thread.is_alive():
            kill_running(list(runner.running))
            pytest.fail(f"the run did not end within 60 s of its SIGINT; its log ends: {log.read_text()[-300:]}")
    return codes[0], runner(spec, endless, tmp_path / "b.log")


@pytest.mark.slow
def test_sigterm_to_a_background_sweep_ends_its_runs_that_ignore_ctrl_c(tmp_path) -> None:
    # `sweep.py ... &` in a script: the sweep and its runs start with SIGINT ignored, and kill -TERM to the sweep
    # waited for its runs to end on their own (here: never), as it passed them SIGINT
    argv = ["--run-dir", str(tmp_path), "--protocols", "paper", "--baseline-dims", "2", "--mlet-dims", "--seeds",
            "1", "--optimizers", "sgd", "--mlp-bot-prefix", "13", "--", *TRAIN]  # fmt: skip
    settings = sweep.settings_from_args(sweep.build_parser().parse_args(argv))
    (spec,) = sweep_plan.initial_specs(settings)
    log = tmp_path / "logs" / f"{spec.name}.log"
    runner = sweep_runs.subprocess_runner(threads=1)

    def terminate_once_training() -> None:
        deadline = time.monotonic() + 120
        while not trains(log) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    signaller = threading.Thread(target=terminate_once_training, daemon=True)
    watchdog = threading.Timer(90, lambda: kill_running(list(runner.running)))  # the test fails; no run is left
    totals = {"finished": 0, "failed": 0}
    start = time.monotonic()
    with handling({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: terminate}), pytest.raises(Terminated):
        signaller.start()
        watchdog.start()
        sweep_runs.run_specs([spec], settings, runner, sweep_runs.Manifest(settings), None, "grid", totals)
    watchdog.cancel()
    seconds = time.monotonic() - start
    status = json.loads((tmp_path / "sweep.json").read_text())["runs"][spec.name]["status"]
    assert status == "interrupted (exit code 143)" and seconds < 90, (status, seconds)
    assert log.read_text().endswith("dlrm_mlet.py: terminated (SIGTERM)\n") and totals["interrupted"]


class Stubborn:
    """A runner whose run ends only at the signal ``ends_on``; records the signals it is sent."""

    def __init__(self, ends_on: int) -> None:
        self.ends_on, self.sent, self.ended = ends_on, [], threading.Event()

    def __call__(self, spec: RunSpec, argv: list[str], log: Path) -> int:
        self.ended.wait(10)
        return -self.ends_on

    def interrupt(self, signum: int) -> None:
        self.sent.append(signum)
        if signum == self.ends_on:
            self.ended.set()


@pytest.mark.parametrize(
    ("first", "ends_on", "sent"),
    [
        (signal.SIGINT, signal.SIGINT, [signal.SIGINT]),
        (signal.SIGINT, signal.SIGTERM, [signal.SIGINT, signal.SIGTERM]),
        (signal.SIGINT, signal.SIGKILL, [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]),
        (signal.SIGTERM, signal.SIGKILL, [signal.SIGTERM, signal.SIGTERM, signal.SIGKILL]),
    ],
)
def test_runs_that_outlast_the_signal_get_sigterm_then_sigkill(first, ends_on, sent, monkeypatch) -> None:
    monkeypatch.setattr(sweep_runs, "GRACE_S", 0.01)
    monkeypatch.setattr(sweep_runs, "STUBBORN_S", 0.05)
    runner = Stubborn(ends_on)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(runner, RunSpec("sgd", Config(2), 0.2, 1), [], Path())
        sweep_runs.stop_runs({future}, runner, first)
        assert future.done() and runner.sent == sent
