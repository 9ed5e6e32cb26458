"""ONNX export: dynamic batch and bag sizes, onnxruntime == torch, external data for large models."""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from helpers import random_inputs, small_config

import checkpoint
from dlrm_model import DLRM
from mlet.core.errors import UserError
from mlet.serving import onnx_export
from mlet.serving.onnx_export import ServingDLRM, check_agreement, export_onnx, verify
from mlet.training.checkpoints import FORMAT, VERSION, atomic_save

K = 16


def trained_looking(hidden: int, seed: int = 5) -> DLRM:
    """A small model with weights far from the initial ones (so outputs vary)."""
    model = DLRM(small_config(hidden), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3, generator=gen)
    return model.eval()


def torch_probabilities(model: DLRM, dense: torch.Tensor, sparse) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(model(dense, sparse)).numpy()


def run_session(session: onnxruntime.InferenceSession, dense: torch.Tensor, sparse) -> np.ndarray:
    (out,) = session.run(
        ["probabilities"],
        {"dense": dense.numpy(), "indices": sparse.indices.numpy(), "offsets": sparse.offsets.numpy()},
    )
    return out


@pytest.mark.parametrize("hidden", [0, K])
@pytest.mark.parametrize("bag", [1, 4])
def test_serving_formulation_equals_the_model(hidden: int, bag: int) -> None:
    """Gather + index_add pooling == embedding_bag pooling (empty bags included when bag > 1)."""
    model = trained_looking(hidden)
    dense, sparse = random_inputs(model.config, batch=50, seed=3, bag=bag)
    if bag > 1:
        assert (sparse.offsets.diff() == 0).any()  # some empty bags
    with torch.no_grad():
        got = ServingDLRM(model)(dense, sparse.indices, sparse.offsets).numpy()
    expected = torch_probabilities(model, dense, sparse)
    assert expected.std() > 0.02
    assert np.abs(got - expected).max() <= 1e-6


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """The collapsed model exported through the command line; the two-layer one through the API,
    with the external-data threshold forced below its size (2 GiB minus headroom by default)."""
    out = tmp_path_factory.mktemp("onnx")
    two_layer = trained_looking(K)
    training = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "training",
        "model_config": two_layer.config.to_dict(),
        "model": two_layer.state_dict(),
    }
    atomic_save(checkpoint.collapsed_checkpoint(training), out / "collapsed.pt")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert checkpoint.main(["export-onnx", str(out / "collapsed.pt"), str(out / "collapsed.onnx")]) == 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1000)
        report = export_onnx(two_layer, out / "two_layer.onnx")
    assert report["external_data"] == str(out / "two_layer.onnx.data") and report["max_abs_diff"] <= 1e-5
    return {
        "collapsed": (two_layer.collapse().eval(), out / "collapsed.onnx"),
        "two_layer": (two_layer, out / "two_layer.onnx"),
        "printed": printed.getvalue(),
    }


@pytest.mark.slow
def test_a_run_checks_its_own_file_when_another_exports_to_the_same_name(tmp_path, monkeypatch) -> None:
    """Two runs exporting ``dlrm_mlet.onnx`` in one folder: the other run's file lands at the name while this one
    checks its model; this run still checks (and then puts in place) its own file."""
    ours, theirs = trained_looking(0, seed=5), trained_looking(0, seed=6)
    export_onnx(theirs, tmp_path / "theirs.onnx")
    target = tmp_path / "dlrm_mlet.onnx"
    real_verify = onnx_export.verify

    def racing_verify(model, path, *args, **kwargs):
        (tmp_path / "theirs.onnx").replace(target)  # the other run renames its model into place meanwhile
        return real_verify(model, path, *args, **kwargs)

    monkeypatch.setattr(onnx_export, "verify", racing_verify)
    report = export_onnx(ours, target)
    assert report["max_abs_diff"] <= 1e-5
    assert real_verify(ours, target) <= 1e-5  # ours is what stays at the name
    assert [p.name for p in tmp_path.iterdir()] == ["dlrm_mlet.onnx"]  # no staging folder left


def input_output_dims(model: onnx.ModelProto) -> dict[str, list]:
    return {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.input, *model.graph.output]
    }


@pytest.mark.slow
def test_command_line_export_writes_one_file_with_dynamic_shapes(exported) -> None:
    path = exported["collapsed"][1]
    lines = exported["printed"].splitlines()
    assert lines[0] == f"wrote {path} (plain tables)"
    assert lines[1].startswith("onnxruntime check: max abs diff ") and float(lines[1].split()[5]) <= 1e-5
    assert path.exists() and not path.with_name(path.name + ".data").exists()
    model = onnx.load(path)
    assert input_output_dims(model) == {
        "dense": ["batch", 13],
        "indices": ["num_indices"],
        "offsets": ["4*batch + 1"],
        "probabilities": ["batch"],
    }
    weights = {i.name: i for i in model.graph.initializer}
    assert "model.tables.projection" not in weights  # plain d-wide tables
    assert (
        weights["model.tables.weight"].data_location == onnx.TensorProto.DEFAULT
        and len(weights["model.tables.weight"].raw_data) == 359 * 4 * 4
    )


def test_large_models_are_written_with_external_data(exported) -> None:
    model, path = exported["two_layer"]
    graph = onnx.load(path, load_external_data=False).graph
    weights = {i.name: i for i in graph.initializer}
    for name in ("model.tables.weight", "model.tables.projection"):
        assert weights[name].data_location == onnx.TensorProto.EXTERNAL and not weights[name].raw_data
    table_bytes = sum(p.numel() * 4 for p in model.tables.parameters())
    assert path.with_name(path.name + ".data").stat().st_size >= table_bytes


@pytest.mark.parametrize("which", ["collapsed", "two_layer"])
def test_onnxruntime_matches_torch_at_several_batch_sizes(which: str, exported) -> None:
    model, path = exported[which]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 64, 257):
        for bag in (1, 4):  # one-hot, multi-hot (with empty bags)
            dense, sparse = random_inputs(model.config, batch=batch, seed=batch * 10 + bag, bag=bag)
            got = run_session(session, dense, sparse)
            assert got.shape == (batch,)
            assert np.abs(got - torch_probabilities(model, dense, sparse)).max() <= 1e-5, (batch, bag)


@pytest.fixture(scope="module")
def diverged(tmp_path_factory) -> dict:
    """A plain-table model whose last bias is NaN (every output NaN, as after divergence), exported through the
    command line."""
    out = tmp_path_factory.mktemp("onnx_diverged")
    model = trained_looking(0)
    model.state_dict()["top.2.bias"].fill_(math.nan)  # the state dict shares the parameters' storage
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "inference",
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
    }
    atomic_save(ckpt, out / "nan.pt")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = checkpoint.main(["export-onnx", str(out / "nan.pt"), str(out / "nan.onnx")])
    return {"path": out / "nan.onnx", "code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


@pytest.mark.slow
def test_a_diverged_model_is_written_but_fails_the_check_in_one_line(diverged) -> None:
    assert diverged["code"] == 2 and diverged["stdout"] == "" and diverged["path"].exists()
    assert diverged["stderr"] == (
        f"checkpoint.py: error: {diverged['path']}: written, but not checked: "
        "the model's outputs are not finite (diverged weights?); --no-verify skips the check\n"
    )


def test_a_nan_mismatch_never_counts_as_agreement(diverged) -> None:
    """onnxruntime's NaN outputs against torch's finite ones: the difference is NaN, not 0, and the check fails."""
    difference = verify(trained_looking(0), diverged["path"])  # the same model before its bias turned NaN
    assert math.isnan(difference)
    with pytest.raises(UserError, match="onnxruntime's outputs are not finite where torch's are"):
        check_agreement(diverged["path"], difference)
    with pytest.raises(UserError, match=r"differ from torch's by 0\.001"):
        check_agreement(diverged["path"], 1e-3)
    check_agreement(diverged["path"], 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        {"qr_flag": True, "qr_threshold": 10, "qr_operation": "mult"},
        {"qr_flag": True, "qr_threshold": 10, "qr_operation": "concat"},
        {"md_dims": (2, 4, 1, 4)},
    ],
    ids=["qr-mult", "qr-concat", "md"],
)
def test_collapsed_composite_models_export_with_onnxruntime_parity(extra: dict, tmp_path, capsys) -> None:
    """MLET + quotient-remainder / mixed dimensions: collapse keeps the composite shape, its export runs in
    onnxruntime with the torch model's outputs (one-hot and multi-hot bags, empty ones included)."""
    two_layer = DLRM(replace(small_config(K), **extra), seed=5)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in two_layer.parameters():
            p.normal_(0.0, 0.3, generator=gen)
    training = {"format": FORMAT, "version": VERSION, "kind": "training", "model_config": two_layer.config.to_dict()}
    training["model"] = two_layer.state_dict()
    atomic_save(checkpoint.collapsed_checkpoint(training), tmp_path / "collapsed.pt")
    assert checkpoint.main(["export-onnx", str(tmp_path / "collapsed.pt"), str(tmp_path / "m.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "quotient-remainder" in printed or "mixed dimensions" in printed
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch, bag in ((1, 1), (33, 1), (17, 4)):
        dense, sparse = random_inputs(two_layer.config, batch=batch, seed=batch + bag, bag=bag)
        expected = torch_probabilities(two_layer.eval(), dense, sparse)
        assert expected.std() > 0.01 or batch == 1
        assert np.abs(run_session(session, dense, sparse) - expected).max() <= 1e-5
