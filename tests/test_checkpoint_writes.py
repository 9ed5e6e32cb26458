"""Writing checkpoints: atomic under SIGKILL, one-line errors for unwritable paths and full disks, permissions."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, InterruptedFile, full_disk_save

from mlet.core.errors import UserError
from mlet.core.signals import Terminated
from mlet.training import checkpoints
from mlet.training.checkpoints import FORMAT, VERSION, atomic_save

# -- atomic writes -------------------------------------------------------------

# A child that forks writers; each writer saves versions (step, payload filled
# with step) of a 16 MiB checkpoint over the same file until it is killed. The
# last writer pauses inside its third save, after writing the temporary file
# and before its fsync and rename, so that one kill lands mid-save for sure;
# the others are killed at random moments. The paused one is the last, so
# that its temporary file is still there at the end (each save removes the
# leftovers of killed writers).
WRITER = r"""
import os, stat, sys, time
import torch
from mlet.training.checkpoints import FORMAT, VERSION, atomic_save

target, rounds = sys.argv[1], int(sys.argv[2])

def write_forever(round_, pause_at):
    step = 0
    real_fsync = os.fsync
    def fsync(fd):
        if step == pause_at and stat.S_ISREG(os.fstat(fd).st_mode):
            print("pausing", flush=True)
            time.sleep(600)
        real_fsync(fd)
    os.fsync = fsync
    while True:
        atomic_save({"format": FORMAT, "version": VERSION, "kind": "test", "round": round_, "step": step,
                     "payload": torch.full((1 << 22,), float(step))}, target)
        print(f"saved {step}", flush=True)
        step += 1

for r in range(rounds):
    sys.stdin.readline()  # go
    pid = os.fork()
    if pid == 0:
        write_forever(r, 2 if r == rounds - 1 else -1)
    print(f"writer {pid}", flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


def temporaries(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*.tmp"))


def check_intact(target: Path, round_: int, last_saved: int) -> None:
    """The file holds one complete version: the last one reported saved, or the next (killed between rename and
    report)."""
    ckpt = torch.load(target, weights_only=True)
    assert ckpt["round"] == round_ and ckpt["step"] in (last_saved, last_saved + 1)
    assert torch.equal(ckpt["payload"], torch.full((1 << 22,), float(ckpt["step"])))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_killing_writers_mid_save_leaves_the_previous_checkpoint_intact(tmp_path) -> None:
    target = tmp_path / "ckpt.pt"
    rounds, rng = 4, random.Random(0)
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target), str(rounds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    try:
        for r in range(rounds):
            child.stdin.write("go\n")
            child.stdin.flush()
            writer = int(child.stdout.readline().split()[1])
            last = -1
            while True:
                line = child.stdout.readline().strip()
                if line.startswith("saved"):
                    last = int(line.split()[1])
                if r == rounds - 1 and line == "pausing":
                    assert last == 1
                    break
                if r < rounds - 1 and last >= 1:
                    time.sleep(rng.uniform(0.0, 0.25))  # a random moment, often inside the next save
                    break
            os.kill(writer, signal.SIGKILL)
            while (line := child.stdout.readline().strip()) != "reaped":  # what it reported before dying
                last = int(line.split()[1]) if line.startswith("saved") else last
            check_intact(target, r, last)
            if (
                r == rounds - 1
            ):  # killed inside the save: its temporary file is left, the target is the previous version
                assert torch.load(target, weights_only=True)["step"] == 1
                assert any(f".{writer}." in p.name for p in temporaries(target))
    finally:
        child.kill()
        child.wait()
    assert temporaries(target)  # the leftover of the writer killed mid-save ...
    atomic_save({"format": FORMAT, "version": VERSION, "kind": "test", "step": -1}, target)
    assert temporaries(target) == []  # ... are removed by the next save, and never read
    assert torch.load(target, weights_only=True)["step"] == -1


def test_stale_temporaries_of_live_writers_are_kept(tmp_path) -> None:
    target = tmp_path / "a.pt"
    host = socket.gethostname()
    live = tmp_path / f".a.pt.{host}.{os.getpid()}.abc123.tmp"
    other_host = tmp_path / ".a.pt.elsewhere.1.abc123.tmp"
    dead_pid = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dead = tmp_path / f".a.pt.{host}.{dead_pid}.abc123.tmp"
    unrelated = tmp_path / f".b.pt.{host}.{dead_pid}.abc123.tmp"
    for p in (live, other_host, dead, unrelated):
        p.write_bytes(b"partial")
    assert checkpoints.remove_stale_temporaries(target) == [dead]
    assert live.exists() and other_host.exists() and unrelated.exists()


def test_unwritable_checkpoint_path_is_one_line(tmp_path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot write the checkpoint"):
        atomic_save({"x": 1}, tmp_path / "file" / "ckpt.pt")


def test_full_disk_is_one_line_with_the_errno_text_and_no_temporary(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(torch, "save", lambda obj, handle, *a, **k: full_disk_save(obj, handle))
    # from None only hides the context from tracebacks: the OSError is still the RuntimeError's __context__
    with pytest.raises(UserError) as raised:
        atomic_save({"x": 1}, tmp_path / "a.pt")
    assert str(raised.value) == f"{tmp_path / 'a.pt'}: cannot write the checkpoint (No space left on device)"
    assert list(tmp_path.iterdir()) == []


def test_errors_that_are_not_about_writing_are_not_disguised(monkeypatch, tmp_path) -> None:
    def broken_save(obj, handle, *args, **kwargs):
        raise RuntimeError("a bug, not a full disk")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="a bug"):
        atomic_save({"x": 1}, tmp_path / "a.pt")
    assert list(tmp_path.iterdir()) == []

    def bug_while_handling_an_os_error(obj, handle, *args, **kwargs):
        try:
            open(tmp_path / "missing" / "x")  # noqa: SIM115  (an OSError being handled, unrelated to the write)
        except OSError:
            raise RuntimeError("Tried to serialize object of unsupported type") from None

    monkeypatch.setattr(torch, "save", bug_while_handling_an_os_error)
    with pytest.raises(RuntimeError, match="unsupported type"):
        atomic_save({"x": 1}, tmp_path / "a.pt")


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), Terminated()], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_inside_the_writer_is_given_back_not_reported_as_a_failed_write(
    stop: KeyboardInterrupt, monkeypatch, tmp_path
) -> None:
    """torch's zip writer turns it into a ``RuntimeError`` (``unexpected pos``): the run ends as interrupted, not
    with 'cannot write the checkpoint', and no temporary file is left."""
    save = torch.save

    def interrupt() -> None:
        raise stop

    def interrupted_save(obj, handle, *args, **kwargs) -> None:
        save(obj, InterruptedFile(handle, interrupt), *args, **kwargs)

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt) as raised:
        atomic_save({"x": torch.zeros(10_000)}, tmp_path / "a.pt")
    assert raised.value is stop
    assert list(tmp_path.iterdir()) == []


# The real torch writer meeting a write that fails mid-file: a file-size limit makes write() fail with EFBIG
# (SIGXFSZ ignored), as a full disk makes it fail with ENOSPC.
FILE_SIZE_LIMIT = r"""
import resource, signal, sys
import torch
from mlet.core.errors import UserError
from mlet.core.signals import Terminated
from mlet.training.checkpoints import atomic_save
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    atomic_save({"x": torch.zeros(100_000)}, sys.argv[1])
except UserError as error:
    print(error)
"""


def test_a_write_failing_inside_torch_is_one_line_with_the_errno_text(tmp_path) -> None:
    target = tmp_path / "big.pt"
    done = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMIT, str(target)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{target}: cannot write the checkpoint (File too large)"
    assert list(tmp_path.iterdir()) == []


def test_saved_files_get_normal_permissions(tmp_path) -> None:
    atomic_save({"x": 1}, tmp_path / "a.pt")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o666 & ~umask
