"""Shared test helpers: import path and small models."""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch

# Triton's interpreter (for the kernel tests on CPU) must be chosen before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dlrm_model import DLRM, ModelConfig  # noqa: E402
from mlet.core.batch import SparseFeatures  # noqa: E402

SHARED_DATA = Path(os.environ.get("DLRM_MLET_SAMPLES", ROOT.parent / "shared" / "data"))  # the real sample rows (see its README)


def sample_lines(name: str) -> list[str]:
    """Lines of ``../shared/data/NAME`` (real rows); where that directory is absent (a CI
    checkout elsewhere), as many rows of the synthetic click model in the same layout."""
    if SHARED_DATA.is_dir():
        return (SHARED_DATA / name).read_text().splitlines()
    return list(generated_sample_lines(name))


@functools.cache
def sample_file(name: str) -> Path:
    """``../shared/data/NAME``; where that directory is absent, a generated stand-in (see :func:`sample_lines`), written once."""
    if SHARED_DATA.is_dir():
        return SHARED_DATA / name
    directory = tempfile.mkdtemp(prefix="dlrm_mlet_samples_")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = Path(directory) / name
    path.write_text("\n".join(generated_sample_lines(name)) + "\n")
    return path


@functools.cache
def generated_sample_lines(name: str) -> tuple[str, ...]:
    """Generated stand-in for a shared sample file: same data set, row count and columns (no label for ``*nolabel*``)."""
    from mlet.data.preprocessing.raw_generate import RawGenerator

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
    import dlrm_mlet

    try:
        code = dlrm_mlet.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def make_model():
    """Factory: ``make_model(hidden, seed=..., dim=...)``."""

    def make(hidden: int = 0, seed: int = 0, **kw) -> DLRM:
        return DLRM(small_config(hidden, **kw), seed=seed)

    return make
