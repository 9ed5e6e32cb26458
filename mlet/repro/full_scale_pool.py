"""Where a full-scale piece trains its runs: in this process on one device, or in one worker process per device.

Both runners have the same three calls: :meth:`start` a run on an idle worker,
:meth:`wait` for the next run to end, :meth:`close`. :class:`InProcess` trains
in the calling process (one run at a time; the rows it was given).
:class:`Workers` starts one process per ``--device`` entry; each generates its
own copy of the rows on its device (the generator is deterministic: the copies
are checked to have the same checksum) and trains the runs it is sent, one at a
time. Naming a GPU twice runs two workers on it: the device is time-shared, so
one trains while the other evaluates on the host (scikit-learn's AUC over 3.3M
test samples takes seconds), which keeps the GPU busier.

The parent alone decides which run goes where and writes ``sweep.json``; each
worker writes its runs' results JSONs and logs, as the in-process runner does.
A worker does not outlive its piece: SIGTERM ends it as Ctrl-C does (its run's
log says ``interrupted``), and one whose parent was killed ends after its run.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from typing import Any

import torch
from tqdm import tqdm

from mlet.core.errors import UserError
from mlet.core.signals import handling, terminate
from mlet.data.device_click import DeviceRows, kaggle_rows
from mlet.repro import sweep_plan
from mlet.repro.experiments import RunSpec
from mlet.repro.full_scale_run import PROG, Piece, device_name, run_logged

# How often the parent looks whether a silent worker is still alive (seconds).
POLL_S = 2.0


@dataclass(frozen=True)
class DataFlags:
    """What generates a piece's rows (``--rows``, ``--data-seed``, ``--scale``): each worker generates its own."""

    rows: int
    seed: int
    scale: float

    def generate(self, device: torch.device) -> DeviceRows:
        """The rows on ``device``."""
        return kaggle_rows(self.rows, self.seed, self.scale, device)


@dataclass(frozen=True)
class Plan:
    """What every worker's runs share besides the rows: the grid's settings and the rank analysis' bins."""

    settings: sweep_plan.Settings
    edges: list[int]


@dataclass(frozen=True)
class DataInfo:
    """What ``sweep.json`` records of a piece's rows, and the line the piece prints about them."""

    devices: str
    seconds: float
    rows: int
    seed: int
    scale: float
    checksum: str
    description: str

    @classmethod
    def of(cls, rows: DeviceRows, devices: str, scale: float) -> DataInfo:
        """The record of ``rows`` (generated on ``devices`` with tables at ``scale`` of Kaggle's)."""
        return cls(devices, rows.seconds, rows.rows, rows.seed, scale, rows.checksum_text, rows.describe())


@dataclass(frozen=True)
class Ended:
    """A run that ended: 0 or 1 as :func:`run_logged` returns it, and its wall time."""

    spec: RunSpec
    code: int
    seconds: float


class InProcess:
    """Trains the runs in this process, one at a time, on the piece's rows."""

    def __init__(self, piece: Piece) -> None:
        self.piece = piece
        self.queued: RunSpec | None = None
        self.data = DataInfo.of(piece.rows, device_name(piece.device), piece.scale)

    def idle(self) -> bool:
        """Whether a run may start now."""
        return self.queued is None

    def start(self, spec: RunSpec) -> None:
        """Queue ``spec``; it trains in :meth:`wait`."""
        self.queued = spec

    def wait(self) -> Ended:
        """Train the queued run."""
        spec, self.queued = self.queued, None
        assert spec is not None, "wait() without a started run"
        return timed_run(spec, self.piece)

    def close(self) -> None:
        """Nothing to release."""


class Workers:
    """One spawned process per device entry, each with its own rows; runs go to whichever worker is idle."""

    def __init__(self, plan: Plan, devices: list[torch.device], data: DataFlags) -> None:
        context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
        self.ended: Queue = context.Queue()
        self.tasks: list[Queue] = [context.Queue() for _ in devices]
        self.processes: list[SpawnProcess] = [
            context.Process(target=work, args=(plan, str(device), data, tasks, self.ended, index), daemon=True)
            for index, (device, tasks) in enumerate(zip(devices, self.tasks, strict=True))
        ]
        self.devices = devices
        self.busy: dict[int, RunSpec] = {}
        self.dead: set[int] = set()
        self.ready: set[int] = set()
        self.started: dict[int, float] = {}
        self.closed = False
        # started with Ctrl-C ignored (one during a worker's imports would print its traceback); work() restores it
        with handling({signal.SIGINT: signal.SIG_IGN}):
            for process in self.processes:
                process.start()
        try:
            self.data = self.check_ready()
        except BaseException:  # a failed or interrupted start leaves no worker behind
            self.close()
            raise

    def check_ready(self) -> DataInfo:
        """Wait until every worker has its rows; they must be the same rows (a :class:`UserError` otherwise)."""
        infos: dict[int, DataInfo] = {}
        while len(infos) < len(self.processes):
            kind, index, payload = self.receive()
            if kind == "failed":
                raise UserError(f"--device {self.devices[index]}: generating the rows failed: {payload}")
            infos[index] = payload
            self.ready.add(index)
        checksums = {info.checksum for info in infos.values()}
        if len(checksums) > 1:
            raise UserError(f"--device: the devices generated different rows (checksums {sorted(checksums)})")
        first = infos[0]
        names = ", ".join(sorted({device_name(d) for d in self.devices}))
        devices = f"{names} x{len(self.devices)} workers ({', '.join(str(d) for d in self.devices)})"
        slowest = max(info.seconds for info in infos.values())
        return replace(first, devices=devices, seconds=slowest)

    def idle(self) -> bool:
        """Whether a live worker is free."""
        return len(self.busy) + len(self.dead) < len(self.processes)

    def start(self, spec: RunSpec) -> None:
        """Send ``spec`` to the first idle worker."""
        index = next(i for i in range(len(self.processes)) if i not in self.busy and i not in self.dead)
        self.busy[index] = spec
        self.started[index] = time.perf_counter()
        self.tasks[index].put(spec)

    def wait(self) -> Ended:
        """The next run to end; a worker that died mid-run ends its run as failed, with the worker's exit code
        (-9: killed) and the time the run had."""
        while True:
            kind, index, payload = self.receive()
            spec = self.busy.pop(index, None)
            if kind == "ended":
                return payload
            print(f"{PROG}: the worker on {self.devices[index]} stopped: {payload}", flush=True)
            if spec is not None:
                code = self.processes[index].exitcode or 1
                return Ended(spec, code, time.perf_counter() - self.started[index])

    def receive(self) -> tuple[str, int, Any]:
        """The next message of any worker; a worker found dead reports ``failed`` (once)."""
        while True:
            try:
                return self.ended.get(timeout=POLL_S)
            except queue.Empty:
                for index, process in enumerate(self.processes):
                    if index not in self.dead and not process.is_alive():
                        self.dead.add(index)
                        return "failed", index, f"its process ended with exit code {process.exitcode}"

    def close(self) -> None:
        """Stop the workers: an idle one ends when told; a busy one, or one still generating its rows, is
        terminated (it ends as on Ctrl-C); one that does not end within 10 s is killed. Once: later calls do
        nothing."""
        if self.closed:
            return
        self.closed = True
        waiting = [i for i in self.ready if i not in self.busy]
        for index in waiting:
            self.tasks[index].put(None)
        for index, process in enumerate(self.processes):
            process.join(timeout=10 if index in waiting else 0.1)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()


def timed_run(spec: RunSpec, piece: Piece) -> Ended:
    """Train ``spec`` on ``piece`` (:func:`run_logged`); how it ended and its wall time."""
    start = time.perf_counter()
    code = run_logged(spec, piece)
    return Ended(spec, code, time.perf_counter() - start)


def use_device(device: torch.device) -> torch.device:
    """Make ``device`` this process's current CUDA device (Triton kernels launch on the current one, whatever
    their tensors' device); returns it, with its index (``cuda``, the default ``--device``, is the current
    device: torch's ``set_device`` refuses a device without an index)."""
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    return device


def next_task(tasks: Queue) -> RunSpec | None:
    """The next run sent; None when told to stop, or when the parent is gone (killed: nobody would tell)."""
    parent = multiprocessing.parent_process()
    while True:
        try:
            return tasks.get(timeout=POLL_S)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return None


def work(plan: Plan, device_text: str, data: DataFlags, tasks: Queue, ended: Queue, index: int) -> None:
    """A worker process: generate the rows on the device, then train each run it is sent until told to stop."""
    try:
        signal.signal(signal.SIGTERM, terminate)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # started with Ctrl-C ignored (Workers)
        # tqdm's default lock is a named semaphore, which a killed worker would leave to the resource tracker (and
        # its warning on stderr); the runs' bars are off, one process' lock is enough
        tqdm.set_lock(threading.RLock())
        device = use_device(torch.device(device_text))
        rows = data.generate(device)
        piece = Piece(plan.settings, rows, device, plan.edges, data.scale)
        ended.put(("ready", index, DataInfo.of(rows, device_text, data.scale)))
        while (spec := next_task(tasks)) is not None:
            ended.put(("ended", index, timed_run(spec, piece)))
    except (RuntimeError, ValueError) as error:  # generating the rows failed (run_logged catches its own)
        ended.put(("failed", index, f"{type(error).__name__}: {error}"))
    except KeyboardInterrupt:  # Ctrl-C reaches every process, SIGTERM too: the parent records the piece
        return
