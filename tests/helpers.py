"""Shared test helpers: paths, sample rows, small models, running the command line."""

from __future__ import annotations

import atexit
import functools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import pytest
import torch

import checkpoint
import dlrm_mlet
from dlrm_model import DLRM, ModelConfig
from mlet.core.batch import SparseFeatures
from mlet.data.preprocessing.raw_generate import RawGenerator
from mlet.repro import sweep, sweep_plan
from mlet.repro.experiments import RunSpec

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(
    os.environ.get("DLRM_MLET_SAMPLES", ROOT.parent / "shared" / "data")
)  # the real sample rows (see its README)


def run_snippet(code: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run Python ``code`` with ``argv`` in a child process from the repository root (its ``mlet`` first on the
    path); its output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def sample_lines(name: str) -> list[str]:
    """Lines of ``../shared/data/NAME`` (real rows); where that directory is absent (a CI
    checkout elsewhere), as many rows of the synthetic click model in the same layout."""
    if SHARED_DATA.is_dir():
        return (SHARED_DATA / name).read_text().splitlines()
    return list(generated_sample_lines(name))


@functools.cache
def sample_file(name: str) -> Path:
    """``../shared/data/NAME``; where that directory is absent, a generated stand-in (see :func:`sample_lines`),
    written once."""
    if SHARED_DATA.is_dir():
        return SHARED_DATA / name
    directory = tempfile.mkdtemp(prefix="dlrm_mlet_samples_")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = Path(directory) / name
    path.write_text("\n".join(generated_sample_lines(name)) + "\n")
    return path


@functools.cache
def generated_sample_lines(name: str) -> tuple[str, ...]:
    """Generated stand-in for a shared sample file: same data set, row count and columns (no label for
    ``*nolabel*``)."""
    rows = int(re.search(r"(?:sample|head)(\d+)", name).group(1))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "raw")
        RawGenerator("avazu" if name.startswith("avazu") else "kaggle", rows, seed=7, scale=0.001).write(path)
        lines = path.read_text().splitlines()
    if "nolabel" in name:
        lines = [line.split("\t", 1)[1] for line in lines]
    return tuple(lines)


def small_config(hidden: int = 0, dim: int = 4, sizes: tuple[int, ...] = (50, 7, 300, 2)) -> ModelConfig:
    """A 4-table DLRM small enough for exact comparisons."""
    return ModelConfig(table_sizes=sizes, dim=dim, bottom_mlp=(13, 16, dim), top_mlp=(8, 1), mlet_hidden=hidden)


def random_inputs(config: ModelConfig, batch: int, seed: int, bag: int = 1) -> tuple[torch.Tensor, SparseFeatures]:
    """Dense features and bags of ``bag`` ids (1: one-hot) drawn from a fresh generator."""
    gen = torch.Generator().manual_seed(seed)
    dense = torch.rand(batch, config.bottom_mlp[0], generator=gen)
    num_tables = len(config.table_sizes)
    lengths = torch.randint(0 if bag > 1 else 1, bag + 1, (num_tables, batch), generator=gen)
    ids = [torch.randint(0, n, (int(lengths[t].sum()),), generator=gen) for t, n in enumerate(config.table_sizes)]
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.flatten().cumsum(0)])
    return dense, SparseFeatures(torch.cat(ids), offsets, num_tables, one_hot=bag == 1)


def train_random_steps(model: DLRM, opt, steps: int, first: int = 0, batch: int = 64, bag: int = 1) -> list[float]:
    """``steps`` optimisation steps on random batches ``first..``; the losses."""
    losses = []
    for step in range(first, first + steps):
        dense, features = random_inputs(model.config, batch=batch, seed=step, bag=bag)
        labels = torch.randint(0, 2, (batch,), generator=torch.Generator().manual_seed(step)).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(dense, features), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def override_flags(argv: list[str], *overrides: str) -> list[str]:
    """``argv`` with each ``--name=value`` of ``overrides`` in place of the same ``--name``'s value (appended)."""
    names = {flag.split("=", 1)[0] for flag in overrides}
    return [a for a in argv if a.split("=", 1)[0] not in names] + list(overrides)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Exit code (argparse's own exits included), stdout and stderr of ``dlrm_mlet.py argv``."""
    try:
        code = dlrm_mlet.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


# A few batches of random data through a tiny model: for command-line behaviour, not learning.
TINY = [
    "--data-generation=random",
    "--arch-embedding-size=200-30-5",
    "--arch-sparse-feature-size=4",
    "--arch-mlp-bot=13-8-4",
    "--arch-mlp-top=8-1",
    "--mini-batch-size=32",
    "--num-batches=12",
    "--learning-rate=0.1",
    "--progress=false",
]


# Two epochs of 10 batches of the synthetic click model (shuffled per epoch), MLET,
# Adagrad (optimizer state matters), warm-up and decay (the LR depends on the iteration).
RESUME_FLAGS = [
    "--data-generation=synthetic",
    "--synthetic-rank=4",
    "--arch-embedding-size=500-80-20-7",
    "--arch-sparse-feature-size=4",
    "--mlet-hidden=16",
    "--arch-mlp-bot=13-8-4",
    "--arch-mlp-top=8-1",
    "--mini-batch-size=32",
    "--num-batches=10",
    "--nepochs=2",
    "--optimizer=adagrad",
    "--learning-rate=0.3",
    "--lr-num-warmup-steps=3",
    "--lr-decay-start-step=8",
    "--lr-num-decay-steps=10",
    "--test-freq=5",
    "--test-data-size=128",
    "--progress=false",
    "--adapt-threads=false",  # bit for bit needs the same thread count all along (mlet/training/cpu_threads.py)
]


def interrupt_after_save(monkeypatch, stop_at: int) -> None:
    """Make the run stop (as on Ctrl-C) right after writing the checkpoint of iteration ``stop_at``."""
    original = dlrm_mlet.Trainer.save

    def save(self) -> None:
        original(self)
        if self.iteration == stop_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(dlrm_mlet.Trainer, "save", save)


def fake_payload(spec: RunSpec, peak: float) -> dict:
    """A results JSON as dlrm_mlet.py writes it: AUC peaks at ``peak`` (in steps of 4x) and grows with d (MLET:
    as 4x wider)."""
    width = spec.config.dim * (4 if spec.config.is_mlet else 1)
    auc = 0.70 + 0.01 * math.log2(width) - 0.005 * math.log(spec.lr / peak, 4) ** 2 + 0.0005 * spec.seed
    metrics = {"epoch": 0, "iteration": 10, "auc": auc, "logloss": 0.5 - auc / 10, "accuracy": 0.7, "samples": 100}
    return {
        "final": metrics,
        "val": {**metrics, "auc": auc - 0.001},
        "best": metrics,
        "history": [{**metrics, "iteration": 5, "auc": auc - 0.01}, metrics],
        "train_samples_per_second": 1000.0,
        "iterations": 10,
        "parameters": {
            "embedding_inference_bytes": 400 * spec.config.dim,
            "embedding_training_bytes": 400 * (spec.config.hidden or spec.config.dim),
        },
        "args": {
            "arch_sparse_feature_size": spec.config.dim,
            "mlet_hidden": spec.config.hidden,
            "optimizer": spec.optimizer,
            "learning_rate": spec.lr,
            "numpy_rand_seed": spec.seed,
            "arch_mlp_bot": f"13-8-{spec.config.dim}",
            "arch_mlp_top": "8-1",
            "mini_batch_size": 32,
            "nepochs": 1,
        },
        "data": "fake",
        "device": "cpu",
        "torch": "fake",
    }


def full_disk_save(obj: object, handle, *args, **kwargs) -> None:
    """``torch.save`` on a full disk, as torch 2.13 reports it: its zip writer's RuntimeError, raised while the
    OSError of the failed write is being handled."""
    handle.write(b"PK\x03\x04partial")
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None


class InterruptedFile:
    """A file that calls ``interrupt`` (raise Ctrl-C, send a signal) at its third write: inside ``torch.save``'s
    zip writer, halfway through a checkpoint."""

    def __init__(self, handle, interrupt: Callable[[], None]) -> None:
        self.handle, self.interrupt, self.writes = handle, interrupt, 0

    def write(self, data) -> int:
        self.writes += 1
        if self.writes == 3:
            self.interrupt()
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


RECORDER = '#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$CALLS/$(ls "$CALLS" | wc -l)"\n'
"""A stand-in for a shell script's ``PY``: records each command it would run (one file per call, one argument a
line) instead of running it."""


def run_script(
    script: str, caller_dir: Path, *argv: str, env: dict[str, str] | None = None, root: Path = ROOT
) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """``bash ROOT/scripts/SCRIPT ARGV...`` started in ``caller_dir`` with ``PY`` the :data:`RECORDER` (and
    ``env`` added, the caller's ``RUN_DIR`` left out); the result and the recorded calls. ``root`` is the
    repository the script is in: a copy elsewhere keeps a script's default run directory out of this one."""
    calls = caller_dir / "calls"
    calls.mkdir()
    python = caller_dir / "record_python"
    python.write_text(RECORDER)
    python.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k != "RUN_DIR"}
    done = subprocess.run(
        ["bash", str(root / "scripts" / script), *argv],
        cwd=caller_dir,
        env={**base, "PY": str(python), "CALLS": str(calls), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    recorded = [(calls / str(i)).read_text().splitlines() for i in range(len(list(calls.iterdir())))]
    return done, recorded


def wait_for(condition, what: str, timeout: float = 120) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout} s for {what}")
        time.sleep(0.1)


def kill_running(processes: Sequence[subprocess.Popen | None]) -> None:
    """Kill those of ``processes`` that were started and still run (a test that failed half-way)."""
    for process in processes:
        if process is not None and process.poll() is None:
            process.kill()


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(flags: list[str], script: Path = ROOT / "dlrm_mlet.py", processes: int = 2) -> list[str]:
    """The README's launch of ``dlrm_mlet.py`` (or ``script``) with ``flags``: torchrun (as ``python -m``), one host,
    ``processes`` processes."""
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [*run, str(script), *flags]


LONG_RUN = [  # random data, far more batches than a test waits for: a run that is stopped, not finished
    "--data-generation=random",
    "--arch-embedding-size=50-60-70",
    "--arch-sparse-feature-size=4",
    "--mlet-hidden=8",
    "--arch-mlp-bot=13-8-4",
    "--arch-mlp-top=8-1",
    "--mini-batch-size=32",
    "--num-batches=1000000",
    "--print-freq=1",
    "--dist-backend=gloo",
]
RANK_MARK = "DLRM_MLET_TEST_RANKS"
"""Set in a test's torchrun and its ranks, to find the ranks that it left running (:func:`kill_marked`)."""


def training_torchrun(
    flags: list[str],
    mark: str,
    wrapper: Sequence[str] = (),
    env: dict[str, str] | None = None,
    script: Path = ROOT / "dlrm_mlet.py",
    processes: int = 2,
) -> subprocess.Popen:
    """torchrun (:func:`torchrun_command`, run by the ``wrapper`` command in front, if any) training ``flags``, its
    output (stdout and stderr) on ``stdout``, returned once its ranks are training (the first step's line is out;
    what came before is consumed). Its ``processes`` carry ``mark`` (:func:`kill_marked`); ``env`` is added;
    ``script`` stands in for ``dlrm_mlet.py``."""
    agent = subprocess.Popen(
        [*wrapper, *torchrun_command(flags, script, processes)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), RANK_MARK: mark, **(env or {})},
    )
    assert agent.stdout is not None
    seen = []
    for line in agent.stdout:
        seen.append(line)
        if line.startswith("Finished training it"):
            return agent
    agent.kill()
    pytest.fail("torchrun ended before its ranks trained:\n" + "".join(seen)[-3000:])


def rank_pids(agent: int) -> dict[int, int]:
    """``{rank: pid}`` of the processes that torchrun ``agent`` started, from their environment."""
    pids = {}
    tasks = Path(f"/proc/{agent}/task").iterdir()  # its threads: a child is listed under the one that started it
    children = [child for task in tasks for child in (task / "children").read_text().split()]
    for child in children:
        variables = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        rank = next(v for v in variables if v.startswith(b"RANK="))
        pids[int(rank.split(b"=")[1])] = int(child)
    return pids


def read_to_end(stream: IO[str], timeout_s: float) -> str | None:
    """What is left on ``stream`` up to its end, or None if it has not ended within ``timeout_s``."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stream.read()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return got[0] if got else None


def kill_marked(mark: str) -> None:
    """SIGKILL every process whose environment has :data:`RANK_MARK` set to ``mark`` (a test's ranks)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if f"{RANK_MARK}={mark}".encode() in environ.read().split(b"\0"):
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:  # gone, or not ours to read
            continue


def torchrun_environment(rank: int, world: int, port: int) -> dict[str, str]:
    """The variables torchrun sets in process ``rank`` of ``world`` on one host, its store at ``port``."""
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


BUILD_HELD = """
import sys, time
from pathlib import Path
from mlet.data.preprocessing import cache
building, go = sys.argv[1:3]
renumber_pass = cache.renumber_pass
def held(*args, **kwargs):  # the build goes on once the other run says that it waits for it
    Path(building).touch()
    deadline = time.monotonic() + 120
    while not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return renumber_pass(*args, **kwargs)
cache.renumber_pass = held
"""
"""The start of a ``python -c`` snippet whose cache build, once begun, touches ``sys.argv[1]`` and waits for the
file ``sys.argv[2]`` to exist; what follows it runs the build."""


class FakeTrainer:
    """Stands in for dlrm_mlet.py: records the runs and writes their JSON (or fails the names in ``fail``)."""

    def __init__(self, peak: float = 3.2, fail: set[str] | None = None) -> None:
        self.peak, self.fail, self.calls = peak, fail or set(), []

    def __call__(self, spec: RunSpec, argv: list[str], log: Path) -> int:
        self.calls.append(spec.name)
        log.write_text(" ".join(argv))
        if spec.name in self.fail:
            return 1
        out = next(a.split("=", 1)[1] for a in argv if a.startswith("--results-json="))
        Path(out).write_text(json.dumps(fake_payload(spec, self.peak)))
        return 0


def make_settings(run_dir: Path, *extra: str) -> sweep_plan.Settings:
    """A small sweep's settings (baselines d=2 and 8, MLET d=2 K=16, seeds 1 2, SGD at 0.2 and 0.8) in ``run_dir``,
    ``extra`` sweep flags added, synthetic data."""
    argv = [
        "--run-dir",
        str(run_dir),
        "--baseline-dims",
        "2",
        "8",
        "--mlet-dims",
        "2",
        "--mlet-hidden",
        "16",
        "--seeds",
        "1",
        "2",
    ]
    argv += ["--optimizers", "sgd", "--lrs", "sgd=0.2,0.8", "--paper-lr", "sgd=0.2", "--max-widen", "3", *extra]
    return sweep.settings_from_args(sweep.build_parser().parse_args([*argv, "--", "--data-generation=synthetic"]))


# -- full_scale.py's pieces, small and on the CPU -------------------------------------------------------

ROWS, SCALE = 30_000, 0.0005
GRID = [
    "--baseline-dims", "4", "8", "--mlet-dims", "4", "--seeds", "1", "2", "--optimizers", "sgd",
    "--lrs", "sgd=0.2,0.8", "--mlp-bot-prefix", "13-8",
]  # fmt: skip
TRAIN = ["--", "--arch-mlp-top=8-1", "--mini-batch-size=512", "--test-mini-batch-size=4096", "--adapt-threads=false"]


def piece_args(run_dir, *extra: str) -> list[str]:
    """The command line of a small CPU piece."""
    return ["--run-dir", str(run_dir), "--rows", str(ROWS), "--scale", str(SCALE), "--device", "cpu", *extra, *GRID,
            *TRAIN]  # fmt: skip


def running(pid: int) -> bool:
    """Whether process ``pid`` is alive (a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


SNIPPET_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # as run_snippet's, whose pipes a live worker would hold open


# -- the checkpoint tests' tiny runs -----------------------------------------------

CHECKPOINT_TINY = [
    "--data-generation=synthetic",
    "--synthetic-rank=4",
    "--arch-embedding-size=60000-3000-500",
    "--arch-sparse-feature-size=4",
    "--arch-mlp-bot=13-8-4",
    "--arch-mlp-top=8-1",
    "--mini-batch-size=64",
    "--num-batches=20",
    "--test-data-size=2000",
    "--test-mini-batch-size=500",
    "--learning-rate=0.5",
    "--progress=false",
]
CHECKPOINT_K = 32


def train_checkpoint_runs(out: Path) -> dict[str, Path]:
    """In ``out``: an MLET K=32 run (with --save-collapsed), its `checkpoint.py collapse`, and a baseline d=4 run
    (the ``checkpoint_runs`` fixture, shared by the checkpoint tests)."""
    paths = {name: out / f"{name}.pt" for name in ("mlet", "mlet_collapsed", "cli_collapsed", "baseline")}
    assert (
        dlrm_mlet.main(
            [
                *CHECKPOINT_TINY,
                f"--mlet-hidden={CHECKPOINT_K}",
                f"--save-model={paths['mlet']}",
                f"--save-collapsed={paths['mlet_collapsed']}",
                f"--results-json={out / 'mlet.json'}",
            ]
        )
        == 0
    )
    assert checkpoint.main(["collapse", str(paths["mlet"]), str(paths["cli_collapsed"])]) == 0
    assert dlrm_mlet.main([*CHECKPOINT_TINY, "--num-batches=1", f"--save-model={paths['baseline']}"]) == 0
    return paths
