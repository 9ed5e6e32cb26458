"""Producing items ahead of their consumer: ordered thread-pool maps and a prefetching thread.

Used by the data sources (batch assembly from memory maps), the raw-file
readers (parsing ahead of the vocabulary pass) and the training loop.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar, cast

Item = TypeVar("Item")
Result = TypeVar("Result")


def ordered_map(function: Callable[[Item], Result], items: Iterable[Item], workers: int) -> Iterator[Result]:
    """``map(function, items)`` on ``workers`` threads; results in input order, ``2 * workers`` in flight.

    Worth it where ``function`` releases the GIL (numpy gathers, torch copies):
    batch assembly from memory maps scales with threads this way. One worker
    (or fewer) is the plain ``map``, in the caller's thread.
    """
    if workers <= 1:
        yield from map(function, items)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="batch-worker")
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


PRODUCER_EXIT_SECONDS = 30.0
"""How long a stopped :func:`prefetch` waits for its producer to finish the batch it is assembling."""


def prefetch(batches: Iterator[Item], depth: int = 4, pin: bool = False) -> Generator[Item, None, None]:
    """Produce ``batches`` (or any items) in a background thread, ``depth`` ahead of the consumer.

    Exceptions in the producer are re-raised in the consumer. Stopping early
    (``close()`` or garbage collection of the generator, as when Ctrl-C ends a
    run) stops the producer and waits for it to leave: a daemon thread still
    running when the interpreter exits is stopped abruptly, which inside torch's
    C++ code can abort the process (a user trial saw ``terminate called without
    an active exception`` after Ctrl-C, 2 runs in 15) instead of its clean exit.
    ``pin`` page-locks each :class:`Batch`.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(item: object) -> bool:
        """Put ``item`` in the buffer unless the consumer stopped first; False when it did."""
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not offer(cast(Any, batch).pin_memory() if pin else batch):  # pin: a Batch (or any pin_memory)
                    return
            offer(done)
        except BaseException as error:  # handed to the consumer
            offer(error)

    worker = threading.Thread(target=produce, daemon=True, name="batch-prefetch")
    worker.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=PRODUCER_EXIT_SECONDS)
