"""Check that N processes train like one: same seed and global batch, same steps.

For each scenario, ``dlrm_mlet.py`` runs once in one process and once under
``torchrun`` with N processes, and the runs are compared: the loss of every
step, the final parameters and optimizer state (gathered checkpoints), and the
test AUC and log loss. The resume check saves half-way in one layout and
continues in the other (1 -> N and N -> 1 processes), against a straight run.

``bench/distributed_equivalence.py`` runs these checks as commands (one
process, then ``torchrun``) and writes the table; ``tests/test_distributed.py``
runs them with forked processes.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

TOLERANCE = 1e-5
STEP_LINE = re.compile(r"Finished training it (\d+)/\d+ of epoch (\d+),.* loss ([-+0-9.eE]+|nan)")

# 15 batches of 33 per epoch, the last one of 7 (odd: the ranks' shares differ), 2 epochs = 30 steps.
COMMON = [
    "--arch-sparse-feature-size=4",
    "--arch-mlp-bot=13-16-4",
    "--arch-mlp-top=8-1",
    "--mini-batch-size=33",
    "--data-size=469",
    "--test-data-size=101",
    "--learning-rate=0.1",
    "--numpy-rand-seed=7",
    "--nepochs=2",
    "--print-freq=1",
    "--print-precision=9",
    "--progress=false",
]
SCENARIOS = {
    # tables > ranks, synthetic click data (one id per bag, shuffled per epoch); fused table update
    "mlet-sgd-4-tables": ["--data-generation=synthetic", "--arch-embedding-size=50-7-300-2", "--mlet-hidden=16"],
    # ranks > tables: one rank owns nothing; multi-hot random bags; torch's sparse SGD (not the fused update)
    "baseline-sgd-1-table": [
        "--data-generation=random",
        "--arch-embedding-size=300",
        "--num-indices-per-lookup=3",
        "--embedding-update=autograd",
    ],
    # 3 tables on 2 ranks, Adagrad (per-row state)
    "mlet-adagrad-3-tables": [
        "--data-generation=random",
        "--arch-embedding-size=50-7-300",
        "--mlet-hidden=16",
        "--optimizer=adagrad",
        "--num-indices-per-lookup=3",
    ],
    # row-wise Adagrad (one accumulator a row), multi-hot MLET: 2 tables, so a third rank owns none
    "mlet-rwsadagrad-2-tables": [
        "--data-generation=random",
        "--arch-embedding-size=50-300",
        "--mlet-hidden=16",
        "--optimizer=rwsadagrad",
        "--num-indices-per-lookup=3",
    ],
    # SparseAdam for the tables, Adam for the rest
    "baseline-adam-4-tables": [
        "--data-generation=random",
        "--arch-embedding-size=50-7-300-2",
        "--optimizer=adam",
        "--learning-rate=0.01",
    ],
    # the data held on the device: each process keeps only its tables' ids and cuts its share of every batch there
    "mlet-sgd-4-tables-on-device": [
        "--data-generation=synthetic",
        "--arch-embedding-size=50-7-300-2",
        "--mlet-hidden=16",
        "--data-on-device=on",
    ],
}
RESUME_SCENARIO = "mlet-adagrad-3-tables"


@dataclass
class Outcome:
    """What a run printed (rank 0's output for several processes) and its exit code."""

    code: int
    stdout: str
    stderr: str


Runner = Callable[[int, list[str]], Outcome]


def scenario_flags(name: str, extra: list[str] | None = None) -> list[str]:
    """The command line of a scenario."""
    return [*COMMON, *SCENARIOS[name], *(extra or [])]


def step_losses(stdout: str) -> list[float]:
    """The loss of every 'Finished training it' line (run with ``--print-freq=1``)."""
    return [float(m.group(3)) for m in STEP_LINE.finditer(stdout)]


def tensor_difference(a: object, b: object) -> float:
    """Largest absolute difference of two tensors (inf if their shapes differ); 0/inf for other values."""
    if torch.is_tensor(a) and torch.is_tensor(b):
        if a.shape != b.shape:
            return math.inf
        return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    return 0.0 if a == b else math.inf


def state_differences(a: dict, b: dict) -> dict[str, float]:
    """Largest differences between two checkpoints' parameters and optimizer state."""
    models, states = a["model"], b["model"]
    params = (
        max(tensor_difference(models[k], states[k]) for k in models) if models.keys() == states.keys() else math.inf
    )
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    optimizer = 0.0
    if sa.keys() != sb.keys() or any(sa[n].keys() != sb[n].keys() for n in sa):
        optimizer = math.inf
    else:
        optimizer = max((tensor_difference(sa[n][k], sb[n][k]) for n in sa for k in sa[n]), default=0.0)
    return {"params": params, "optimizer_state": optimizer}


def load(path: Path) -> dict:
    """A checkpoint, on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def run_checked(run: Runner, nproc: int, flags: list[str]) -> Outcome:
    """Run and insist on success."""
    outcome = run(nproc, flags)
    if outcome.code != 0:
        raise RuntimeError(f"{nproc} process(es) exited {outcome.code}: {outcome.stderr.strip()[-2000:]}")
    return outcome


def compare_scenario(name: str, run: Runner, workdir: Path, nproc: int) -> dict:
    """One process vs ``nproc`` processes on scenario ``name``: largest differences."""
    outputs = {}
    for count in (1, nproc):
        files = [f"--save-model={workdir / f'{name}-{count}.pt'}", f"--results-json={workdir / f'{name}-{count}.json'}"]
        outputs[count] = run_checked(run, count, scenario_flags(name, files))
    losses = {count: step_losses(out.stdout) for count, out in outputs.items()}
    results = {count: json.loads((workdir / f"{name}-{count}.json").read_text()) for count in outputs}
    one, many = results[1]["final"], results[nproc]["final"]
    same_steps = len(losses[1]) == len(losses[nproc]) > 0
    return {
        "scenario": name,
        "processes": nproc,
        "steps": len(losses[nproc]),
        "loss": max(abs(x - y) for x, y in zip(losses[1], losses[nproc])) if same_steps else math.inf,
        **state_differences(load(workdir / f"{name}-1.pt"), load(workdir / f"{name}-{nproc}.pt")),
        "auc": abs(one["auc"] - many["auc"]),
        "logloss": abs(one["logloss"] - many["logloss"]),
        "test_samples": [one["samples"], many["samples"]],
    }


def compare_resume(
    run: Runner, workdir: Path, nproc: int, resume_nproc: int | None = None, name: str = RESUME_SCENARIO
) -> list[dict]:
    """Save after one epoch in one layout, finish in another, compare with a straight one-process run
    (scenario ``name``).

    Continues a 1-process checkpoint in ``nproc`` processes, an ``nproc`` checkpoint
    in 1 process and, if given, in ``resume_nproc`` processes.
    """
    straight = workdir / f"{name}-straight.pt"
    run_checked(run, 1, scenario_flags(name, [f"--save-model={straight}"]))
    halves = {}
    for count in (1, nproc):
        halves[count] = workdir / f"{name}-half-{count}.pt"
        run_checked(run, count, scenario_flags(name, ["--nepochs=1", f"--save-model={halves[count]}"]))
    rows = []
    for saved, resumed in [(1, nproc), (nproc, 1), *([(nproc, resume_nproc)] if resume_nproc else [])]:
        final = workdir / f"{name}-from-{saved}-in-{resumed}.pt"
        run_checked(run, resumed, scenario_flags(name, [f"--load-model={halves[saved]}", f"--save-model={final}"]))
        rows.append(
            {
                "scenario": f"resume: saved by {saved}, continued by {resumed}",
                **state_differences(load(straight), load(final)),
            }
        )
    return rows


def worst(row: dict) -> float:
    """The largest difference in a comparison row."""
    return max(v for k, v in row.items() if k in ("loss", "params", "optimizer_state", "auc", "logloss"))


def subprocess_runner(use_gpu: bool, timeout: int) -> Runner:
    """Runs ``dlrm_mlet.py`` as a command: plainly for one process, under torchrun for more."""

    def run(nproc: int, flags: list[str]) -> Outcome:
        launcher = (
            [sys.executable]
            if nproc == 1
            else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        )
        command = [*launcher, "-m", "dlrm_mlet", *flags, *(["--use-gpu"] if use_gpu else [])]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        return Outcome(done.returncode, done.stdout, done.stderr)

    return run
