"""The processes of a run: torchrun's launch environment, process groups, and
errors shared between processes (so that every process stops with the
failing one's message instead of waiting for it).
``sharded_model.py`` builds the sharded model and ``distributed.py`` the training
session on top of this.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from mlet.core.errors import UserError
from mlet.core.launch import launched_rank, launched_world_size
from mlet.parallel import joining
from mlet.parallel.endings import NOTHING_KNOWN, Endings

BACKENDS = ("gloo", "nccl")
DEFAULT_TIMEOUT_S = 1800

T = TypeVar("T")


class SharedError(UserError):
    """An error that every rank raises together (see :meth:`MultiProcess.agree`); rank 0 alone prints it."""

    def __init__(self, message: str, print_here: bool) -> None:
        super().__init__(message)
        self.print_here = print_here


def error_line(error: Exception) -> str | None:
    """What this process prints for ``error`` (``None``: another rank prints it).

    A shared error is printed by rank 0; an error of this process alone, in a
    multi-process run, is printed here with the rank in front.
    """
    if isinstance(error, SharedError):
        return str(error) if error.print_here else None
    if launched_world_size() > 1:
        return f"rank {launched_rank()}: {error}"
    return str(error)


# -- process groups ------------------------------------------------------------
@dataclass(frozen=True)
class Comm:
    """This process's place in the run: rank, size, device, and the training group.

    ``group`` carries the training traffic: a NCCL group on GPUs, ``None``
    (the default group, gloo) on CPUs. Host-side traffic (errors, metrics,
    checkpoint gathering) always goes over the default gloo group.
    """

    rank: int
    world_size: int
    device: torch.device
    group: dist.ProcessGroup | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints and writes."""
        return self.rank == 0


def check_backend(backend: str | None, use_gpu: bool) -> None:
    """Refuse a backend that cannot serve the device (:class:`UserError` naming the flag)."""
    if backend == "nccl" and not use_gpu:
        raise UserError(
            "--dist-backend=nccl: NCCL needs CUDA devices; add --use-gpu, or use --dist-backend=gloo for CPU processes"
        )
    if backend == "gloo" and use_gpu:
        raise UserError("--dist-backend=gloo: with --use-gpu use nccl (the default); gloo is for CPU processes")


def is_multi_process() -> bool:
    """True once this process has joined a run of several processes."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def start(timeout_s: int) -> None:
    """In a torchrun launch of several processes, join the others (once).

    The default group is gloo, on the CPU: it carries errors, metrics and
    checkpoints, and exists before the flags are checked, so that a check
    failing on one process alone reaches them all (:func:`agree`). Training
    traffic on GPUs gets a NCCL group of its own (:func:`session`). A process
    whose peers do not come says so (:mod:`joining`).
    """
    refuse_mpi_launch()
    if launched_world_size() <= 1 or dist.is_initialized():
        return
    try:
        joining.join(max(1, timeout_s))
    except (RuntimeError, ValueError) as error:
        raise UserError(f"torch.distributed: could not join the other processes: {first_line(error)}") from None


MPI_LAUNCH = {  # what mpirun sets in each process it starts (Intel MPI / MPICH, Open MPI, MVAPICH2): size, rank
    "PMI_SIZE": "PMI_RANK",
    "OMPI_COMM_WORLD_SIZE": "OMPI_COMM_WORLD_RANK",
    "MV2_COMM_WORLD_SIZE": "MV2_COMM_WORLD_RANK",
}
MPI_LOCAL_SIZE = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_LOCAL_SIZE")
"""What mpirun sets for the number of processes on each host (Open MPI, Intel MPI / MPICH, MVAPICH2)."""


def refuse_mpi_launch() -> None:
    """Refuse a launch by ``mpirun`` (upstream DLRM's other launcher), which sets no torchrun environment: every
    process would train the whole model alone and write the same files. A :class:`SharedError` on every process,
    printed by MPI's rank 0 alone. The torchrun command it suggests starts as many processes on each host as
    mpirun did (:data:`MPI_LOCAL_SIZE`, else all of them on one)."""
    if "WORLD_SIZE" in os.environ:
        return
    for size_name, rank_name in MPI_LAUNCH.items():
        size = os.environ.get(size_name, "")
        if size.isdigit() and int(size) > 1:
            local = [int(os.environ[n]) for n in MPI_LOCAL_SIZE if os.environ.get(n, "").isdigit()]
            per_host = next((n for n in local if 0 < n < int(size)), int(size))
            hosts = -(-int(size) // per_host)
            nodes = f"--nnodes={hosts} " if hosts > 1 else ""
            raise SharedError(
                f"{size_name}={size}: started by mpirun, which this command does not join into one run (each of the"
                f" {size} processes would train alone and write the same files); launch with torchrun instead:"
                f" torchrun {nodes}--nproc_per_node={per_host} dlrm_mlet.py ...",
                print_here=os.environ.get(rank_name, "0") == "0",
            )


def training_device(backend: str | None, use_gpu: bool) -> torch.device:
    """This process's device: the CPU, or with ``use_gpu`` the GPU of its local rank.

    Raises :class:`UserError` for a setup that cannot work here.
    """
    check_backend(backend, use_gpu)
    if not use_gpu:
        return torch.device("cpu")
    local_rank, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local_rank >= count:
        raise UserError(
            f"--use-gpu: this process has LOCAL_RANK={local_rank}, but the host has {count} CUDA devices; "
            f"start at most {count} per host (--nproc_per_node)"
        )
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def agree(step: Callable[[], T]) -> T:
    """Run ``step``; in a multi-process run, if it fails on any process, every process raises
    that failure (a :class:`SharedError`, printed by rank 0), so all stop together.

    A process whose ``step`` failed with a bug (not a :class:`UserError`) prints its traceback first.
    """
    if not is_multi_process():
        return step()
    error: Exception | None = None
    try:
        result = step()
    except Exception as caught:  # shared below, then raised on every rank
        error = caught
    share_failure(error)
    return result


def share_failure(error: Exception | None, ran: bool = True) -> None:
    """Every process says how its step went (``error``; ``ran``: whether it had one, see
    :func:`~mlet.parallel.turns.in_turns`); if
    any failed, every process raises the first failure as a :class:`SharedError`. A collective.

    The message keeps its ``rank R:`` prefix unless every process that ran the step failed alike and rank 0
    was among them (what one process hit, the others would too).
    """
    message = (
        None
        if error is None
        else str(error)
        if isinstance(error, UserError)
        else f"{type(error).__name__}: {first_line(error)}"
    )
    reports: list = [None] * dist.get_world_size()
    dist.all_gather_object(reports, (ran, message))
    runners = [rank for rank, (did, _) in enumerate(reports) if did]
    failed = [(rank, text) for rank, (_, text) in enumerate(reports) if text is not None]
    if not failed:
        return
    if error is not None and not isinstance(error, UserError):
        traceback.print_exception(error)
    alike = len(failed) == len(runners) and len({text for _, text in failed}) == 1
    rank, text = failed[0]
    raise SharedError(text if alike and 0 in runners else f"rank {rank}: {text}", print_here=dist.get_rank() == 0)


def same_as_rank_zero(value: T, differences: Callable[[T, T], str | None]) -> None:
    """Compare every process's ``value`` with rank 0's: where ``differences(rank 0's, this one's)`` names any,
    every process stops (as :func:`agree`, the message prefixed ``rank R:``). A collective."""
    if not is_multi_process():
        return
    first = [value]
    dist.broadcast_object_list(first, src=0)

    def compare() -> None:
        if (text := differences(first[0], value)) is not None:
            raise UserError(text)

    agree(compare)


def on_rank_zero(step: Callable[[], object]) -> None:
    """Run ``step`` on rank 0 alone (the process that writes) while the others wait; a failure stops every
    process, with its message and no rank in front (as :func:`agree`)."""
    if not is_multi_process() or dist.get_rank() == 0:
        agree(step)
    else:
        share_failure(None, ran=False)


COMMUNICATION_WORDS = re.compile(
    r"gloo|nccl|processgroup|c10d|collective|connection closed|timed out|timeout", re.IGNORECASE
)


def is_communication_failure(error: BaseException) -> bool:
    """Whether ``error`` is a failed or timed-out collective. Recognised by type (``DistError``), by being raised
    inside ``torch.distributed``, or, for errors the backends raise from C++ (gloo's closed connections, NCCL's
    watchdog), by a ``RuntimeError`` whose message names the backend or a timeout."""
    frames = traceback.extract_tb(error.__traceback__)
    inside = any(f"torch{os.sep}distributed{os.sep}" in frame.filename for frame in frames)
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and bool(inside or COMMUNICATION_WORDS.search(str(error)))
    )


TIMEOUT_WORDS = re.compile(r"timed out|timeout", re.IGNORECASE)


def communication_failure(error: BaseException, ended: Endings = NOTHING_KNOWN) -> UserError | None:
    """A failed or timed-out collective as a one-line error (usually another process ended first), saying what
    ``ended`` (what the others recorded of their end, :func:`mlet.parallel.endings.others`) knows of why;
    ``None`` for other errors (:func:`is_communication_failure`), which keep their traceback.
    """
    if not is_communication_failure(error):
        return None
    what = backend_words(first_line(error))
    if ended.first is not None:
        return ended_first(ended, what)
    if TIMEOUT_WORDS.search(what):
        why = "another process has stopped or hangs; --dist-timeout sets how long collectives wait"
    elif ended.readable:  # every process that stops with a signal or an error of its own records it first
        why = "another process ended without a message: killed, e.g. by kill -9 or for lack of memory?"
    else:
        why = "another process has stopped: see its message, if it left one"
    return UserError(f"torch.distributed: {what} ({why})")


def ended_first(ended: Endings, then: str) -> UserError:
    """The line of a process that stops because another one ended first, naming it from ``ended``
    (:attr:`Endings.first`); ``then``: what happened here (a collective's error, a SIGTERM)."""
    return UserError(f"torch.distributed: {ended.first}; the run cannot go on without it ({then})")


SOURCE_PLACE = re.compile(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*")
BACKEND_ADVICE = re.compile(r"\.?\s+This is typically caused by .*$")


def backend_words(text: str) -> str:
    """A backend's error message without the C++ source place in front and gloo's advice after it
    (``[.../pair.cc:553] Connection closed by peer [127.0.0.1]:30343. This is typically caused ...``)."""
    return BACKEND_ADVICE.sub("", SOURCE_PLACE.sub("", text)) or text


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type if it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def wait_for_all(comm: Comm) -> None:
    """Barrier on every group: no rank leaves while another still needs it."""
    dist.barrier()
    if comm.group is not None:
        dist.barrier(group=comm.group, device_ids=[comm.device.index] if comm.device.type == "cuda" else None)


def said_and_done(code: int) -> None:
    """In a process of a multi-process run that has written its last line (its error, or Ctrl-C's or SIGTERM's):
    from now on a SIGTERM ends it at once, without a word, with ``code``.

    torchrun sends SIGTERM to the other processes as soon as one has failed, and this one still has its failed
    step's frames to free: freeing them closes the batch prefetcher, whose producer it waits for, and a SIGTERM
    raised there was printed as ``Exception ignored in: <generator object prefetch ...>`` and its traceback, under
    the line (seen on the surviving rank each time one rank was killed). In a single process nothing changes. In
    the main thread only, the one that may set handlers.
    """
    if launched_world_size() > 1 and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: exit_process(code))


@dataclass
class Ending:
    """How a process that writes its last words ends: ``code``, its exit status (``None``: it does not, here)."""

    code: int | None = None


@contextlib.contextmanager
def last_words(code: int | None = None) -> Iterator[Ending]:
    """Inside, a process of a multi-process run decides how it ends and writes its last line (and records how it
    ends, :mod:`~mlet.parallel.endings`) while a SIGTERM waits. After, with the exit status (``code``, or the one
    the block sets on the :class:`Ending` it is given), :func:`said_and_done`, and a SIGTERM that came meanwhile
    ends the process at once; with none (the block raises a bug's error), the SIGTERM handler from before comes
    back, and a SIGTERM that came meanwhile comes again.

    torchrun sends its SIGTERM about a tenth of a second after one process ended; the store can take up to a
    second to answer, and a failed step's traceback takes its time to read (on a loaded machine): raised there, the
    SIGTERM ended this process with ``terminated (SIGTERM)`` in place of its line (seen under load).
    """
    came: list[int] = []
    ending = Ending(code)
    main = launched_world_size() > 1 and threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, lambda signum, frame: came.append(signum)) if main else None
    try:
        yield ending
    finally:
        if ending.code is not None:
            said_and_done(ending.code)
        elif main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if before is None else before)
            if came:
                signal.raise_signal(signal.SIGTERM)
    if came and ending.code is not None:
        exit_process(ending.code)


def exit_process(code: int) -> None:
    """End the process with ``code`` without the interpreter's teardown.

    A single process runs its exit handlers (``atexit``: torch's compile workers, logging) first, then leaves;
    under a profiler or a tracer it exits as usual, for their reports.
    The teardown frees every module's objects one at a time, the CUDA context, graphs and tables included: 1.4 s
    after a run on an H200 and 0.6 s after a small CPU run, for memory the operating system frees at once. No
    thread of ours outlives ``main``: its pools close in ``with`` blocks and its prefetching threads are daemons.

    A multi-process run skips the handlers too. Its process group is never freed in-process: with gloo,
    freeing it while its worker threads still release finished collectives deadlocks (they need the GIL, which
    the freeing thread holds while joining them; seen with torch 2.13). And after an error this rank must leave
    at once, for torchrun to stop the others, even if a peer is blocked in a collective with it.
    """
    if launched_world_size() == 1:
        if sys.getprofile() is not None or sys.gettrace() is not None:
            sys.exit(code)  # a profiler's or tracer's report (python -m cProfile -o ...) is written after the program
        atexit._run_exitfuncs()  # what the interpreter's exit would run first
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # a reader gone away (`| head`): nobody is left to tell
            stream.flush()
    os._exit(code)
