"""Files written whole or not at all; a file that one run alone may write, or that runs make one at a time; a file
that runs read together and one alone may replace."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

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
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    handle = _open_locked(lock, "a+", fcntl.LOCK_EX, lambda held: busy(_holder(held)), wait)
    if handle is None:
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def _open_locked(path: Path, mode: str, lock: int, busy: Callable[[IO[Any]], object], wait: bool) -> IO[Any] | None:
    """``path`` opened in ``mode`` and ``flock``-ed in ``lock`` (``LOCK_EX`` or ``LOCK_SH``; ``busy(handle)`` first,
    then with ``wait`` waiting, where another process keeps it out). Where its holder replaced or removed the file
    meanwhile, the one there now is locked instead. ``None`` where it cannot be opened or locked, or, without
    ``wait``, is held."""
    while True:
        try:
            handle = open(path, mode)  # noqa: SIM115 (held open, and locked, by the caller)
        except OSError:
            return None
        try:
            locked = _flock(handle, lock, functools.partial(busy, handle), wait)
        except BaseException:
            handle.close()
            raise
        if locked and _same_file(handle, path):
            return handle
        handle.close()
        if not locked:
            return None


def _holder(handle: IO[str]) -> str:
    """Who holds the lock file ``handle``, as its holder wrote it."""
    handle.seek(0)
    return handle.read().strip() or "a process"


def _flock(handle: IO[Any], mode: int, busy: Callable[[], object], wait: bool) -> bool:
    """``flock`` ``handle`` in ``mode`` (``LOCK_EX`` or ``LOCK_SH``), after ``busy()`` and, with ``wait``, waiting
    where another process holds a lock that keeps it out; whether it is locked now (not where locks cannot be
    taken)."""
    try:
        fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        busy()
        if not wait:
            return False
    except OSError:
        return False
    try:
        fcntl.flock(handle.fileno(), mode)
    except OSError:
        return False
    return True


def _same_file(handle: IO[Any], path: Path) -> bool:
    """Whether ``path`` still names the open file ``handle`` (a lock's holder removes it as it leaves)."""
    try:
        named, held = os.stat(path), os.fstat(handle.fileno())
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def hold_shared(path: Path, busy: Callable[[], object]) -> IO[bytes] | None:
    """``path`` opened and share-locked (``flock``), for as long as the handle stays open: other processes may hold
    it shared too, none exclusively (see :func:`try_exclusive`). Where a process holds it exclusively, ``busy()`` is
    called, then this one waits; when the file was replaced meanwhile (its holder renamed a new one into place), the
    new one is locked. ``None`` where ``path`` is missing or cannot be locked. The kernel drops the lock when the
    process ends, however it ends (``kill -9`` too)."""
    return _open_locked(path, "rb", fcntl.LOCK_SH, lambda held: busy(), wait=True)


def try_exclusive(handle: IO[bytes]) -> bool:
    """Lock ``handle`` exclusively without waiting: whether no other process holds it. Where the file system
    cannot lock at all (ENOLCK, EOPNOTSUPP, ENOSYS), True. ``handle`` should be open for writing: NFS emulates
    ``flock`` with POSIX locks, whose exclusive kind a read-only file refuses (EBADF), and that refusal is
    taken as no lock either, for a file this process may not write."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno in UNLOCKABLE:
            return True
        raise


UNLOCKABLE = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EBADF)  # no lock to take here (see try_exclusive)


LOCKS = Path("/proc/locks")  # the kernel's table of the locks held on this host


def process_gone(host: str, pid: int) -> bool:
    """Whether process ``pid`` of ``host`` has ended, as far as this host can tell: True only for one of this host
    that no longer runs (another host's may run there: False; so does one of another user here)."""
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, as another user's
    return False


def lock_holders(path: Path) -> list[str]:
    """The other processes of this host that hold an ``flock`` on ``path`` (from ``/proc/locks``), each as
    ``pid N on HOST: COMMAND`` (the command cut at 100 characters); empty where none is seen (a process on another
    host of a shared file system, or no ``/proc``)."""
    try:
        key = lock_key(path)
        table = LOCKS.read_text()
    except OSError:
        return []
    pids = []
    for line in table.splitlines():
        fields = line.split()  # "1: FLOCK ADVISORY READ PID MAJ:MIN:INODE 0 EOF"; "1: -> FLOCK ..." for a waiter
        if len(fields) >= 6 and fields[1] == "FLOCK" and _locked_file(fields[5]) == key:
            pids.append(int(fields[4]))
    host = socket.gethostname()
    return [f"pid {pid} on {host}: {_command(pid)}" for pid in dict.fromkeys(pids) if pid != os.getpid()]


def _locked_file(field: str) -> tuple[int, int, int] | None:
    """``(major, minor, inode)`` of a ``/proc/locks`` line's ``MAJ:MIN:INODE`` (the device in hex)."""
    try:
        major, minor, inode = field.split(":")
        return int(major, 16), int(minor, 16), int(inode)
    except ValueError:
        return None


def lock_key(path: Path) -> tuple[int, int, int]:
    """``(major, minor, inode)`` by which ``/proc/locks`` names the locks on ``path``: the device of the mount it
    is on (from ``/proc/self/mountinfo``) and the inode the kernel locks (``/proc/self/fdinfo``), where ``/proc``
    says; else its ``stat``. The inode alone would match a file of another device, and ``stat``'s device is not the
    locks' on every file system (a btrfs subvolume's, an overlay's in a container)."""
    fd = os.open(path, os.O_PATH)
    try:
        stat, info = os.fstat(fd), _proc_fields(Path(f"/proc/self/fdinfo/{fd}"))
    finally:
        os.close(fd)
    device = _mount_devices().get(info.get("mnt_id", ""), (os.major(stat.st_dev), os.minor(stat.st_dev)))
    return *device, int(info.get("ino", stat.st_ino))


def _proc_fields(path: Path) -> dict[str, str]:
    """The ``name: value`` lines of a ``/proc`` file (empty where it cannot be read)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return {name.strip(): value.strip() for name, _, value in (line.partition(":") for line in lines)}


def _mount_devices() -> dict[str, tuple[int, int]]:
    """Each mount's id -> its device (major, minor), from ``/proc/self/mountinfo`` (empty where unreadable)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return {}
    devices = {}
    for line in lines:
        fields = line.split()  # "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw" (decimal device)
        if len(fields) >= 3 and fields[2].count(":") == 1:
            major, minor = fields[2].split(":")
            devices[fields[0]] = (int(major), int(minor))
    return devices


def _command(pid: int) -> str:
    """Process ``pid``'s command line on one line, cut at 100 characters (``?`` where it cannot be read)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split()
    except OSError:
        return "?"
    text = " ".join(words) or "?"  # on one line: the code of a `python -c` has several
    return text if len(text) <= 100 else text[:97] + "..."
