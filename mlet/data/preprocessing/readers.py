"""Which processes read a processed cache: none may replace it while another reads it.

A process that uses a cache holds a shared ``flock`` on its ``meta.json``
until the process ends (training and evaluation read batches lazily, from
memory maps, for the whole run); a rebuild needs it exclusively, and is refused
while another process holds it. The processes of one torchrun run all hold it
shared, so they never block each other. The lock lives on ``meta.json`` itself:
a rebuild renames a new directory, with a new ``meta.json``, into place, so no
lock file is left beside the cache. Why this matters though memory maps
survive the rename: the run's other processes (torchrun's later turns), its
evaluation and resumed runs open the cache again by name and would find other
data; on a network file system another host's maps of removed files fail.
See docs/data.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, NoReturn

from mlet.core.files import hold_shared, lock_holders, try_exclusive

_held: dict[str, IO[bytes]] = {}  # directory (resolved) -> this process's handle on its meta.json, share-locked


def _key(directory: Path) -> str:
    """The registry's key of ``directory``: its resolved path."""
    return str(directory.resolve())


def is_reading(directory: Path) -> bool:
    """Whether this process holds the read lock of ``directory``."""
    return _key(directory) in _held


def start_reading(directory: Path, busy: Callable[[], object] = lambda: None) -> None:
    """Hold the read lock of the cache in ``directory`` (its ``meta.json``) until the process ends, or until it
    rebuilds the cache itself (:func:`replacing`); ``busy()`` first where a rebuild holds it (this process then
    waits for the rebuild). Nothing where there is no ``meta.json`` yet or locks cannot be taken."""
    key = _key(directory)
    if key in _held:
        return
    handle = hold_shared(directory / "meta.json", busy)
    if handle is not None:
        _held[key] = handle


def stop_reading(directory: Path) -> None:
    """Let go of the read lock of ``directory`` (a cache this process found it cannot use)."""
    handle = _held.pop(_key(directory), None)
    if handle is not None:
        handle.close()


@contextlib.contextmanager
def replacing(directory: Path, refuse: Callable[[list[str]], NoReturn]) -> Iterator[None]:
    """While inside, no other process reads the cache in ``directory``, which may be replaced; this process reads
    the one there on leaving (if it read the old one or the replacement is done). Where another process reads it,
    ``refuse(holders)`` is called (it raises; ``holders``: see :func:`~mlet.core.files.lock_holders`). The caller
    holds the build lock, so no other process can be replacing it at the same time."""
    reading = is_reading(directory)
    stop_reading(directory)  # a lock per open file: this process's own shared one would keep the exclusive one out
    handle = _open(directory / "meta.json")
    if handle is not None and not try_exclusive(handle):
        holders = lock_holders(directory / "meta.json")
        handle.close()
        if reading:
            start_reading(directory)  # no rebuild can come meanwhile: the caller holds the build lock
        refuse(holders)
    replaced = False
    try:
        yield
        replaced = True
    finally:
        if handle is not None:
            handle.close()
        if reading or replaced:
            start_reading(directory)


def _open(path: Path) -> IO[bytes] | None:
    """``path`` opened for an exclusive lock: for writing where this process may (NFS locks it only so), else
    for reading; ``None`` where it is missing (nothing reads a cache without it)."""
    for mode in ("r+b", "rb"):
        try:
            return open(path, mode)  # closed by the caller
        except FileNotFoundError:
            return None
        except OSError:
            continue
    return None
