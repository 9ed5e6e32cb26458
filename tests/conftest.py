"""pytest configuration: Triton's interpreter on CPU-only machines, and shared fixtures (helpers are in helpers.py)."""

from __future__ import annotations

import os

import torch

# Triton's interpreter (for the kernel tests on CPU) must be chosen before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from helpers import small_config, train_checkpoint_runs

from dlrm_model import DLRM


@pytest.fixture
def make_model():
    """Factory: ``make_model(hidden, seed=..., dim=...)``."""

    def make(hidden: int = 0, seed: int = 0, **kw) -> DLRM:
        return DLRM(small_config(hidden, **kw), seed=seed)

    return make


@pytest.fixture(scope="session")
def checkpoint_runs(tmp_path_factory):
    """:func:`helpers.train_checkpoint_runs`, trained once for every checkpoint test module."""
    return train_checkpoint_runs(tmp_path_factory.mktemp("checkpoint_runs"))
