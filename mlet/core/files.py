"""Files written whole or not at all; a file that one run alone may write, or that runs make one at a time."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from mlet.core.errors import UserError


def replace_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file of this process beside ``target``, then rename it over ``target``: a reader, or
    another process writing the same name, sees the old file or a whole new one, never a torn or mixed one, and an
    interrupted write leaves no partial file. The temporary is removed whatever happens. An ``OSError`` names
    ``target``, not the temporary; a temporary that ``write`` did not create (torch's trace export logs its
    failures instead of raising) is one too."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        if not tmp.exists():
            raise FileNotFoundError(errno.ENOENT, "not written", str(target))
        os.replace(tmp, target)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(target)) from error
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def sole_writer(flag: str, path: str) -> Iterator[None]:
    """While inside, this process holds an advisory lock (``flock``) on ``.NAME.lock`` beside ``path``: another run
    about to write the same file (a second run with the same ``--save-model``) is refused with a
    :class:`UserError` naming ``flag`` and the holder, rather than the two replacing each other's file unseen.

    The kernel drops the lock when the process ends, however it ends; the lock file is removed on leaving (a
    killed run's is reused by the next). Where locks cannot be taken (a file system without them), nothing is
    checked.
    """

    def refuse(holder: str) -> None:
        raise UserError(
            f"{flag} {path}: another run is writing it ({holder}); wait for it to end, or give another file"
        )

    with _lock_beside(Path(path), refuse, wait=False):
        yield


@contextlib.contextmanager
def one_at_a_time(path: Path, waiting: Callable[[str], object]) -> Iterator[None]:
    """While inside, this process holds the lock of :func:`sole_writer` beside ``path``; a second process asking
    for it waits until the first leaves (``waiting(holder)`` is called first, e.g. to say so: ``holder`` is
    ``pid N on HOST``). For work that makes ``path`` once for all its users (a cache: the one that waited then
    finds it made). Ctrl-C and SIGTERM end the wait. Where locks cannot be taken, nothing waits."""
    with _lock_beside(path, waiting, wait=True):
        yield


@contextlib.contextmanager
def _lock_beside(target: Path, busy: Callable[[str], object], wait: bool) -> Iterator[None]:
    """Hold the lock on ``.NAME.lock`` beside ``target`` while inside (see :func:`_locked`); remove it on leaving."""
    handle = _locked(target.with_name(f".{target.name}.lock"), busy, wait)
    try:
        yield
    finally:
        if handle is not None:
            with contextlib.suppress(OSError):
                os.unlink(handle.name)  # before the lock goes: a waiter on this file then sees it gone, and retries
            handle.close()


def _locked(lock: Path, busy: Callable[[str], object], wait: bool) -> IO[str] | None:
    """``lock`` opened and locked, stating this process; ``None`` where it cannot be locked. When another process
    holds it, ``busy(holder)`` is called, then (with ``wait``) this one waits for it, else gives up (``None``)."""
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock, "a+")  # noqa: SIM115 (held open, and locked, until the lock is left)
        except OSError:
            return None
        try:
            locked = _lock(handle, busy, wait)
        except BaseException:
            handle.close()
            raise
        if not locked:
            handle.close()
            return None
        if _same_file(handle, lock):
            break
        handle.close()  # its holder removed the file as it left: lock the one there now
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def _lock(handle: IO[str], busy: Callable[[str], object], wait: bool) -> bool:
    """Lock the open lock file ``handle`` (after ``busy(holder)`` and waiting, with ``wait``, where another process
    holds it); whether it is locked now (not where locks cannot be taken, or without ``wait``)."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        handle.seek(0)
        busy(handle.read().strip() or "a process")
        if not wait:
            return False
    except OSError:
        return False
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    except OSError:
        return False
    return True


def _same_file(handle: IO[str], path: Path) -> bool:
    """Whether ``path`` still names the open file ``handle`` (a lock's holder removes it as it leaves)."""
    try:
        named, held = os.stat(path), os.fstat(handle.fileno())
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
