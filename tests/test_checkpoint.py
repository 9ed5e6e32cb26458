"""Checkpoint files: architecture checks, collapse, info, --save-best (damaged, foreign and misfit files and
checkpoint.py's refusals: test_checkpoint_files.py; writing them: test_checkpoint_writes.py; files that would
run code: test_untrusted_checkpoints.py)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CHECKPOINT_K as K
from helpers import CHECKPOINT_TINY as TINY
from helpers import ROOT, full_disk_save, interrupt_after_save
from helpers import TINY as RANDOM_TINY

import checkpoint
import dlrm_mlet
from mlet.cli import configs
from mlet.core.errors import UserError
from mlet.core.pipeline import prefetch
from mlet.data.sources import build_data
from mlet.training.checkpoints import load_checkpoint, model_from_checkpoint
from mlet.training.metrics import predict
from mlet.training.state import restore_rng_state, rng_state


def evaluate(flags: list[str], checkpoint_path: Path, out: Path, capsys) -> dict:
    """``--inference-only`` results of a checkpoint."""
    code = dlrm_mlet.main([*flags, f"--load-model={checkpoint_path}", "--inference-only", f"--results-json={out}"])
    assert code == 0, capsys.readouterr().err
    return json.loads(out.read_text())


# -- architecture mismatch -------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (
            ["--arch-embedding-size=60000-3000-501"],
            "--arch-embedding-size: checkpoint has 60000-3000-500, "
            "this run's tables (the flag's, or the data's without it) are 60000-3000-501",
        ),
        (["--arch-embedding-size=60000-3000"], "--arch-embedding-size"),
        (
            ["--arch-sparse-feature-size=8", "--arch-mlp-bot=13-8-8"],
            "--arch-sparse-feature-size: checkpoint has 4, the flags give 8",
        ),
        ([f"--mlet-hidden={2 * K}"], f"--mlet-hidden: checkpoint has {K}, the flags give {2 * K}"),
        (["--mlet-hidden=0"], f"--mlet-hidden: checkpoint has {K}, the flags give 0"),
        (["--arch-mlp-bot=13-16-4"], "--arch-mlp-bot: checkpoint has 13-8-4, the flags give 13-16-4"),
        (["--arch-mlp-top=16-1"], "--arch-mlp-top: checkpoint has 8-1, the flags give 16-1"),
        (["--arch-interaction-op=cat"], "--arch-interaction-op"),
    ],
)
@pytest.mark.slow
def test_architecture_mismatch_is_one_line_naming_the_flag(
    flags: list[str], named: str, checkpoint_runs, capsys
) -> None:
    code = dlrm_mlet.main([*TINY, f"--mlet-hidden={K}", *flags, f"--load-model={checkpoint_runs['mlet']}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"dlrm_mlet.py: error: --load-model {checkpoint_runs['mlet']}: {named}")


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--mlet-hidden=8"], f"--mlet-hidden: checkpoint holds MLET tables trained with K={K} (collapsed)"),
        ([f"--mlet-hidden={K}", "--arch-mlp-top=16-1"], "--arch-mlp-top"),
        (["--arch-embedding-size=60000-3000-499"], "--arch-embedding-size"),
    ],
)
def test_inference_flags_mismatch_is_one_line(flags: list[str], named: str, checkpoint_runs, capsys) -> None:
    code = dlrm_mlet.main([*TINY, *flags, f"--load-model={checkpoint_runs['mlet_collapsed']}", "--inference-only"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"--load-model {checkpoint_runs['mlet_collapsed']}: {named}" in err[0]


def derived_checkpoint(checkpoint_runs: dict[str, Path], source: str, steps: list[str], out: Path) -> Path:
    """The run ``source`` passed through ``checkpoint.py`` ``steps`` (``collapse``, ``quantize`` to int8) in ``out``."""
    path = checkpoint_runs[source]
    for step in steps:
        target = out / f"{path.stem}.{step}.pt"
        assert checkpoint.main([step, str(path), str(target), *(["--bits=8"] if step == "quantize" else [])]) == 0
        path = target
    return path


TWO_WAYS = f"give {K} (the training flags) or 0 (a baseline's) to evaluate it"
PLAIN = "the flags give 48; give 0 to evaluate it"


@pytest.mark.parametrize(
    ("source", "steps", "message", "accepted"),
    [
        ("baseline", [], f"plain tables (trained with 0), {PLAIN}", [0]),
        ("baseline", ["collapse"], f"plain tables (trained with 0), {PLAIN}", [0]),
        ("baseline", ["quantize"], f"plain tables (trained with 0, int8-quantized), {PLAIN}", [0]),
        ("mlet", [], f"MLET tables trained with K={K}, the flags give 48; {TWO_WAYS}", [K, 0]),
        ("mlet", ["collapse"], f"MLET tables trained with K={K} (collapsed), the flags give 48; {TWO_WAYS}", [K, 0]),
        (
            "mlet",
            ["collapse", "quantize"],
            f"MLET tables trained with K={K} (collapsed, int8-quantized), the flags give 48; {TWO_WAYS}",
            [K, 0],
        ),
    ],
)
def test_inference_with_another_mlet_hidden_names_the_values_that_evaluate_it(
    source: str, steps: list[str], message: str, accepted: list[int], checkpoint_runs, tmp_path, capsys
) -> None:
    path = derived_checkpoint(checkpoint_runs, source, steps, tmp_path)
    capsys.readouterr()
    code = dlrm_mlet.main([*TINY, "--mlet-hidden=48", f"--load-model={path}", "--inference-only"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"dlrm_mlet.py: error: --load-model {path}: --mlet-hidden: checkpoint holds {message}"]
    for hidden in accepted:  # the values the line names evaluate it
        assert dlrm_mlet.main([*TINY, f"--mlet-hidden={hidden}", f"--load-model={path}", "--inference-only"]) == 0


@pytest.mark.parametrize(
    ("source", "tables"), [("mlet", f"MLET tables trained with K={K} (collapsed)"), ("baseline", "plain tables")]
)
def test_mlet_training_cannot_start_from_a_collapsed_checkpoint(
    source, tables, checkpoint_runs, tmp_path, capsys
) -> None:
    path = derived_checkpoint(checkpoint_runs, source, ["collapse"], tmp_path)
    capsys.readouterr()
    code = dlrm_mlet.main([*TINY, f"--mlet-hidden={K}", f"--load-model={path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"--mlet-hidden: checkpoint is an inference checkpoint of {tables}" in err[0] and "K=0" not in err[0]


def test_plain_training_starts_from_a_collapsed_checkpoint(checkpoint_runs, tmp_path, capsys) -> None:
    out = tmp_path / "ft.pt"
    code = dlrm_mlet.main(
        [*TINY, "--num-batches=2", f"--load-model={checkpoint_runs['mlet_collapsed']}", f"--save-model={out}"]
    )
    assert code == 0, capsys.readouterr().err
    ckpt = load_checkpoint(out)
    assert ckpt["position"]["iteration"] == 2 and ckpt["model_config"]["mlet_hidden"] == 0


# -- collapse --------------------------------------------------------------------


def test_collapsed_checkpoint_contents(checkpoint_runs) -> None:
    trained = load_checkpoint(checkpoint_runs["mlet"])
    collapsed = load_checkpoint(checkpoint_runs["mlet_collapsed"])
    assert collapsed["kind"] == "inference" and "optimizer" not in collapsed and "rng" not in collapsed
    assert collapsed["model_config"]["mlet_hidden"] == 0 and collapsed["collapsed_from"]["mlet_hidden"] == K
    assert collapsed["model"]["tables.weight"].shape == (63500, 4) and "tables.projection" not in collapsed["model"]
    assert (
        collapsed["args"] == trained["args"]
        and collapsed["best"] == trained["best"]
        and collapsed["history"] == trained["history"]
    )
    assert collapsed["collapsed_from"]["parameters"]["embedding_training_bytes"] == 4 * (63500 * K + 3 * K * 4)
    # --save-collapsed and `checkpoint.py collapse` write the same model
    cli = load_checkpoint(checkpoint_runs["cli_collapsed"])
    assert cli.keys() == collapsed.keys()
    for name, tensor in collapsed["model"].items():
        assert torch.equal(tensor, cli["model"][name]), name
    # collapsing an inference checkpoint is allowed and changes nothing
    assert checkpoint.collapsed_checkpoint(collapsed) is collapsed


def test_collapsed_outputs_equal_two_layer_outputs_on_the_whole_test_set(checkpoint_runs) -> None:
    data = build_data(configs.run_config([*TINY, f"--mlet-hidden={K}"]).data)
    two_layer = model_from_checkpoint(load_checkpoint(checkpoint_runs["mlet"]))
    collapsed = model_from_checkpoint(load_checkpoint(checkpoint_runs["mlet_collapsed"]))
    assert two_layer.tables.is_mlet and not collapsed.tables.is_mlet
    probs_two, labels = predict(two_layer, prefetch(data.test.batches(0)), torch.device("cpu"))
    probs_one, labels_one = predict(collapsed, prefetch(data.test.batches(0)), torch.device("cpu"))
    assert len(probs_two) == 2000 and np.array_equal(labels, labels_one)
    assert probs_two.std() > 1e-3  # the model is not constant
    assert np.abs(probs_two - probs_one).max() <= 1e-5


def test_collapsed_model_evaluates_with_training_or_baseline_flags(checkpoint_runs, tmp_path, capsys) -> None:
    """--inference-only on the collapsed file: same AUC as the two-layer model, with --mlet-hidden=K or 0."""
    trained = json.loads((checkpoint_runs["mlet"].parent / "mlet.json").read_text())["final"]
    two_layer = evaluate([*TINY, f"--mlet-hidden={K}"], checkpoint_runs["mlet"], tmp_path / "two.json", capsys)["final"]
    with_k = evaluate([*TINY, f"--mlet-hidden={K}"], checkpoint_runs["mlet_collapsed"], tmp_path / "k.json", capsys)
    baseline_flags = evaluate(TINY, checkpoint_runs["mlet_collapsed"], tmp_path / "base.json", capsys)
    for result in (with_k["final"], baseline_flags["final"]):
        assert result["samples"] == two_layer["samples"] == 2000
        assert abs(result["auc"] - two_layer["auc"]) <= 1e-6 and abs(result["auc"] - trained["auc"]) <= 1e-6
        assert abs(result["logloss"] - two_layer["logloss"]) <= 1e-6
    assert with_k["checkpoint"]["kind"] == "inference" and with_k["checkpoint"]["trained_mlet_hidden"] == K
    for result in (two_layer, with_k["final"]):  # where the model was trained to, as the training run logged it
        assert (result["epoch"], result["iteration"]) == (trained["epoch"], trained["iteration"]) == (0, 20)


def test_evaluating_the_collapsed_file_reports_the_trained_size(checkpoint_runs, tmp_path, capsys) -> None:
    """The collapsed file's results and log give the MLET model's training size, as the training run and `info`
    do: one model, one size, whichever file of it was evaluated."""
    trained = json.loads((checkpoint_runs["mlet"].parent / "mlet.json").read_text())["parameters"]
    assert trained["training"]["count"] > 6 * trained["inference"]["count"]  # MLET's K x the served tables
    capsys.readouterr()
    for flags, path in (
        ([f"--mlet-hidden={K}"], checkpoint_runs["mlet"]),
        ([f"--mlet-hidden={K}"], checkpoint_runs["mlet_collapsed"]),
    ):
        results = evaluate([*TINY, *flags], path, tmp_path / "e.json", capsys)
        assert results["parameters"] == trained, path
        count = trained["training"]["count"]
        assert f"parameters: training {count:,} (" in capsys.readouterr().out
    baseline_flags = evaluate(TINY, checkpoint_runs["mlet_collapsed"], tmp_path / "b.json", capsys)
    assert baseline_flags["parameters"] == trained


def test_collapsed_file_is_the_size_of_a_baseline_checkpoint(checkpoint_runs) -> None:
    """Within 5% of a d=4 baseline checkpoint without optimizer state (SGD keeps none); the MLET one is far larger."""
    baseline = load_checkpoint(checkpoint_runs["baseline"])
    assert baseline["optimizer"]["state"] == {} and baseline["model_config"]["mlet_hidden"] == 0
    collapsed, baseline_size, mlet_size = (
        checkpoint_runs[n].stat().st_size for n in ("mlet_collapsed", "baseline", "mlet")
    )
    assert abs(collapsed - baseline_size) <= 0.05 * baseline_size, (collapsed, baseline_size)
    assert mlet_size > 6 * collapsed


# -- info and the checkpoint.py command line -------------------------------------


def test_info_shows_kind_sizes_tables_args_metrics(checkpoint_runs, capsys) -> None:
    assert checkpoint.main(["info", str(checkpoint_runs["mlet_collapsed"])]) == 0
    out = capsys.readouterr().out
    assert f"inference (collapsed from MLET K={K}; no optimizer state)" in out
    assert "the whole model at inference is" in out and "x smaller (MLET collapsed)" in out
    assert "the tables at inference are" in out
    assert "--mlet-hidden=32" in out and "--arch-embedding-size=60000-3000-500" in out
    assert "final auc" in out and "best auc" in out
    assert "60,000" in out and "32x4" in out
    assert checkpoint.main(["info", "--json", str(checkpoint_runs["mlet"])]) == 0
    s = json.loads(capsys.readouterr().out)
    rows = 63500
    mlp = (13 * 8 + 8) + (8 * 4 + 4) + (10 * 8 + 8) + (8 * 1 + 1)
    assert s["kind"] == "training" and s["optimizer"] == "sgd" and s["position"]["iteration"] == 20
    assert s["parameters"]["training"]["bytes"] == 4 * (mlp + rows * K + 3 * K * 4)
    assert s["parameters"]["inference"]["bytes"] == 4 * (mlp + rows * 4)
    assert s["stored_parameter_bytes"] == s["parameters"]["training"]["bytes"]
    assert [t["rows"] for t in s["tables"]] == [60000, 3000, 500]
    assert (
        s["tables"][0]["training_bytes"] == 4 * (60000 * K + K * 4)
        and s["tables"][0]["inference_bytes"] == 4 * 60000 * 4
    )
    collapsed = checkpoint.summary(
        load_checkpoint(checkpoint_runs["mlet_collapsed"]), checkpoint_runs["mlet_collapsed"]
    )
    assert collapsed["parameters"] == s["parameters"]  # the saving stays visible after collapsing
    assert collapsed["stored_parameter_bytes"] == s["parameters"]["inference"]["bytes"]


def info_metrics(path: Path, capsys) -> list[str]:
    """The two lines of ``checkpoint.py info path``'s metrics row (final, best)."""
    assert checkpoint.main(["info", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("metrics "))
    return [line[12:] for line in lines[start : start + 2]]


@pytest.mark.parametrize("bits", [8, 4])
def test_info_of_a_quantized_file_shows_the_final_metrics_it_carries(bits, checkpoint_runs, tmp_path, capsys) -> None:
    """They were on the quantized line only and the metrics row said ``final -``: the float model's last test,
    in the trained file's form, said to be the float model's."""
    trained_final, trained_best = info_metrics(checkpoint_runs["mlet"], capsys)
    assert trained_final.startswith("final auc ") and trained_best.startswith("best auc ")
    assert info_metrics(checkpoint_runs["cli_collapsed"], capsys) == [trained_final, trained_best]
    quantized = tmp_path / "q.pt"
    assert checkpoint.main(["quantize", str(checkpoint_runs["cli_collapsed"]), str(quantized), f"--bits={bits}"]) == 0
    capsys.readouterr()
    assert info_metrics(quantized, capsys) == [
        f"{trained_final[:-1]}; the float model's, before int{bits} quantization)",
        "best none recorded in the file",
    ]


def test_info_of_files_that_record_no_test_says_so(tmp_path, monkeypatch, capsys) -> None:
    """A checkpoint written before the run's first test (here at iteration 3, stopped there), and what is made of
    it, record no metrics: ``info`` says so plainly (was ``final -``)."""
    path, collapsed, quantized = tmp_path / "early.pt", tmp_path / "c.pt", tmp_path / "q.pt"
    with monkeypatch.context() as patch:
        interrupt_after_save(patch, 3)
        assert dlrm_mlet.main([*RANDOM_TINY, "--test-freq=0", "--save-freq=3", f"--save-model={path}"]) == 130
    assert checkpoint.main(["collapse", str(path), str(collapsed)]) == 0
    assert checkpoint.main(["quantize", str(collapsed), str(quantized), "--bits=8"]) == 0
    capsys.readouterr()
    for file in (path, collapsed, quantized):
        assert info_metrics(file, capsys) == ["final none recorded in the file", "best none recorded in the file"]


def test_info_piped_into_head_ends_quietly(checkpoint_runs) -> None:
    """``checkpoint.py info CKPT | head``: the reader is gone before the output comes (closed at once, while the
    command still imports torch), so the first write meets a closed pipe; no traceback, the shell's SIGPIPE code."""
    reader = subprocess.Popen(
        [sys.executable, str(ROOT / "checkpoint.py"), "info", "--json", str(checkpoint_runs["mlet"])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.close()
    assert reader.wait(timeout=60) == 141
    assert reader.stderr.read() == b""


def test_rng_state_roundtrip() -> None:
    saved = rng_state()
    draws = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(saved)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


# -- the best model (--save-best) ------------------------------------------------------


def test_save_best_keeps_the_model_of_the_best_test(tmp_path, capsys) -> None:
    """--save-best writes a checkpoint at each test that improves the best AUC (the model upstream's --save-model
    keeps): evaluated, it gives the best AUC; --save-model still holds the last state."""
    flags = [*RANDOM_TINY, "--test-freq=2", "--numpy-rand-seed=2"]
    best, last, out = tmp_path / "best.pt", tmp_path / "last.pt", tmp_path / "run.json"
    code = dlrm_mlet.main([*flags, f"--save-best={best}", f"--save-model={last}", f"--results-json={out}"])
    stdout = capsys.readouterr().out
    assert code == 0
    results = json.loads(out.read_text())
    aucs = [h["auc"] for h in results["history"]]
    improvements = sum(auc > max(aucs[:i], default=-1.0) for i, auc in enumerate(aucs))
    assert 1 < improvements < len(aucs) and stdout.count(f"saved {best} (best auc)") == improvements
    assert results["best"]["iteration"] < results["final"]["iteration"]  # this seed's best test is not its last
    assert load_checkpoint(best)["position"]["iteration"] == results["best"]["iteration"]
    assert evaluate(flags, best, tmp_path / "b.json", capsys)["final"]["auc"] == results["best"]["auc"]
    assert evaluate(flags, last, tmp_path / "l.json", capsys)["final"]["auc"] == results["final"]["auc"]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--save-best=a.pt", "--save-model=./a.pt"], "--save-best"),
        (["--inference-only", f"--load-model={ROOT / 'README.md'}", "--save-best=b.pt"], "--save-best: not with"),
        ([f"--load-model={ROOT / 'README.md'}", f"--save-best={ROOT / 'README.md'}"], "--save-best"),
    ],
)
def test_save_best_conflicts_are_one_line(flags: list[str], named: str) -> None:
    with pytest.raises(UserError, match=named):
        configs.run_config([*RANDOM_TINY, *flags])


def test_full_disk_at_every_checkpoint_writer_is_one_line(checkpoint_runs, monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(torch, "save", lambda obj, handle, *a, **k: full_disk_save(obj, handle))
    out = tmp_path / "c.pt"
    assert checkpoint.main(["collapse", str(checkpoint_runs["mlet"]), str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"checkpoint.py: error: {out}: cannot write the checkpoint (No space left on device)"
    ]
    for flag in ("--save-model", "--save-collapsed"):
        target = tmp_path / f"{flag[2:]}.pt"
        assert dlrm_mlet.main([*TINY, "--num-batches=1", f"{flag}={target}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"dlrm_mlet.py: error: {target}: cannot write the checkpoint (No space left on device)"]
    assert list(tmp_path.iterdir()) == []


def test_info_names_the_tables_as_the_training_log_does(tmp_path, capsys) -> None:
    # checkpoint.py had its own wording: "quotient-remainder (mult, 4 collisions, 1 tables), mixed dimensions
    # 1-2-4" for a model whose first table is a quotient-remainder pair (it takes precedence over its width),
    # where the training log and collapse say "quotient-remainder mult x4 on 1 table; mixed dimensions qr-2-4".
    path = tmp_path / "qrmd.pt"
    flags = ["--arch-embedding-size=1000-500-20", "--qr-flag", "--qr-threshold=600", "--md-flag", "--md-threshold=100"]
    assert dlrm_mlet.main([*RANDOM_TINY, *flags, "--num-batches=2", f"--save-model={path}"]) == 0
    capsys.readouterr()
    assert checkpoint.main(["info", str(path)]) == 0
    model = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("model "))
    kinds = "plain, quotient-remainder mult x4 on 1 table, mixed dimensions qr-2-4"
    assert f"{kinds} (stored as {kinds});" in model, model  # not "... on 1 table, ... qr-2-4 tables"
