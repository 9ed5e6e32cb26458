"""Quotient-remainder and mixed-dimension tables: shapes, init, lookups against an explicit reference,
training, collapse with MLET, checkpoints, the md_solver, popularity from counts."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import random_inputs, small_config, train_random_steps

from dlrm_model import DLRM
from mlet.core.config import ModelConfig
from mlet.data.preprocessing.vocabulary import IdLimits
from mlet.model.composite import CompositeTables
from mlet.model.mixed_dimension import effective_rows, md_solver, md_widths
from mlet.training.checkpoints import PLAIN_VERSION, VERSION, atomic_save, load_checkpoint, model_from_checkpoint
from mlet.training.optimizers import build_optimizer
from mlet_layers import EmbeddingTables

SIZES = (50, 7, 300, 2)
QR = {"qr_flag": True, "qr_threshold": 10, "qr_collisions": 4}
KINDS = {
    "qr-mult": {**QR, "qr_operation": "mult"},
    "qr-add": {**QR, "qr_operation": "add"},
    "qr-concat": {**QR, "qr_operation": "concat"},
    "md": {"md_dims": (2, 4, 1, 4)},
    "qr+md": {**QR, "qr_threshold": 100, "qr_operation": "add", "md_dims": (2, 4, 3, 4)},
}


def config(kind: str, hidden: int = 0) -> ModelConfig:
    return replace(small_config(hidden, sizes=SIZES), **KINDS[kind])


def trained_looking(model: DLRM, seed: int = 1) -> DLRM:
    """Table weights far from their small initial values, so that outputs vary."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("tables."):
                p.normal_(0.0, 0.3, generator=gen)
    return model


def stored_rows(tables: CompositeTables, feature: int, part: int) -> torch.Tensor:
    """The rows (as the interaction would see them before combining: W1 @ W2 for MLET) of one slot."""
    slot = next(s for s in tables.plan.slots if (s.feature, s.part) == (feature, part))
    group = tables.groups[slot.group]
    rows = group.table_weight(slot.index)
    return rows @ group.w2[slot.index] if group.is_mlet else rows


def reference_row(tables: CompositeTables, feature: int, ids: torch.Tensor) -> torch.Tensor:
    """The sum-pooled embedding of one bag, from the explicit definitions (per id, then pooled as upstream)."""
    table = tables.config.table_configs()[feature]
    if table.kind == "qr":
        c = table.collisions
        q = stored_rows(tables, feature, 0)[ids // c].sum(0)
        r = stored_rows(tables, feature, 1)[ids % c].sum(0)
        return {"mult": q * r, "add": q + r, "concat": torch.cat([q, r])}[table.operation]
    rows = stored_rows(tables, feature, 0)[ids].sum(0)
    if table.kind == "md":
        slot = next(s for s in tables.plan.slots if s.feature == feature)
        rows = rows @ tables.md_projections[str(slot.group)][slot.index]
    return rows


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("hidden", [0, 16])
def test_shapes_follow_the_config(kind: str, hidden: int) -> None:
    cfg = config(kind, hidden)
    tables = DLRM(cfg, seed=0).tables
    assert isinstance(tables, CompositeTables)
    for t, table in enumerate(cfg.table_configs()):
        slots = tables.plan.parts_of(t)
        assert [s.rows for s in slots] == list(table.parts)
        for s in slots:
            group = tables.groups[s.group]
            assert group.table_weight(s.index).shape == (s.rows, (hidden and table.hidden) or table.width)
    qr_50 = cfg.table_configs()[0]
    if kind.startswith("qr-"):
        assert qr_50.parts == (13, 4)  # ceil(50 / 4) quotient rows, 4 remainder rows
        assert qr_50.width == (2 if kind == "qr-concat" else 4)
    params = sum(p.numel() for n, p in DLRM(cfg).named_parameters() if n.startswith("tables."))
    assert params == cfg.parameter_counts()["embedding_training"]


def test_mixed_dimension_mlet_inner_width_scales_with_the_width() -> None:
    cfg = config("md", hidden=16)
    assert [t.hidden for t in cfg.table_configs()] == [8, 16, 4, 16]  # K * d_t / d, K at d
    assert [t.projected for t in cfg.table_configs()] == [True, False, True, False]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("hidden", [0, 16])
@pytest.mark.parametrize("bag", [1, 3])
def test_lookup_matches_explicit_reference(kind: str, hidden: int, bag: int) -> None:
    model = trained_looking(DLRM(config(kind, hidden), seed=2))
    tables = model.tables
    _, features = random_inputs(model.config, batch=9, seed=11, bag=bag)
    got = tables(features)
    batch = features.batch_size
    expected = torch.zeros_like(got)
    for t in range(tables.num_tables):
        for b in range(batch):
            lo, hi = features.offsets[t * batch + b], features.offsets[t * batch + b + 1]
            expected[b, t] = reference_row(tables, t, features.indices[lo:hi])
    assert got.abs().max() > 0.05
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
def test_init_bounds_and_determinism(operation: str) -> None:
    cfg = replace(small_config(0, sizes=SIZES), **{**QR, "qr_operation": operation})
    tables = DLRM(cfg, seed=3).tables
    assert torch.equal(DLRM(cfg, seed=3).tables.groups[0].weight, tables.groups[0].weight)
    assert not torch.equal(DLRM(cfg, seed=4).tables.groups[0].weight, tables.groups[0].weight)
    quotient, remainder = stored_rows(tables, 2, 0), stored_rows(tables, 2, 1)
    bound = math.sqrt(1 / 300)
    assert quotient.abs().max() <= bound and quotient.abs().max() > 0.5 * bound
    if operation == "mult":  # the remainder scales the quotient rows: uniform(+-1)
        assert remainder.abs().max() <= 1 and remainder.abs().max() > 0.5
    else:
        assert remainder.abs().max() <= bound
    # a plain feature of the composite starts as in a plain model of the same seed
    plain = DLRM(small_config(0, sizes=SIZES), seed=3).tables
    torch.testing.assert_close(stored_rows(tables, 1, 0), plain.table_weight(1), rtol=0, atol=0)


def test_md_projections_start_xavier_uniform() -> None:
    tables = DLRM(config("md"), seed=0).tables
    projection = tables.md_projections[str(tables.plan.parts_of(0)[0].group)]
    bound = math.sqrt(6 / (2 + 4))
    assert projection.abs().max() <= bound and projection.std() > 0.3 * bound


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_training_reduces_loss_and_fused_equals_autograd(kind: str, optimizer: str) -> None:
    """Fused row updates (one per group) and torch's sparse optimizer take the same steps; the loss falls
    on a fixed batch."""
    losses = {}
    for fused in (True, False):
        model = DLRM(config(kind, hidden=16), seed=5)
        opt = build_optimizer(
            optimizer,
            1.0 if optimizer == "sgd" else 0.1,
            model.sparse_parameters(),
            model.dense_parameters(),
            model.table_modules() if fused else None,
        )
        dense, features = random_inputs(model.config, batch=64, seed=1)
        labels = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(2)).float()
        steps = []
        for _ in range(30):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(dense, features), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps.append(loss.item())
        losses[fused] = steps
    assert losses[True][-1] < losses[True][0] - 0.03
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bag", [1, 4])
def test_collapse_equals_two_layer_model(kind: str, bag: int) -> None:
    model = trained_looking(DLRM(config(kind, hidden=16), seed=7))
    collapsed = model.collapse()
    assert collapsed.config.mlet_hidden == 0 and collapsed.config.is_composite
    assert not any(g.is_mlet for g in collapsed.tables.groups)
    assert collapsed.tables.inference_bytes() == 4 * model.config.parameter_counts()["embedding_inference"]
    dense, features = random_inputs(model.config, batch=128, seed=4, bag=bag)
    with torch.no_grad():
        two_layer, folded = model(dense, features), collapsed(dense, features)
    assert two_layer.std() > 0.1
    assert (two_layer - folded).abs().max() <= 1e-6
    # the collapsed state loads into a fresh model of the collapsed config (the inference model)
    fresh = DLRM(collapsed.config, seed=9)
    fresh.load_state_dict(collapsed.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(dense, features), folded, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["qr-concat", "md"])
def test_checkpoint_round_trip(kind: str, tmp_path) -> None:
    model = trained_looking(DLRM(config(kind, hidden=16), seed=8))
    ckpt = {"format": "dlrm-mlet-checkpoint", "version": VERSION, "kind": "inference"}
    ckpt |= {"model_config": model.config.to_dict(), "model": model.state_dict()}
    atomic_save(ckpt, tmp_path / "m.pt")
    loaded = model_from_checkpoint(load_checkpoint(tmp_path / "m.pt"))
    assert loaded.config == model.config
    dense, features = random_inputs(model.config, batch=32, seed=3, bag=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(dense, features), model(dense, features), rtol=0, atol=0)
    damaged = dict(ckpt, model={k: v[:-1] if k.endswith("groups.1.weight") else v for k, v in ckpt["model"].items()})
    atomic_save(damaged, tmp_path / "bad.pt")
    with pytest.raises(Exception, match="model_config describes tables of"):
        load_checkpoint(tmp_path / "bad.pt")


def test_old_configs_load_and_plain_checkpoints_stay_version_2(tmp_path) -> None:
    """A model_config written before the new fields builds the same model; plain checkpoints stay format 2."""
    old = {k: v for k, v in small_config(16).to_dict().items() if not k.startswith(("qr_", "md_"))}
    assert ModelConfig.from_dict(old) == small_config(16)
    assert not ModelConfig.from_dict(old).is_composite
    assert isinstance(DLRM(ModelConfig.from_dict(old)).tables, EmbeddingTables)
    from mlet.training.checkpoints import format_version

    assert format_version({"model_config": old}) == PLAIN_VERSION == 2
    assert format_version({"model_config": config("md").to_dict()}) == VERSION == 3


def test_md_solver_follows_upstream() -> None:
    # the table with the fewest rows per query gets d; the others d * (r_min / r) ** alpha, rounded, >= 1
    assert md_solver([4, 400, 40_000], alpha=0.5, base_dim=16, round_dims=False) == [16, 2, 1]
    assert md_solver([400, 4, 40_000], alpha=0.25, base_dim=16, round_dims=False) == [5, 16, 2]
    assert md_solver([10, 1000], alpha=0.0, base_dim=8, round_dims=False) == [8, 8]  # alpha 0: no mixing
    # rounded to the nearest power of 2 (in log scale): 5 -> 4, 2 -> 2
    assert md_solver([400, 4, 40_000], alpha=0.25, base_dim=16, round_dims=True) == [4, 16, 2]
    # tables at or below the threshold keep d
    assert md_widths([3, 500, 40_000], [3, 500, 40_000], 0.5, 16, 500, False) == (16, 16, 1)


def test_effective_rows_is_the_perplexity_of_the_counts() -> None:
    assert effective_rows(np.ones(50)) == pytest.approx(50)  # uniform ids: the table size (upstream's rule)
    assert effective_rows(np.array([100, 0, 0, 0])) == pytest.approx(1)
    assert effective_rows(np.array([1, 1, 2])) == pytest.approx(math.exp(1.5 * math.log(2)))
    assert effective_rows(np.zeros(7)) == 7  # nothing counted: as uniform
    skewed = np.array([1000, *np.ones(99)])
    assert effective_rows(skewed) < 10 < effective_rows(np.ones(100))  # popular head: fewer effective rows


def test_table_counts_apply_min_count_and_modulus() -> None:
    counts = [np.array([9, 5, 2, 1]), np.array([7, 3])]  # ids 1.. in decreasing count
    limits = IdLimits.from_counts(counts, min_count=2, modulus=0)
    got = limits.table_counts(counts)
    np.testing.assert_array_equal(got[0], [1, 9, 5, 2])  # id 4 (seen once) folds into row 0
    np.testing.assert_array_equal(got[1], [0, 7, 3])
    hashed = IdLimits.from_counts(counts, min_count=1, modulus=2).table_counts(counts)
    np.testing.assert_array_equal(hashed[0], [5 + 1, 9 + 2])  # ids 2, 4 -> row 0; ids 1, 3 -> row 1


def test_training_run_uses_popularity_widths(tmp_path, capsys) -> None:
    """--md-flag on the click model: widths from the generated training ids, logged, stored in the results."""
    import dlrm_mlet

    argv = [
        "--data-generation=synthetic",
        "--arch-embedding-size=3000-500-40-6",
        "--arch-sparse-feature-size=8",
        "--arch-mlp-bot=13-8-8",
        "--arch-mlp-top=8-1",
        "--mini-batch-size=64",
        "--num-batches=20",
        "--test-data-size=256",
        "--md-flag",
        "--md-threshold=10",
        "--progress=false",
        f"--results-json={tmp_path / 'r.json'}",
    ]
    assert dlrm_mlet.main(argv) == 0
    import json

    widths = json.loads((tmp_path / "r.json").read_text())["model_config"]["md_dims"]
    assert widths[3] == 8 and widths[0] < 8  # the 6-row table keeps d; the large, flat table narrows
    assert f"mixed dimensions: widths {'-'.join(map(str, widths))}" in capsys.readouterr().out


def test_mixed_dimensions_log_the_widths_in_effect_beside_quotient_remainder_tables(capsys) -> None:
    """A quotient-remainder table takes precedence over its mixed dimension (as upstream's): the log says ``qr``
    for it, not a width it does not have."""
    import dlrm_mlet

    argv = [
        "--data-generation=random",
        "--arch-embedding-size=1000-500-20",
        "--arch-sparse-feature-size=4",
        "--arch-mlp-bot=13-8-4",
        "--arch-mlp-top=8-1",
        "--mini-batch-size=16",
        "--num-batches=2",
        "--md-flag",
        "--qr-flag",
        "--progress=false",
    ]
    assert dlrm_mlet.main(argv) == 0
    out = capsys.readouterr().out
    assert "mixed dimensions: widths qr-qr-4 " in out and "mixed dimensions qr-qr-4" in out


def test_train_random_steps_runs_on_composite_models() -> None:
    model = DLRM(config("qr-mult"), seed=0)
    opt = build_optimizer("sgd", 0.5, model.sparse_parameters(), model.dense_parameters(), model.table_modules())
    losses = train_random_steps(model, opt, 5, bag=3)
    assert all(math.isfinite(v) for v in losses)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--qr-flag", "--qr-threshold=50"], ["--md-flag", "--md-threshold=10"]])
def test_interrupted_composite_run_resumes_exactly(extra: list[str], tmp_path, monkeypatch, capsys) -> None:
    """MLET + quotient-remainder / mixed dimensions with Adagrad (state per group), interrupted mid epoch 1 and
    resumed: the same weights, optimizer state and metrics as the uninterrupted run; other QR flags refused."""
    from helpers import RESUME_FLAGS, interrupt_after_save, run_cli

    flags = [*RESUME_FLAGS, *extra]
    code, _, err = run_cli([*flags, f"--save-model={tmp_path / 'straight.pt'}"], capsys)
    assert code == 0, err
    with monkeypatch.context() as patch:
        interrupt_after_save(patch, 13)
        assert run_cli([*flags, f"--save-model={tmp_path / 'run.pt'}", "--save-freq=13"], capsys)[0] == 130
    code, out, err = run_cli(
        [*flags, f"--load-model={tmp_path / 'run.pt'}", f"--save-model={tmp_path / 'run.pt'}"], capsys
    )
    assert code == 0 and "resuming" in out, err
    a, b = load_checkpoint(tmp_path / "straight.pt"), load_checkpoint(tmp_path / "run.pt")
    assert a["version"] == 3 and any(k.startswith("tables.groups.") for k in a["model"])
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    state = a["optimizer"]["state"]
    assert any(k.startswith("tables.groups.") for k in state)
    for name in state:
        for key in state[name]:
            assert torch.equal(state[name][key], b["optimizer"]["state"][name][key]), (name, key)
    assert a["history"] == b["history"]
    other = "--qr-collisions=8" if extra[0] == "--qr-flag" else "--md-temperature=0.6"
    code, _, err = run_cli([*flags, other, f"--load-model={tmp_path / 'run.pt'}"], capsys)
    assert code == 2 and ("--qr-collisions: checkpoint has 4" in err or "--md-flag (its widths" in err), err
