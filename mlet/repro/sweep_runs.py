"""How a sweep runs its runs: ``dlrm_mlet.py`` child processes on worker threads, ``RUN_DIR/sweep.json``, Ctrl-C.

``mlet.repro.sweep`` decides which runs (and widens the grid); this module
runs a batch of them ``--jobs`` at a time and records each in ``sweep.json``
(``full_scale.py`` records its pieces there too). On Ctrl-C no further run
starts, the runs in flight end and are recorded, and the sweep ends
(docs/reproducing.md).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mlet.core.files import replace_atomically
from mlet.core.signals import Terminated, handling, terminate
from mlet.repro.experiments import RunSpec
from mlet.repro.run_results import sweep_record
from mlet.repro.sweep_plan import Settings, readable_results, result_path, run_argv, set_aside_damaged

Runner = Callable[[RunSpec, list[str], Path], int | None]
"""Runs one spec with its ``dlrm_mlet.py`` flags and log; its exit code, or None when it did not start (the
sweep was interrupted). May have an ``interrupt(signum)`` method: no run starts after it, the running ones get
the signal."""
POLL_S = 0.2
"""How often the sweep looks for Ctrl-C while waiting for runs (seconds)."""
GRACE_S = 3.0
"""After Ctrl-C, how long the runs in flight have to end on their own (a terminal's Ctrl-C reaches them too)
before the sweep sends them one itself."""
STUBBORN_S = 30.0
"""How long a run has to end after each signal the sweep sends it before it sends the next, harder one."""


# -- running ----------------------------------------------------------------------------


class SubprocessRunner:
    """Runs ``dlrm_mlet.py`` in a child process with ``threads`` torch threads, output to the log; returns its
    exit code. :meth:`interrupt` starts no more runs and sends a signal (Ctrl-C's SIGINT, SIGTERM, SIGKILL) to the
    ones running."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen] = set()
        self.stopped = False

    def __call__(self, spec: RunSpec, argv: list[str], log: Path) -> int | None:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        with contextlib.ExitStack() as stack:
            with self.lock:  # interrupt() either sees this process or keeps it from starting
                if self.stopped:
                    return None
                out = stack.enter_context(open(log, "w"))
                out.write(f"# {spec.name}: {sys.executable} -m dlrm_mlet {' '.join(argv)}\n")
                out.flush()
                process = subprocess.Popen(
                    [sys.executable, "-m", "dlrm_mlet", *argv], stdout=out, stderr=subprocess.STDOUT, env=env
                )
                self.running.add(process)
            try:
                return process.wait()
            finally:
                with self.lock:
                    self.running.discard(process)

    def interrupt(self, signum: int = signal.SIGINT) -> None:
        """No run starts from now on; ``signum`` to those running (on SIGINT and SIGTERM they end as
        ``dlrm_mlet.py`` does on Ctrl-C)."""
        with self.lock:
            self.stopped = True
            for process in self.running:
                if process.poll() is None:
                    process.send_signal(signum)


def subprocess_runner(threads: int) -> SubprocessRunner:
    """The runner of real runs: :class:`SubprocessRunner`."""
    return SubprocessRunner(threads)


class Manifest:
    """``RUN_DIR/sweep.json``: settings, sessions (start, end, wall time) and each run's status; written atomically."""

    def __init__(self, settings: Settings) -> None:
        self.path = Path(settings.run_dir) / "sweep.json"
        self.lock = threading.Lock()
        old = sweep_record(settings.run_dir) or {}
        self.data = {"settings": settings.to_dict(), "sessions": old.get("sessions", []), "runs": old.get("runs", {})}
        self.session: dict[str, object] = {
            "started": now(),
            "host": os.uname().nodename,
            "cpus": os.cpu_count(),
            "load_average_start": os.getloadavg(),
        }
        self.data["sessions"].append(self.session)
        self.start = time.perf_counter()
        self.write()

    def record(self, spec: RunSpec, status: str, seconds: float) -> None:
        """Note how a run ended."""
        with self.lock:
            self.data["runs"][spec.name] = {"status": status, "seconds": round(seconds, 2), "finished": now()}
            self.write()

    def finish(self, counts: dict) -> None:
        """Close this session's entry."""
        with self.lock:
            self.session.update(
                ended=now(),
                wall_seconds=round(time.perf_counter() - self.start, 1),
                load_average_end=os.getloadavg(),
                **counts,
            )
            self.write()

    def write(self) -> None:
        """Replace the file atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.data, indent=1) + "\n"
        replace_atomically(self.path, lambda tmp: tmp.write_text(text))


def now() -> str:
    """UTC time, to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def run_status(spec: RunSpec, code: int | None, run_dir: Path, interrupted: bool = False) -> str:
    """How a run ended, for ``sweep.json``, as its files tell: finished when its results JSON was written and
    reads as one (diverged, when its test AUC is not finite; with its exit code, when it was stopped or failed
    after writing them: the next session takes them as done), else failed or interrupted (``interrupted``: it
    ended after the sweep's Ctrl-C). ``code``: the run's exit code; None for a run in this process
    (full_scale.py) that Ctrl-C cut short, which has none. A run starts only without a readable results JSON
    (:func:`~mlet.repro.sweep_plan.set_aside_damaged`), so one found now is its own."""
    results = readable_results(run_dir, [result_path(spec, run_dir)])
    if not results:
        ended = "interrupted" if interrupted else "failed"
        return ended if code is None else f"{ended} (exit code {code})"
    notes = [] if math.isfinite(results[0].test_auc) else ["diverged: non-finite metrics"]
    if code:
        notes.append(f"exit code {code} after writing its results")
    return "finished" + (f" ({'; '.join(notes)})" if notes else "")


class CtrlC:
    """Ctrl-C (SIGINT), or SIGTERM where the command ends on it as on Ctrl-C (its handler is
    :func:`~mlet.core.signals.terminate`), while runs are in flight: noted instead of raised, so that no bookkeeping
    is cut short.

    :meth:`seen` answers from any thread at once: Python runs its signal
    handler on the main thread only, when that next runs Python code, while
    the wakeup file descriptor is written as the signal arrives. Off the main
    thread, or where neither signal would end the command (ignored, or
    handled by someone else), nothing changes (:meth:`seen` is then true only
    after :meth:`note`); where one would, that one is noted.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.pipe: tuple[int, int] | None = None
        self.noted: dict[int, Any] = {}  # the signals handled here, with their handlers before
        self.undo = contextlib.ExitStack()
        self.terminated = False

    def __enter__(self) -> CtrlC:
        main = threading.current_thread() is threading.main_thread()
        # Each signal is taken over only where it would end the command as Ctrl-C does: SIGINT may be ignored
        # (a script's background job inherits that) while SIGTERM still ends the sweep.
        ours = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: terminate}
        noted = [number for number, handler in ours.items() if signal.getsignal(number) is handler]
        if main and noted:
            self.pipe = pipe = os.pipe()
            self.undo.callback(lambda: setattr(self, "pipe", None))
            for fd in pipe:
                os.set_blocking(fd, False)
                self.undo.callback(os.close, fd)
            self.undo.callback(signal.set_wakeup_fd, signal.set_wakeup_fd(pipe[1], warn_on_full_buffer=False))
            self.noted = self.undo.enter_context(
                handling(dict.fromkeys(noted, lambda number, frame: self.note(number)))
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo.close()  # the handlers first, then the wakeup descriptor, then the pipe

    def note(self, signum: int = signal.SIGINT) -> None:
        """Take Ctrl-C (or SIGTERM: ``signum``) as come."""
        self.terminated |= signum == signal.SIGTERM
        self.event.set()

    def seen(self) -> bool:
        """Whether Ctrl-C (or SIGTERM) came since entering."""
        if not self.event.is_set() and self.pipe is not None:
            with contextlib.suppress(OSError):  # BlockingIOError: nothing came; a closed pipe: already left
                come = os.read(self.pipe[0], 64)
                if signal.SIGTERM in come and signal.SIGTERM in self.noted:
                    self.note(signal.SIGTERM)
                elif signal.SIGINT in come and signal.SIGINT in self.noted:
                    self.note()
        return self.event.is_set()

    def stop(self) -> KeyboardInterrupt:
        """What to raise once the runs in flight are recorded: SIGTERM's :class:`Terminated`, or Ctrl-C."""
        return Terminated() if self.terminated else KeyboardInterrupt()


def run_specs(
    specs: Sequence[RunSpec],
    settings: Settings,
    runner: Runner,
    manifest: Manifest,
    test_freq: int | None,
    desc: str,
    totals: dict,
) -> list[str]:
    """Run ``specs`` on ``settings.jobs`` workers, adding the finished and failed runs to ``totals`` as they end;
    returns the failed runs' names.

    On Ctrl-C (or SIGTERM) no further run starts; the runs in flight end
    (:func:`stop_runs`) and are recorded, ``totals`` gets ``interrupted``, and
    a KeyboardInterrupt is raised.
    """
    for sub in ("results", "logs", *(["checkpoints"] if settings.checkpoints != "none" else [])):
        (Path(settings.run_dir) / sub).mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    ctrl_c = CtrlC()

    def one(spec: RunSpec) -> tuple[int | None, float]:
        if ctrl_c.seen():  # a worker taking the next run as Ctrl-C comes: it does not start
            return None, 0.0
        note_damaged(spec, settings.run_dir)
        start = time.perf_counter()
        code = runner(spec, run_argv(spec, settings, test_freq), Path(settings.run_dir) / "logs" / f"{spec.name}.log")
        return code, time.perf_counter() - start

    def note(future: Future) -> None:
        if isinstance(stop := future.exception(), KeyboardInterrupt):  # a stand-in runner's Ctrl-C (tests)
            ctrl_c.note(signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
            return
        code, seconds = future.result()
        if code is not None:  # started (and ended)
            interrupted = ctrl_c.seen()
            failed.extend(record_run(futures[future], code, seconds, settings, manifest, totals, interrupted))
            bar.update(1)

    pool = ThreadPoolExecutor(max_workers=settings.jobs)
    try:
        with ctrl_c, tqdm(total=len(specs), desc=desc, unit="run", dynamic_ncols=True) as bar:
            futures = {pool.submit(one, s): s for s in specs}
            waiting = set(futures)
            while waiting and not ctrl_c.seen():
                done, waiting = wait(waiting, timeout=POLL_S, return_when=FIRST_COMPLETED)
                for future in done:
                    note(future)
            if ctrl_c.seen():
                pool.shutdown(wait=False, cancel_futures=True)
                totals["interrupted"] = True
                in_flight = {f for f in waiting if not f.cancelled()}
                stop_runs(in_flight, runner, signal.SIGTERM if ctrl_c.terminated else signal.SIGINT)
                for future in wait(in_flight).done:
                    note(future)
        if ctrl_c.seen():
            raise ctrl_c.stop()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return failed


def note_damaged(spec: RunSpec, run_dir: Path) -> None:
    """Set aside the damaged results JSON of a run about to run again (:func:`set_aside_damaged`), saying so."""
    if (aside := set_aside_damaged(spec, run_dir)) is not None:
        tqdm.write(f"{spec.name}: its results JSON did not read as one; kept as {aside}, the run runs again")


def stop_runs(in_flight: set[Future], runner: Runner, signum: int) -> None:
    """End the runs in flight after the sweep's Ctrl-C (``signum`` SIGINT) or SIGTERM; returns once they ended.

    A terminal's Ctrl-C reaches them too; those still running after
    :data:`GRACE_S` get the sweep's own signal from the runner's ``interrupt``,
    then, each :data:`STUBBORN_S` later, SIGTERM and SIGKILL. One signal was not
    enough: a sweep started as a background job (``sweep.py ... &`` in a
    script) passes SIGINT on ignored to its runs, so after its SIGTERM it
    waited for them to end on their own, for hours; and a test's run once
    missed its SIGINT (the sweep would have waited as long). SIGTERM ends a
    run as Ctrl-C does (one line, exit code 143); SIGKILL loses nothing
    finished, as results are written whole or not at all.
    """
    interrupt = getattr(runner, "interrupt", None)
    steps = ((GRACE_S, signum), (STUBBORN_S, signal.SIGTERM), (STUBBORN_S, signal.SIGKILL))
    for seconds, step in steps:
        left = wait(in_flight, timeout=seconds).not_done
        if not left or interrupt is None:
            return
        if step != signum:
            tqdm.write(f"{len(left)} run(s) still going {seconds:g} s on: sending {signal.Signals(step).name}")
        interrupt(step)
    wait(in_flight)


def record_run(
    spec: RunSpec, code: int, seconds: float, settings: Settings, manifest: Manifest, totals: dict, interrupted: bool
) -> list[str]:
    """Note how a run ended in ``sweep.json`` and ``totals`` (a run ``interrupted`` by Ctrl-C counts as neither
    finished nor failed unless it wrote its results); ``[spec.name]`` when it failed, else ``[]``."""
    status = run_status(spec, code, settings.run_dir, interrupted)
    manifest.record(spec, status, seconds)
    if status.startswith("interrupted"):
        return []
    done = status.startswith("finished")
    totals["finished" if done else "failed"] += 1
    log_path = Path(settings.run_dir) / "logs" / (spec.name + ".log")
    if done:
        if code:  # the log's last words are the run's, e.g. a SIGTERM's line: say how the sweep took them
            with open(log_path, "a") as log:
                log.write(f"# sweep.py: exit code {code} after the results JSON was written: counted as finished\n")
        return []
    tqdm.write(f"{spec.name}: failed with exit code {code}; see {log_path}")
    return [spec.name]
