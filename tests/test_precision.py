"""Mixed precision (--bf16): MLPs and interaction in bfloat16, tables and weights in float32; trains and resumes.

On the CPU autocast emulates bfloat16 (slowly), so the models here are tiny;
the speed and the AUC effect are measured on a GPU (bench/precision_auc.py).
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import RESUME_FLAGS, interrupt_after_save, random_inputs, run_cli, small_config

from dlrm_model import DLRM
from mlet.core.batch import Batch
from mlet.training.checkpoints import load_checkpoint
from mlet.training.optimizers import build_optimizer
from mlet.training.precision import autocast
from mlet.training.train_step import TrainStep

CPU = torch.device("cpu")


def test_tables_stay_float32_and_the_mlps_run_in_bfloat16() -> None:
    model = DLRM(small_config(hidden=8), seed=1)
    dense, features = random_inputs(model.config, batch=16, seed=2)
    with autocast(CPU, bf16=True):
        embedded = model.tables(features)
        bottom = model.bottom(dense)
        logits = model(dense, features)
    assert embedded.dtype == torch.float32 and bottom.dtype == torch.bfloat16 and logits.dtype == torch.bfloat16
    with autocast(CPU, bf16=False):
        assert model(dense, features).dtype == torch.float32


def train(hidden: int, bf16: bool, steps: int = 200) -> tuple[DLRM, list[float]]:
    """``steps`` SGD steps of a small model on one batch whose labels follow a dense feature; the losses."""
    model = DLRM(small_config(hidden=hidden), seed=1)
    optimizer = build_optimizer("sgd", 0.1, model.sparse_parameters(), model.dense_parameters(), model.tables)
    step = TrainStep(model, torch.nn.functional.binary_cross_entropy_with_logits, optimizer, bf16=bf16)
    dense, features = random_inputs(model.config, batch=64, seed=3)
    batch = Batch(dense, features, (dense[:, 0] > 0.5).float())
    return model, [float(step(batch)) for _ in range(steps)]


@pytest.mark.parametrize("hidden", [0, 8])
def test_bf16_steps_update_float32_weights_and_train_like_float32(hidden: int) -> None:
    model, bf16 = train(hidden, bf16=True)
    reference, fp32 = train(hidden, bf16=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert fp32[-1] < fp32[0] - 0.05 and bf16[-1] < bf16[0] - 0.05  # both learn
    assert abs(bf16[-1] - fp32[-1]) < 0.02  # and end close
    assert not torch.equal(model.bottom[0].weight, reference.bottom[0].weight)  # bf16 is not a no-op
    assert not torch.equal(model.tables.weight, DLRM(small_config(hidden=hidden), seed=1).tables.weight)


def test_bf16_runs_resume_exactly(tmp_path, monkeypatch, capsys) -> None:
    flags = [*RESUME_FLAGS, "--bf16"]
    straight = tmp_path / "straight.pt"
    code, _, err = run_cli([*flags, f"--save-model={straight}", f"--results-json={tmp_path / 's.json'}"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "s.json").read_text())["args"]["bf16"] is True
    ckpt = tmp_path / "run.pt"
    with monkeypatch.context() as patch:
        interrupt_after_save(patch, 7)
        assert run_cli([*flags, f"--save-model={ckpt}", "--save-freq=7"], capsys)[0] == 130
    code, out, err = run_cli([*flags, f"--load-model={ckpt}", f"--save-model={ckpt}"], capsys)
    assert code == 0 and "resuming" in out, err
    resumed, whole = load_checkpoint(ckpt), load_checkpoint(straight)
    for name, tensor in whole["model"].items():
        assert tensor.dtype == torch.float32 and torch.equal(resumed["model"][name], tensor), name
    assert resumed["history"] == whole["history"]
