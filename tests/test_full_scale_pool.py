"""full_scale.py's worker pool (:mod:`mlet.repro.full_scale_pool`): runs on workers that die (killed mid-run, or
while they send the parent a message), signals, a killed parent, the device each worker takes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, ROWS, SCALE, SNIPPET_ENV, piece_args, running, wait_for

from mlet.core.signals import handling, terminate
from mlet.repro import full_scale, full_scale_pool, sweep_plan, sweep_runs


@pytest.mark.slow
def test_a_worker_that_dies_fails_its_run_and_the_others_go_on(tmp_path, capsys):
    _, settings = full_scale.parse(piece_args(tmp_path / "run"))
    assert settings is not None
    plan = full_scale_pool.Plan(settings, [10, 100])
    workers = full_scale_pool.Workers(plan, [torch.device("cpu")] * 2, full_scale_pool.DataFlags(ROWS, 1, SCALE))
    try:
        first, second = full_scale.wanted(settings)[:2]
        workers.start(first)
        workers.processes[0].kill()  # mid-run: building and training take seconds
        ended = workers.wait()
        assert (ended.spec, ended.code) == (first, -9) and ended.seconds > 0  # the worker's exit code, its time
        assert sweep_runs.run_status(first, ended.code, settings.run_dir) == "failed (exit code -9)"
        assert "the worker on cpu stopped: its process ended with exit code -9" in capsys.readouterr().out
        assert workers.idle()
        workers.start(second)
        assert workers.busy == {1: second}  # the live worker
        ended = workers.wait()
        assert (ended.spec, ended.code) == (second, 0) and sweep_plan.finished(second, settings.run_dir)
        assert workers.idle() and workers.dead == {0}
    finally:
        workers.close()
    assert not any(p.is_alive() for p in workers.processes)


ORPHANED_WORKERS = """
import json, os, signal, sys
from mlet.repro import full_scale, full_scale_pool
args, settings = full_scale.parse(sys.argv[2:])
data = full_scale_pool.DataFlags(args.rows, args.data_seed, args.scale)
workers = full_scale_pool.Workers(full_scale_pool.Plan(settings, [10]), args.devices, data)
with open(sys.argv[1], "w") as out:
    json.dump([process.pid for process in workers.processes], out)
os.kill(os.getpid(), signal.SIGKILL)  # the parent killed (out of memory, SIGKILL): nothing of its own cleans up
"""


@pytest.mark.slow
def test_idle_workers_end_when_their_parent_is_killed(tmp_path):
    pids = tmp_path / "pids.json"
    argv = piece_args(tmp_path / "run")
    argv[argv.index("--device") + 1] = "cpu,cpu"
    with open(tmp_path / "err.txt", "w") as err:  # not a pipe: a worker left running would hold it open
        command = [sys.executable, "-c", ORPHANED_WORKERS, str(pids), *argv]
        code = subprocess.call(command, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT, env=SNIPPET_ENV, timeout=300)
    assert code == -signal.SIGKILL, (tmp_path / "err.txt").read_text()
    workers = json.loads(pids.read_text())
    try:
        wait_for(lambda: not any(running(pid) for pid in workers), "the workers to end", timeout=30)
    finally:
        for pid in workers:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("given", "current", "made"), [("cuda", 1, "cuda:1"), ("cuda:0", 1, "cuda:0"), ("cpu", 1, "cpu")]
)
def test_the_default_device_becomes_the_current_cuda_device(monkeypatch, given, current, made):
    """``--device cuda`` (the default) failed at once on a GPU machine: torch's set_device refuses a device
    without an index (checked here by torch's own index check, as set_device makes it)."""
    from torch.cuda._utils import _get_device_index

    chosen = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: chosen.append(_get_device_index(device)))
    assert full_scale_pool.use_device(torch.device(given)) == torch.device(made)
    assert chosen == ([torch.device(made).index] if made != "cpu" else [])


TWO_RUNS = """
# Two runs on two CPU workers; prints their exit codes. Run as a file: each spawned worker imports it again, as
# __mp_main__, and there its sends go through send_or_die (Connection._send_bytes: CPython's, under both the
# socket and the pipe of a queue), which MODE turns into a worker that dies while it sends.
import multiprocessing, os, pickle, signal, struct, sys, threading
from multiprocessing.connection import Connection
from pathlib import Path

MODE, FOLDER = sys.argv[1], Path(sys.argv[2])
send_bytes = Connection._send_bytes


def first(name):
    # whether this worker is the first to get here (it makes the file FOLDER/name)
    try:
        os.close(os.open(FOLDER / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def send_or_die(self, buf):
    message = pickle.loads(buf)
    kind = message[0] if isinstance(message, tuple) else None
    if MODE == "stalled" and kind == "ready" and not first("ready"):
        # the second worker ready: its message written, the sender stops before it lets go of the channel (as when
        # preempted on a loaded machine) until the parent kills the worker (the CI hang: a queue's lock left held)
        (FOLDER / "stalled").write_text(str(os.getpid()))
        send_bytes(self, buf)
        threading.Event().wait()
    if MODE == "half" and kind == "ended" and first("ended"):
        # the first run to end: half of its message written, then the worker killed (out of memory, kill -9)
        self._send(struct.pack("!i", len(buf)) + bytes(buf[: len(buf) // 2]))
        os.kill(os.getpid(), signal.SIGKILL)
    send_bytes(self, buf)


if multiprocessing.current_process().name != "MainProcess":
    Connection._send_bytes = send_or_die
elif __name__ == "__main__":
    import torch
    from mlet.repro import full_scale, full_scale_pool

    args, settings = full_scale.parse(sys.argv[3:])
    if MODE == "ignoring":  # a wrapper's `trap '' TERM` in a shell's background job
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    data = full_scale_pool.DataFlags(args.rows, args.data_seed, args.scale)
    workers = full_scale_pool.Workers(full_scale_pool.Plan(settings, [10]), [torch.device("cpu")] * 2, data)
    try:
        if MODE == "stalled":
            os.kill(int((FOLDER / "stalled").read_text()), signal.SIGKILL)
        for spec in full_scale.wanted(settings)[:2]:  # one on each worker (the dead one's death not seen yet)
            workers.start(spec)
        if MODE == "ignoring":
            for process in workers.processes:
                os.kill(process.pid, signal.SIGTERM)
                os.kill(process.pid, signal.SIGINT)
        print(sorted(workers.wait().code for _ in range(2)))
    finally:
        workers.close()
"""
HUNG_S = 300  # two small runs take 10 to 40 s; below pytest's timeout (600 s), to fail with the message


def two_runs(tmp_path, mode: str) -> list[int]:
    """The exit codes of :data:`TWO_RUNS`' two runs in ``mode``; fails the test, not hangs it, when the piece never
    reports them."""
    script = tmp_path / "two_runs.py"
    script.write_text(TWO_RUNS)
    command = [sys.executable, str(script), mode, str(tmp_path), *piece_args(tmp_path / "run")]
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:  # files: a worker left running would hold a pipe open
        piece = subprocess.Popen(
            command, stdout=stdout, stderr=stderr, cwd=ROOT, env=SNIPPET_ENV, start_new_session=True
        )
    try:
        code = piece.wait(timeout=HUNG_S)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        with contextlib.suppress(ProcessLookupError):  # the piece's workers too, whatever happened
            os.killpg(piece.pid, signal.SIGKILL)
    assert code is not None, f"{mode}: the runs were not both reported within {HUNG_S} s: the piece hung"
    assert code == 0, err.read_text()
    return json.loads(out.read_text().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stalled", "half"])
def test_a_worker_killed_while_it_sends_holds_up_no_other(tmp_path, mode):
    # stalled: killed after its "ready" went out, before it let go of the channel (with one queue for all workers,
    # its lock stayed held: the other worker's "ended" never came, and the parent waited for good); half: killed
    # half-way through its "ended" (the parent waited for the rest)
    assert two_runs(tmp_path, mode) == [-9, 0]


@pytest.mark.slow
def test_workers_keep_ignored_signals_ignored(tmp_path):
    # a piece started with SIGTERM and Ctrl-C ignored (`trap '' TERM` in a background job, nohup-like launchers):
    # its workers train on through both
    assert two_runs(tmp_path, "ignoring") == [0, 0]


@pytest.mark.parametrize("started", ["ignored", "handled"])
def test_a_worker_sets_its_handlers_unless_the_signal_was_ignored(started):
    ignoring = started == "ignored"
    given = signal.SIG_IGN if ignoring else signal.SIG_DFL
    with handling({signal.SIGTERM: given, signal.SIGINT: signal.SIG_IGN}):  # Workers starts it with Ctrl-C ignored
        full_scale_pool.take_signals(keep_ctrl_c_ignored=ignoring)
        assert signal.getsignal(signal.SIGTERM) is (signal.SIG_IGN if ignoring else terminate)
        assert signal.getsignal(signal.SIGINT) is (signal.SIG_IGN if ignoring else signal.default_int_handler)
