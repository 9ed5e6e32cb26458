"""A processed cache that a run reads is not replaced under it: a run that would rebuild it (other settings) is
refused with one line naming the reader; runs with the same settings, and the processes of one torchrun run,
read it together."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BUILD_HELD, ROOT, kill_running, wait_for

from mlet.core import files
from mlet.core.errors import UserError
from mlet.data.preprocessing import cache, readers
from mlet.data.preprocessing.raw_generate import RawGenerator

READER = """
import sys, time
from pathlib import Path
from mlet.data.preprocessing import cache
raw, target, reading, split = sys.argv[1:5]
data = cache.prepare(raw or None, target, "kaggle", split, progress=False, log=print)
dense, ids, labels = data.split("train")
Path(reading).touch()
time.sleep(300)  # training: batches are read from the memory maps as it goes
"""


HELD_BUILDER = (
    BUILD_HELD
    + """
raw, target = sys.argv[3:5]
cache.prepare(raw, target, "kaggle", "dlrm", progress=False, log=print)
time.sleep(300)  # then trains from it
"""
)


def quiet(line: str) -> None:
    """A log that prints nothing."""


@pytest.fixture
def raw(tmp_path) -> Path:
    """A small raw Kaggle-format file."""
    path = tmp_path / "raw.txt"
    RawGenerator("kaggle", 600, seed=3).write(path)
    return path


def start_reader(raw: Path | None, target: Path, split: str, tmp: Path) -> subprocess.Popen:
    """Another run that uses the cache in ``target`` (made from ``raw`` with ``split``) and goes on reading it."""
    reading = tmp / f"reading-{split}-{len(list(tmp.iterdir()))}"
    command = [sys.executable, "-c", READER, str(raw or ""), str(target), str(reading), split]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    reader = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: reading.exists() or reader.poll() is not None, "the reading run")
    assert reader.poll() is None, reader.stdout.read() if reader.stdout else ""
    return reader


def stop(reader: subprocess.Popen) -> None:
    """End the reading run as ``kill -9`` does (its lock goes with it)."""
    reader.send_signal(signal.SIGKILL)
    reader.wait(60)


def test_a_run_that_would_rebuild_a_cache_another_run_reads_is_refused(raw, tmp_path) -> None:
    target = tmp_path / "processed"
    reader = start_reader(raw, target, "dlrm", tmp_path)
    try:
        made = (target / "train.cat.npy").stat().st_ino
        with pytest.raises(UserError) as refused:
            cache.prepare(str(raw), str(target), "kaggle", "random-811", progress=False, log=quiet)
        assert re.fullmatch(
            f"--processed-data-file {target}: another run is reading it \\(pid {reader.pid} on "
            f"{re.escape(socket.gethostname())}: {re.escape(sys.executable)} -c .*\\); this run would rebuild it, "
            "since it was made with other settings \\(data_split dlrm -> random-811, split_seed None -> 0\\); give "
            "this run another --processed-data-file, or wait for that run to end",
            str(refused.value),
        ), str(refused.value)
        assert cache.read_meta(target)["settings"]["data_split"] == "dlrm"
        assert (target / "train.cat.npy").stat().st_ino == made  # the reader's files are the cache's still
        # the reader's other processes (a torchrun run's later turns) find the data it reads, with or without raw
        assert cache.prepare(None, str(target), "kaggle", "dlrm").meta["settings"]["data_split"] == "dlrm"
        assert (
            cache.prepare(str(raw), str(target), "kaggle", "dlrm", log=quiet).meta["settings"]["data_split"] == "dlrm"
        )
    finally:
        stop(reader)
    # once it has ended (kill -9), the cache is rebuilt: this process read it too, and may replace what it reads
    assert readers.is_reading(target)
    rebuilt = cache.prepare(str(raw), str(target), "kaggle", "random-811", progress=False, log=quiet)
    assert rebuilt.meta["settings"]["data_split"] == "random-811" and readers.is_reading(target)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("reading")) == ["processed", "raw.txt"]


def test_a_rebuild_is_refused_where_exclusive_locks_need_a_writable_file_as_on_nfs(raw, tmp_path, monkeypatch):
    """NFS emulates ``flock`` with POSIX locks: an exclusive one on a file open for reading only fails with EBADF,
    which was taken as 'this file system cannot lock', and the rebuild went ahead under the reader."""
    target = tmp_path / "processed"
    reader = start_reader(raw, target, "dlrm", tmp_path)
    flock = fcntl.flock

    def nfs_flock(fd: int, operation: int) -> None:
        if operation & fcntl.LOCK_EX and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", nfs_flock)
    try:
        with pytest.raises(UserError, match="another run is reading it"):
            cache.prepare(str(raw), str(target), "kaggle", "random-811", progress=False, log=quiet)
        assert cache.read_meta(target)["settings"]["data_split"] == "dlrm"
    finally:
        stop(reader)


def open_files() -> set[str]:
    """The paths of the files this process has open."""
    paths = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            paths.add(os.readlink(f"/proc/self/fd/{fd}"))
    return paths


def test_a_rebuild_leaves_no_old_directory_where_open_files_cannot_be_removed_as_on_nfs(raw, tmp_path, monkeypatch):
    """On NFS a file that is still open is not removed (the client renames it to ``.nfsXXXX`` until it is closed),
    so removing a directory that holds one fails. The rebuild removed the replaced data while it still held their
    ``meta.json`` open for its lock, and left ``.processed.old-PID/`` behind."""
    target = tmp_path / "processed"
    cache.prepare(str(raw), str(target), "kaggle", "dlrm", progress=False, log=quiet)  # this run reads it, then
    rmtree = shutil.rmtree

    def nfs_rmtree(path, ignore_errors: bool = False) -> None:
        if any(str(file) in open_files() for file in Path(path).rglob("*")):
            if not ignore_errors:
                raise OSError(errno.ENOTEMPTY, "Directory not empty", str(path))
            return
        rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(shutil, "rmtree", nfs_rmtree)
    rebuilt = cache.prepare(str(raw), str(target), "kaggle", "random-811", progress=False, log=quiet)
    assert rebuilt.meta["settings"]["data_split"] == "random-811" and readers.is_reading(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed", "raw.txt"]


def test_a_run_removes_the_old_directories_of_ended_rebuilds_of_its_host_and_not_those_of_live_ones(raw, tmp_path):
    """What a rebuild could not remove (a file another process of its host still had open, on NFS) goes with the
    next run that uses the cache once that rebuild's process has ended; one of a live process stays, and so does
    one of another host sharing the disk (its process may run there), which the older names without a host
    could not tell (they stay taken for this host's)."""
    target = tmp_path / "processed"
    cache.prepare(str(raw), str(target), "kaggle", "dlrm", progress=False, log=quiet)
    live = subprocess.Popen(["sleep", "60"])
    host = socket.gethostname()
    try:
        ended, unnamed = tmp_path / f".processed.old-{host}-999999999", tmp_path / ".processed.tmp-999999998"
        running = tmp_path / f".processed.old-{host}-{live.pid}"
        elsewhere = tmp_path / ".processed.tmp-other-host.example-999999997"
        for old in (ended, unnamed, running, elsewhere):
            old.mkdir()
            (old / ".nfs0000000000000001").write_bytes(b"")
        cache.prepare(str(raw), str(target), "kaggle", "dlrm", progress=False, log=quiet)  # uses it, no rebuild
        assert not ended.exists() and not unnamed.exists()
        assert (running / ".nfs0000000000000001").exists() and (elsewhere / ".nfs0000000000000001").exists()
    finally:
        live.kill()
        live.wait()


def test_runs_that_read_a_cache_with_the_same_settings_read_it_together(raw, tmp_path) -> None:
    target = tmp_path / "processed"
    first = start_reader(raw, target, "dlrm", tmp_path)
    second = None
    try:
        second = start_reader(raw, target, "dlrm", tmp_path)  # would hang, or fail, were it kept out
        third = start_reader(None, target, "dlrm", tmp_path)
        stop(third)
    finally:
        for reader in (first, second):
            if reader is not None:
                stop(reader)
    assert not readers.is_reading(target)


def test_a_run_given_only_the_cache_that_refuses_it_does_not_keep_reading_it(raw, tmp_path) -> None:
    target = tmp_path / "processed"
    cache.prepare(str(raw), str(target), "kaggle", "dlrm", progress=False, log=quiet)
    readers.stop_reading(target)
    with pytest.raises(UserError, match="was made with"):
        cache.prepare(None, str(target), "kaggle", "random-811")
    assert not readers.is_reading(target)
    reader = start_reader(raw, target, "random-811", tmp_path)  # a rebuild elsewhere is not refused for it
    stop(reader)


def test_a_run_that_would_rebuild_a_cache_another_run_builds_waits_for_the_build_then_is_refused(raw, tmp_path) -> None:
    target, building, go = tmp_path / "processed", tmp_path / "building", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", HELD_BUILDER, str(building), str(go), str(raw), str(target)]
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second, out = None, tmp_path / "second.txt"
    try:
        wait_for(lambda: building.exists() or first.poll() is not None, "the first run's build")
        argv = ["preprocess", "--data-set=kaggle", "--data-split=random-811", f"--raw-data-file={raw}",
                f"--processed-data-file={target}", "--progress=false"]  # fmt: skip
        with open(out, "w") as handle:
            second = subprocess.Popen(
                [sys.executable, "data_utils.py", *argv], cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT
            )
        wait_for(lambda: "waiting for another run's build" in out.read_text() or second.poll() is not None, "the wait")
        go.touch()
        code = second.wait(120)
    finally:
        kill_running([first, second])
    said = out.read_text().splitlines()
    assert code == 2 and said[0].startswith(f"waiting for another run's build of {target} (pid {first.pid} on")
    assert said[1].startswith(f"data_utils.py: error: --processed-data-file {target}: another run is reading it (pid "
                              f"{first.pid} on ")  # fmt: skip
    assert cache.read_meta(target)["settings"]["data_split"] == "dlrm"


def test_the_refusal_names_one_reader_and_counts_the_others(tmp_path) -> None:
    holders = [f"pid {pid} on host: python -m dlrm_mlet" for pid in (11, 12, 13)]
    with pytest.raises(UserError) as refused:
        cache.refuse_replacing(tmp_path, "it was made with other settings", holders)
    assert "(pid 11 on host: python -m dlrm_mlet and 2 more)" in str(refused.value)
    assert str(refused.value).count("pid ") == 1


def test_a_reader_is_named_by_the_device_and_inode_of_its_lock_not_the_inode_alone(tmp_path, monkeypatch) -> None:
    """``/proc/locks`` names a locked file ``MAJ:MIN:INODE``: a lock on a file of another device (another file
    system) with the same inode number was named as a reader of this one."""
    meta = tmp_path / "meta.json"
    meta.write_text("{}")
    major, minor, inode = files.lock_key(meta)
    reader, other = subprocess.Popen(["sleep", "60"]), subprocess.Popen(["sleep", "61"])
    try:
        table = tmp_path / "locks"
        table.write_text(
            f"1: FLOCK  ADVISORY  READ {reader.pid} {major:02x}:{minor:02x}:{inode} 0 EOF\n"
            f"2: FLOCK  ADVISORY  READ {other.pid} {major + 1:02x}:{minor:02x}:{inode} 0 EOF\n"
        )
        monkeypatch.setattr(files, "LOCKS", table)
        assert files.lock_holders(meta) == [f"pid {reader.pid} on {socket.gethostname()}: sleep 60"]
    finally:
        for process in (reader, other):
            process.kill()
            process.wait()


def test_the_lock_key_of_a_file_is_the_one_proc_locks_names_its_locks_by(tmp_path) -> None:
    path = tmp_path / "meta.json"
    with open(path, "w") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        lines = [line.split() for line in Path("/proc/locks").read_text().splitlines()]
        mine = [fields[5] for fields in lines if fields[1] == "FLOCK" and fields[4] == str(os.getpid())]
    major, minor, inode = files.lock_key(path)
    assert f"{major:02x}:{minor:02x}:{inode}" in mine
