"""Files written whole or not at all; a file that one run alone may write."""

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
    target = Path(path)
    handle = _locked(flag, path, target.with_name(f".{target.name}.lock"))
    try:
        yield
    finally:
        if handle is not None:
            with contextlib.suppress(OSError):
                os.unlink(handle.name)
            handle.close()


def _locked(flag: str, path: str, lock: Path) -> IO[str] | None:
    """``lock`` opened and locked, stating this process; ``None`` where it cannot be locked; a :class:`UserError`
    naming ``flag`` when another process holds it."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a+")  # noqa: SIM115 (held open, and locked, until sole_writer ends)
    except OSError:
        return None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process"
        handle.close()
        raise UserError(
            f"{flag} {path}: another run is writing it ({holder}); wait for it to end, or give another file"
        ) from None
    except OSError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle
