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
Each worker has a channel of its own to the parent (a socket pair: its runs in,
its messages out), so a worker killed at any moment, even while it writes, can
hold up no other worker nor the parent: its channel closes with it. (One queue
shared by all workers could: a worker killed while it held the queue's write
lock, which its sending thread takes around each message, left the lock held
for good, and no other worker's message ever arrived.) A worker does not
outlive its piece: SIGTERM ends it as Ctrl-C does (its run's log says
``interrupted``) unless it was started with SIGTERM ignored, and one whose
parent was killed ends after its run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from typing import Any

import torch
from tqdm import tqdm

from mlet.core.errors import UserError
from mlet.core.signals import handling, ignored, terminate
from mlet.data.device_click import DeviceRows, kaggle_rows
from mlet.repro import sweep_plan
from mlet.repro.experiments import RunSpec
from mlet.repro.full_scale_run import PROG, Piece, device_name, run_logged

# How long the parent waits for a worker whose channel closed to end, for its exit code (seconds): the channel
# closes as the process exits, a moment before the exit code is there.
EXIT_S = 10.0


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
        pairs = [context.Pipe() for _ in devices]
        self.channels: list[Connection] = [parent for parent, _ in pairs]
        keep_ctrl_c_ignored = ignored(signal.SIGINT)  # the workers start with it ignored either way (below)
        self.processes: list[SpawnProcess] = [
            context.Process(target=work, args=(plan, str(device), data, child, keep_ctrl_c_ignored), daemon=True)
            for device, (_, child) in zip(devices, pairs, strict=True)
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
        for _, child in pairs:  # the worker's end is the worker's alone: its channel then closes when it ends
            child.close()
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
        with contextlib.suppress(OSError):  # the worker just died: wait() reports it, and its run as failed
            self.channels[index].send(spec)

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
        """The next message of any worker (its index with it); a worker that died reports ``failed`` (once), after
        the messages it sent before: its process ended, or its channel closed, or broke off mid-message (it died
        while it wrote)."""
        live = [index for index in range(len(self.processes)) if index not in self.dead]
        assert live, "receive() with no live worker"
        # a worker's channel and its process' sentinel: the sentinel also tells of a worker whose channel a child
        # of its own still holds open
        ready = wait([self.channels[i] for i in live] + [self.processes[i].sentinel for i in live])
        index = min(i for i in live if self.channels[i] in ready or self.processes[i].sentinel in ready)
        channel = self.channels[index]
        if channel.poll():  # a message, or the end of the channel
            try:
                kind, payload = channel.recv()
                return kind, index, payload
            except (EOFError, OSError):  # closed, or broken off mid-message
                pass
        return "failed", index, f"its process ended with exit code {self.mark_dead(index)}"

    def mark_dead(self, index: int) -> int | None:
        """Worker ``index``, found dead, marked so; its exit code (a worker whose channel broke while it lives on
        is of no more use: it is killed)."""
        self.dead.add(index)
        process = self.processes[index]
        process.join(timeout=EXIT_S)
        if process.is_alive():
            process.kill()
            process.join()
        return process.exitcode

    def close(self) -> None:
        """Stop the workers: an idle one ends when its channel closes; a busy one, or one still generating its
        rows, is terminated (it ends as on Ctrl-C); one that does not end within 10 s is killed. Once: later calls
        do nothing."""
        if self.closed:
            return
        self.closed = True
        waiting = [i for i in self.ready if i not in self.busy]
        for channel in self.channels:
            channel.close()
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


def next_task(channel: Connection) -> RunSpec | None:
    """The next run sent; None once the parent closed the channel (it stops the workers), or is gone (killed: the
    channel closed with it)."""
    try:
        return channel.recv()
    except (EOFError, OSError):  # closed; or reset, the parent gone with a message of ours unread
        return None


def tell(channel: Connection, kind: str, payload: object) -> None:
    """Send the parent a message (``ready``, ``ended``, ``failed``); none where the parent is gone (:func:`next_task`
    then ends the worker)."""
    with contextlib.suppress(OSError):
        channel.send((kind, payload))


def take_signals(keep_ctrl_c_ignored: bool) -> None:
    """A worker's handlers: SIGTERM ends the worker as Ctrl-C does, and Ctrl-C raises again (it started ignored:
    :class:`Workers`), each unless the piece was started with it ignored (a wrapper's ``trap '' TERM``, a shell's
    background job), which the worker then keeps, as the commands do (:func:`~mlet.core.signals.ignored`). SIGTERM's
    comes with the process: spawn starts it by fork and exec, which keep an ignored signal ignored and put a handled
    one back to its default; Ctrl-C's the parent passes on (``keep_ctrl_c_ignored``)."""
    if not ignored(signal.SIGTERM):
        signal.signal(signal.SIGTERM, terminate)
    if not keep_ctrl_c_ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def work(plan: Plan, device_text: str, data: DataFlags, channel: Connection, keep_ctrl_c_ignored: bool) -> None:
    """A worker process: generate the rows on the device, then train each run it is sent until the parent closes
    the channel; tell the parent of each (its messages on ``channel``). Signals: :func:`take_signals`."""
    try:
        take_signals(keep_ctrl_c_ignored)
        # tqdm's default lock is a named semaphore, which a killed worker would leave to the resource tracker (and
        # its warning on stderr); the runs' bars are off, one process' lock is enough
        tqdm.set_lock(threading.RLock())
        device = use_device(torch.device(device_text))
        rows = data.generate(device)
        piece = Piece(plan.settings, rows, device, plan.edges, data.scale)
        tell(channel, "ready", DataInfo.of(rows, device_text, data.scale))
        while (spec := next_task(channel)) is not None:
            tell(channel, "ended", timed_run(spec, piece))
    except (RuntimeError, ValueError) as error:  # generating the rows failed (run_logged catches its own)
        tell(channel, "failed", f"{type(error).__name__}: {error}")
    except KeyboardInterrupt:  # Ctrl-C reaches every process, SIGTERM too: the parent records the piece
        return
