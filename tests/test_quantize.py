"""Row-wise int8/int4 tables: the packed layout, lookups, accuracy, checkpoints, the command lines."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_inputs, run_cli, small_config

import checkpoint
import dlrm_mlet
from dlrm_model import DLRM
from mlet.cli.reduction import check_quantize_run
from mlet.core.errors import UserError
from mlet.repro import rank_analysis
from mlet.serving.quantize import (
    ROW_OVERHEAD,
    QuantizedTables,
    model_from_checkpoint,
    packed_width,
    prepack,
    quantize_model,
    size_change,
    unpack,
)
from mlet.training.checkpoints import FORMAT, atomic_save, collapsed_checkpoint, load_checkpoint

SIZES = (50, 7, 300, 2)


def rows(n: int = 40, d: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * torch.linspace(0.01, 2, n)[:, None]


def row_steps(x: torch.Tensor, levels: int) -> torch.Tensor:
    """The quantization step of each row: (max - min) / levels."""
    return (x.max(1).values - x.min(1).values) / levels


@pytest.mark.parametrize("d", [6, 7, 1])
def test_int8_rows_within_half_a_step(d: int) -> None:
    x = rows(d=d)
    packed = prepack(x, 8)
    assert packed.dtype == torch.uint8 and packed.shape == (40, d + 8) == (40, packed_width(d, 8))
    scale, bias = (
        packed[:, d : d + 4].contiguous().view(torch.float32)[:, 0],
        packed[:, d + 4 :].contiguous().view(torch.float32)[:, 0],
    )
    torch.testing.assert_close(bias, x.min(1).values)  # the layout: float32 scale, then float32 bias (the min)
    torch.testing.assert_close(scale, row_steps(x, 255), rtol=1e-5, atol=1e-12)
    error = (unpack(packed, 8, d) - x).abs()
    assert (error <= row_steps(x, 255)[:, None] / 2 + 1e-6).all()
    assert error.max() > 0 or d == 1  # quantized, not copied (one value a row is exact: it is the bias)


@pytest.mark.parametrize("d", [6, 7, 1])
def test_int4_packing_round_trip(d: int) -> None:
    """Two values a byte, the first in the low nibble, then float16 scale and bias; odd widths padded with the
    last column (same scale)."""
    x = rows(d=d, seed=1)
    packed = prepack(x, 4)
    width = (d + 1) // 2
    assert packed.shape == (40, width + 4) == (40, packed_width(d, 4))
    scale = packed[:, width : width + 2].contiguous().view(torch.float16)[:, 0].float()
    bias = packed[:, width + 2 :].contiguous().view(torch.float16)[:, 0].float()
    low, high = (packed[:, :width] & 0x0F).float(), (packed[:, :width] >> 4).float()
    nibbles = torch.stack([low, high], dim=2).reshape(40, 2 * width)[:, :d]
    by_hand = nibbles * scale[:, None] + bias[:, None]
    torch.testing.assert_close(unpack(packed, 4, d), by_hand, rtol=0, atol=1e-6)
    step = row_steps(x, 15)[:, None]
    assert ((by_hand - x).abs() <= step / 2 + 2e-3 * (x.abs().max(1, keepdim=True).values + step)).all()
    # packing what was unpacked gives back the same values
    torch.testing.assert_close(unpack(prepack(by_hand, 4), 4, d), by_hand, rtol=0, atol=2e-3 * by_hand.abs().max())


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("bag", [1, 3])
def test_quantized_lookup_equals_dequantized_rows(bits: int, bag: int) -> None:
    """torch's quantized embedding_bag on the packed rows == sum-pooling the dequantized rows."""
    config = small_config(0, sizes=SIZES)
    tables = DLRM(config, seed=3).tables
    with torch.no_grad():
        tables.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    quantized = QuantizedTables.from_float(tables, bits)
    _, features = random_inputs(config, batch=16, seed=2, bag=bag)
    reference = DLRM(config, seed=3).tables
    with torch.no_grad():
        reference.weight.copy_(quantized.dequantized())
        torch.testing.assert_close(quantized(features), reference(features), rtol=1e-5, atol=1e-5)
    assert quantized.inference_bytes() == sum(SIZES) * packed_width(4, bits)


@pytest.mark.parametrize(
    "extra", [{}, {"qr_flag": True, "qr_threshold": 10, "qr_operation": "concat"}, {"md_dims": (2, 4, 1, 4)}]
)
@pytest.mark.parametrize("hidden", [0, 16])
def test_quantized_models_stay_close(extra: dict, hidden: int) -> None:
    """Every table kind quantizes group by group; int8 stays closer to the float model than int4."""
    model = DLRM(replace(small_config(hidden, sizes=SIZES), **extra), seed=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("tables.") and "md_projections" not in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    dense, features = random_inputs(model.config, batch=256, seed=5, bag=2)
    with torch.no_grad():
        float_p = torch.sigmoid(model(dense, features))
        diffs = {
            bits: (torch.sigmoid(quantize_model(model, bits)(dense, features)) - float_p).abs().max() for bits in (8, 4)
        }
    assert 0 < diffs[8] < diffs[4] < 0.1


def test_quantized_auc_close_to_float_on_the_synthetic_set(tmp_path) -> None:
    """Train on the click model with --quantize-emb-with-bit=8-4: the int8 model's AUC within 0.002 of the
    float model's, int4 within 0.01; their bytes exact."""
    argv = [
        "--data-generation=synthetic",
        "--arch-embedding-size=2000-300-50-9",
        "--arch-sparse-feature-size=8",
        "--arch-mlp-bot=13-16-8",
        "--arch-mlp-top=16-1",
        "--mini-batch-size=128",
        "--num-batches=150",
        "--learning-rate=0.5",
        "--test-data-size=8192",
        "--quantize-emb-with-bit=8-4",
        "--progress=false",
        f"--results-json={tmp_path / 'r.json'}",
    ]
    import dlrm_mlet

    assert dlrm_mlet.main(argv) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    float_auc = results["final"]["auc"]
    assert float_auc > 0.56  # it learned something the quantization could lose (0.5: nothing)
    quantized = {q["bits"]: q for q in results["quantized"]}
    assert abs(quantized[8]["final"]["auc"] - float_auc) < 0.002
    assert abs(quantized[4]["final"]["auc"] - float_auc) < 0.01
    rows = 2000 + 300 + 50 + 9
    assert quantized[8]["parameters"]["embedding_inference_bytes"] == rows * (8 + 8)
    assert quantized[4]["parameters"]["embedding_inference_bytes"] == rows * (4 + 4)
    assert results["parameters"]["embedding_inference_bytes"] == rows * 8 * 4


RANDOM_FLAGS = [
    "--data-generation=random",
    f"--arch-embedding-size={'-'.join(map(str, SIZES))}",
    "--arch-sparse-feature-size=4",
    "--arch-mlp-bot=13-16-4",
    "--arch-mlp-top=8-1",
    "--progress=false",
]
"""dlrm_mlet.py's flags for the plain (or collapsed) models of :func:`float_checkpoints`, on random data."""


@pytest.fixture(scope="module")
def float_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A two-layer MLET training checkpoint, its collapsed one, and a mixed-dimension one."""
    out = tmp_path_factory.mktemp("quantize")
    paths = {}
    for name, config in (
        ("mlet", small_config(16, sizes=SIZES)),
        ("md", replace(small_config(0, sizes=SIZES), md_dims=(2, 4, 1, 4))),
    ):
        model = DLRM(config, seed=2)
        with torch.no_grad():
            for weight in model.sparse_parameters().values():
                weight.normal_(0, 0.3)
        ckpt = {"format": FORMAT, "version": 2, "kind": "training", "model_config": config.to_dict()}
        ckpt |= {"model": model.state_dict(), "optimizer": {"optimizer": "sgd", "state": {}}}
        ckpt |= {"position": {"epoch": 0, "batch": 3, "iteration": 3}, "history": [{"auc": 0.7, "iteration": 3}]}
        paths[name] = out / f"{name}.pt"
        atomic_save(ckpt, paths[name])
    paths["collapsed"] = out / "collapsed.pt"
    atomic_save(collapsed_checkpoint(load_checkpoint(paths["mlet"])), paths["collapsed"])
    return paths


@pytest.mark.parametrize("source", ["collapsed", "md"])
@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_command_writes_a_servable_checkpoint(
    float_checkpoints, source: str, bits: int, tmp_path, capsys
) -> None:
    out = tmp_path / "q.pt"
    assert checkpoint.main(["quantize", str(float_checkpoints[source]), str(out), "--bits", str(bits)]) == 0
    assert f"int{bits} row-wise tables" in capsys.readouterr().out
    ckpt = load_checkpoint(out)
    assert ckpt["quantized"]["bits"] == bits and ckpt["version"] == 3 and "optimizer" not in ckpt
    served = model_from_checkpoint(ckpt)
    float_model = checkpoint.model_from_checkpoint(load_checkpoint(float_checkpoints[source]))
    dense, features = random_inputs(float_model.config, batch=64, seed=7, bag=2)
    with torch.no_grad():
        expected = quantize_model(float_model, bits)(dense, features)
        torch.testing.assert_close(served(dense, features), expected, rtol=0, atol=0)
    assert served.tables.inference_bytes() == ckpt["quantized"]["embedding_bytes"]
    info = checkpoint.summary(ckpt, out)
    assert info["parameters"]["embedding_inference_bytes"] == ckpt["quantized"]["embedding_bytes"]
    assert sum(t["inference_bytes"] for t in info["tables"]) == ckpt["quantized"]["embedding_bytes"]


def test_quantize_refusals_are_one_line(float_checkpoints, tmp_path, capsys) -> None:
    two_layer = str(float_checkpoints["mlet"])
    assert checkpoint.main(["quantize", two_layer, str(tmp_path / "q.pt"), "--bits", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "two-layer MLET tables (K=16): collapse them first" in err
    q8 = tmp_path / "q8.pt"
    assert checkpoint.main(["quantize", str(float_checkpoints["collapsed"]), str(q8), "--bits", "8"]) == 0
    capsys.readouterr()
    assert checkpoint.main(["quantize", str(q8), str(tmp_path / "again.pt"), "--bits", "4"]) == 2
    assert (
        f"{q8}: holds int8 row-wise quantized tables; quantizing needs the float checkpoint" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as exit_:
        checkpoint.main(["quantize", str(q8), str(tmp_path / "x.pt"), "--bits", "3"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--bits: invalid choice: 3" in err


def test_a_gpu_training_run_may_quantize_and_a_gpu_evaluation_may_not() -> None:
    # reproduce.sh's sweep asks every run for --quantize-bits: with -- --use-gpu every run was refused
    check_quantize_run((8, 4), use_gpu=True, inference_only=False)  # its copies evaluated on the CPU: test_gpu.py
    with pytest.raises(UserError, match=r"^--quantize-emb-with-bit: with --inference-only the quantized model is"):
        check_quantize_run((8,), use_gpu=True, inference_only=True)
    check_quantize_run((), use_gpu=True, inference_only=True)


@pytest.mark.parametrize(
    ("before", "after", "cause", "expected"),
    [
        (400, 100, "", "4.00x smaller"),
        (400, 300, "(int8 tables)", "1.33x smaller (int8 tables)"),
        (100, 124, "(int8 tables)", f"1.24x larger (int8 tables): {ROW_OVERHEAD}"),
        (400, 400, "(int8 tables)", "the same size"),
        (100_000, 99_904, "", "96 bytes smaller"),  # 1.00x would say nothing
        (100_000, 100_096, "", f"96 bytes larger: {ROW_OVERHEAD}"),
    ],
)
def test_size_change_wording(before: int, after: int, cause: str, expected: str) -> None:
    assert size_change(before, after, cause) == expected


def test_info_and_quantize_word_a_larger_model_alike(float_checkpoints, tmp_path, capsys) -> None:
    """Narrow mixed-dimension tables grow when quantized: quantize and info both say larger, and why, each naming
    what it compares, the tables or the whole model, with the same ratio for each."""
    q8 = tmp_path / "md8.pt"
    assert checkpoint.main(["quantize", str(float_checkpoints["md"]), str(q8), "--bits", "8"]) == 0
    wrote = capsys.readouterr().out
    assert checkpoint.main(["info", str(q8)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    params = checkpoint.summary(load_checkpoint(q8), q8)["parameters"]
    tables = params["embedding_training_bytes"], params["embedding_inference_bytes"]
    whole = params["training"]["bytes"], params["inference"]["bytes"]
    table_ratio, whole_ratio = f"{tables[1] / tables[0]:.2f}x", f"{whole[1] / whole[0]:.2f}x"
    assert table_ratio != whole_ratio  # two numbers, each said of what it measures
    assert f"the tables {tables[0]:,} -> {tables[1]:,} bytes ({table_ratio} larger: {ROW_OVERHEAD})" in wrote
    assert f"the whole model {whole[0]:,} -> {whole[1]:,} bytes ({whole_ratio} larger); file " in wrote
    reason = f"larger (int8 tables): {ROW_OVERHEAD}"
    assert lines["embeddings"].endswith(f": the tables at inference are {table_ratio} {reason}")
    assert lines["parameters"].endswith(f": the whole model at inference is {whole_ratio} {reason}")


def test_info_of_a_model_that_collapse_leaves_unchanged_says_the_same_size(tmp_path, capsys) -> None:
    config = small_config(0, sizes=SIZES)
    ckpt = {"format": FORMAT, "version": 2, "kind": "training", "model_config": config.to_dict()}
    ckpt |= {"model": DLRM(config, seed=0).state_dict(), "optimizer": {"optimizer": "sgd", "state": {}}}
    atomic_save(collapsed_checkpoint({**ckpt, "position": {"epoch": 0, "batch": 0, "iteration": 0}}), tmp_path / "c.pt")
    assert checkpoint.main(["info", str(tmp_path / "c.pt")]) == 0
    out = capsys.readouterr().out
    assert "the whole model at inference is the same size\n" in out and "1.00x" not in out
    assert "the tables at inference are the same size\n" in out


REFUSED = "needs the float checkpoint it was quantized from (dlrm_mlet.py --inference-only evaluates this one as it is)"


def test_each_command_refusing_a_quantized_checkpoint_names_it_and_what_it_needs(
    float_checkpoints, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    q8 = tmp_path / "q8.pt"
    assert checkpoint.main(["quantize", str(float_checkpoints["collapsed"]), str(q8), "--bits", "8"]) == 0
    capsys.readouterr()
    flags = [*RANDOM_FLAGS, "--num-batches=2", f"--load-model={q8}"]
    held = f"{q8}: holds int8 row-wise quantized tables"
    refusals = {
        "checkpoint.py: error": [
            (lambda: checkpoint.main(["export-onnx", str(q8), "q.onnx"]), f"{held}; the ONNX export {REFUSED}"),
            (lambda: checkpoint.main(["quantize", str(q8), "q4.pt", "--bits=4"]), f"{held}; quantizing {REFUSED}"),
        ],
        "analyze_rank.py: error": [
            (
                lambda: rank_analysis.main([str(q8), "--out=rk", "--no-frequency"]),
                f"{held}; the rank analysis {REFUSED}",
            )
        ],
        "dlrm_mlet.py: error": [
            (lambda: dlrm_mlet.main(flags), f"--load-model {held}; training {REFUSED}"),
            (
                lambda: dlrm_mlet.main([*flags, "--inference-only", "--save-onnx"]),
                f"--load-model {held}; --save-onnx (the ONNX export) {REFUSED}",
            ),
        ],
    }
    for prog, cases in refusals.items():
        for command, line in cases:
            assert command() == 2
            assert capsys.readouterr().err.strip().splitlines() == [f"{prog}: {line}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q8.pt"]  # nothing written
    # collapse copies it (nothing to fold), as docs/checkpoints.md says: not refused
    assert checkpoint.main(["collapse", str(q8), "c.pt"]) == 0
    assert load_checkpoint(tmp_path / "c.pt")["quantized"]["bits"] == 8


def test_evaluating_a_two_layer_mlet_checkpoint_reports_the_tables_it_holds(float_checkpoints, capsys) -> None:
    """Evaluated as trained, a two-layer checkpoint's tables in memory are W1 and W2, not the collapsed n x d."""
    flags = [
        "--data-generation=random",
        f"--arch-embedding-size={'-'.join(map(str, SIZES))}",
        "--arch-sparse-feature-size=4",
        "--mlet-hidden=16",
        "--arch-mlp-bot=13-16-4",
        "--arch-mlp-top=8-1",
        "--mini-batch-size=64",
        "--num-batches=2",
        "--progress=false",
        "--inference-only",
        f"--load-model={float_checkpoints['mlet']}",
    ]
    code, out, err = run_cli(flags, capsys)
    assert code == 0, err
    two_layer, collapsed = sum(SIZES) * 16 * 4 + len(SIZES) * 16 * 4 * 4, sum(SIZES) * 4 * 4
    assert f"tables {two_layer:,} bytes in memory (two-layer MLET; collapsed: {collapsed:,} bytes" in out


def test_quantized_evaluations_of_an_mlet_run_report_its_training_size(tmp_path, capsys) -> None:
    """The ``quantized`` entries of an MLET run's results: the served bytes packed, the training ones the run's."""
    out = tmp_path / "r.json"
    flags = [*RANDOM_FLAGS, "--mlet-hidden=16", "--num-batches=2", "--quantize-emb-with-bit=8", f"--results-json={out}"]
    code, _, err = run_cli(flags, capsys)
    assert code == 0, err
    results = json.loads(out.read_text())
    (int8,) = results["quantized"]
    assert int8["parameters"]["training"] == results["parameters"]["training"]
    assert int8["parameters"]["embedding_training_bytes"] == sum(SIZES) * 16 * 4 + len(SIZES) * 16 * 4 * 4
    assert int8["parameters"]["embedding_inference_bytes"] == sum(SIZES) * (4 + 8)


def test_evaluating_a_quantized_checkpoint_reports_auc_and_exact_bytes(float_checkpoints, tmp_path, capsys) -> None:
    q4 = tmp_path / "q4.pt"
    assert checkpoint.main(["quantize", str(float_checkpoints["collapsed"]), str(q4), "--bits", "4"]) == 0
    flags = [
        *RANDOM_FLAGS,
        "--mini-batch-size=64",
        "--num-batches=4",
        "--inference-only",
        f"--load-model={q4}",
        f"--results-json={tmp_path / 'eval.json'}",
    ]
    code, out, err = run_cli(flags, capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "eval.json").read_text())
    ckpt = load_checkpoint(q4)
    assert results["parameters"]["embedding_inference_bytes"] == ckpt["quantized"]["embedding_bytes"] == sum(SIZES) * 6
    # the training size is the MLET model's that was collapsed and quantized (as `info` says), not the served one's
    assert results["parameters"]["embedding_training_bytes"] == sum(SIZES) * 16 * 4 + len(SIZES) * 16 * 4 * 4
    assert results["checkpoint"]["file_bytes"] == q4.stat().st_size
    assert results["served_bits"] == 4
    assert 0 <= results["final"]["auc"] <= 1
    assert (
        f"int4 row-wise tables {sum(SIZES) * 6:,} bytes in memory" in out
        and f"{q4.stat().st_size:,} bytes on disk" in out
    )
    # the float checkpoint quantized at evaluation gives the same model, so the same metrics
    code, out, err = run_cli(
        [
            *flags[:-2],
            f"--load-model={float_checkpoints['collapsed']}",
            "--quantize-emb-with-bit=4",
            f"--results-json={tmp_path / 'eval2.json'}",
        ],
        capsys,
    )
    assert code == 0, err
    again = json.loads((tmp_path / "eval2.json").read_text())
    assert again["final"]["auc"] == results["final"]["auc"] and again["final"]["logloss"] == results["final"]["logloss"]
    np.testing.assert_equal(again["parameters"], results["parameters"])
    assert again["served_bits"] == 4  # quantized at evaluation: recorded all the same
    # training from it: one line (its packed tables have no gradient), not torch's state_dict size mismatch
    train_flags = [f for f in flags if f not in ("--inference-only",) and not f.startswith("--results-json")]
    code, out, err = run_cli(train_flags, capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"holds int4 row-wise quantized tables; training {REFUSED}" in err
