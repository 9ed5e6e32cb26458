"""Command line: flag parsing and validation, the training run, the results JSON."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, TINY, override_flags, run_cli, sample_file

import checkpoint
import dlrm_mlet
from mlet.cli import configs
from mlet.core.errors import UserError
from mlet.training import trainer as trainer_module
from mlet.training.results import write_json
from mlet.training.train_step import TrainStep
from mlet.training.trainer import eager_steps_note


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--arch-mlp-bot=13-8-3"], "--arch-mlp-bot"),
        (["--arch-embedding-size=200-0-5"], "--arch-embedding-size"),
        (["--arch-embedding-size=200-x-5"], "--arch-embedding-size"),
        (["--optimizer=rmsprop"], "--optimizer"),
        (["--mlet-hidden=-1"], "--mlet-hidden"),
        (["--mlet-hidden=2"], "--mlet-hidden"),
        (["--mlet-hidden=8", "--mlet-init=uniform"], "--mlet-init"),
        (["--arch-mlp-top=8-2"], "--arch-mlp-top"),
        (["--learning-rate=0"], "--learning-rate"),
        (["--loss-function=wbce", "--loss-weights=1.0"], "--loss-weights"),
        (["--inference-only"], "--inference-only"),
        (["--round-targets=maybe"], "--round-targets"),
        (["--rand-data-dist=bogus"], "--rand-data-dist"),
        (["--rand-data-dist=gaussian", "--rand-data-sigma=0"], "--rand-data-sigma: must be > 0"),
        (["--rand-data-dist=gaussian", "--rand-data-min=5", "--rand-data-max=2"], "--rand-data-max: must be >="),
        (["--rand-data-dist=gaussian", "--rand-data-mu=nan"], "--rand-data-mu: must be a finite number"),
        (["--lr-num-warmup-steps=10", "--lr-decay-start-step=5", "--lr-num-decay-steps=5"], "--lr-decay-start-step"),
        (["--mini-batch-size=0"], "--mini-batch-size"),
        (["--save-freq=5"], "--save-freq"),
        (["--save-model=a.pt", "--save-collapsed=./a.pt"], "--save-collapsed"),
        (["--load-model=tests"], "--load-model tests: is not a file"),
        (["--load-model=nope.pt"], "--load-model nope.pt: no such checkpoint file"),
        (["--inference-only", f"--load-model={ROOT / 'README.md'}", "--save-collapsed=b.pt"], "--save-collapsed"),
        (["--optimizer=adam", "--embedding-update=fused"], "--embedding-update"),
        (["--optimizer=rwsadagrad", "--embedding-update=autograd"], "--optimizer rwsadagrad runs only with the fused"),
        (["--compile=default"], "--compile=default: compiles the CUDA-graph training step, which needs --use-gpu"),
        (["--compile=fast"], "--compile"),
        (["--inference-only", f"--load-model={ROOT / 'README.md'}", "--save-model=b.pt"], "--save-model"),
        (["--numpy-rand-seed=-1"], "--numpy-rand-seed"),
        ([f"--numpy-rand-seed={2**64}"], "--numpy-rand-seed"),
        (["--print-precision=0"], "--print-precision"),
        (["--test-mini-batch-size=0"], "--test-mini-batch-size"),
        (["--arch-embedding-size="], "--arch-embedding-size"),
        (["--data-generation=synthetic", "--synthetic-rank=0"], "--synthetic-rank"),
        (["--synthetic-zipf=nan"], "--synthetic-zipf"),
        (["--synthetic-noise-std=-1"], "--synthetic-noise-std"),
        (["--synthetic-positive-rate=1"], "--synthetic-positive-rate"),
        (["--qr-flag", "--qr-collisions=0"], "--qr-collisions: must be >= 1, got 0"),
        (["--qr-threshold=-1"], "--qr-threshold"),
        (["--qr-flag", "--qr-threshold=100", "--qr-collisions=2000"], "--qr-collisions: 2000 leaves table 0's pair"),
        (["--qr-flag", "--qr-threshold=100", f"--qr-collisions={10**12}"], "no smaller than its"),
        (["--arch-embedding-size=1000000000000-5-5"], "--arch-embedding-size: the model does not fit in this machine"),
        (
            ["--qr-flag", "--qr-operation=concat", "--arch-sparse-feature-size=3", "--arch-mlp-bot=13-8-3"],
            "d must be even",
        ),
        (["--qr-flag", "--qr-operation=concat", "--arch-mlp-bot=13-8-8"], "upstream's 4 per half"),
        (["--qr-operation=xor"], "--qr-operation"),
        (["--md-flag", "--md-temperature=-0.3"], "--md-temperature: must be a finite number >= 0, got -0.3"),
        (["--md-temperature=nan"], "--md-temperature"),
        (["--md-threshold=-5"], "--md-threshold"),
        (["--quantize-emb-with-bit=3"], "--quantize-emb-with-bit: tables quantize to 4 or 8 bits"),
        (["--quantize-emb-with-bit=16"], "--quantize-emb-with-bit"),
        (["--quantize-emb-with-bit=eight"], "--quantize-emb-with-bit"),
        (
            ["--inference-only", f"--load-model={ROOT / 'README.md'}", "--quantize-emb-with-bit=8-4"],
            "--inference-only evaluates one model",
        ),
    ],
)
def test_bad_flags_give_one_line_naming_the_flag(flags: list[str], named: str, capsys) -> None:
    code, _, err = run_cli([*TINY, *flags], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert named in lines[0] and "Traceback" not in err


def test_unwritable_or_clashing_outputs_are_reported_before_training(tmp_path, capsys) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("not a folder")
    checkpoint = tmp_path / "m.pt"
    cases = [
        ([f"--results-json={a_file}/run.json"], f"--results-json {a_file}/run.json: {a_file} is a file, not a folder"),
        ([f"--save-model={a_file}/m.pt"], f"--save-model {a_file}/m.pt: {a_file} is a file, not a folder"),
        (["--mlet-hidden=8", f"--save-collapsed={a_file}/c.pt"], "--save-collapsed"),
        ([f"--results-json={tmp_path}"], f"--results-json {tmp_path}: is a folder"),
        (["--save-model=/"], "--save-model /: is a folder"),  # a path without a name: no traceback deriving from it
        ([f"--save-model={tmp_path}/."], f"--save-model {tmp_path}/.: is a folder"),
        ([f"--save-model={checkpoint}", f"--results-json={checkpoint}"], "--results-json"),
    ]
    for flags, message in cases:
        code, out, err = run_cli([*TINY, *flags], capsys)
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert "Finished training" not in out  # refused before any training
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no probes or temporaries left behind


def test_results_that_cannot_be_written_late_are_one_error_and_leave_no_temporary(tmp_path) -> None:
    target = tmp_path / "out"
    target.mkdir()  # e.g. made a folder while the run trained
    with pytest.raises(UserError, match=r"out: cannot write the results \(Is a directory\)$"):
        write_json(str(target), {"auc": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    ("name", "flags", "flag"),
    [
        ("m.pt", ["--inference-only", "--results-json=m.pt"], "--results-json"),
        ("dlrm_mlet.onnx", ["--inference-only", "--save-onnx"], "--save-onnx"),
        ("dlrm_mlet.onnx.data", ["--inference-only", "--save-onnx"], "--save-onnx (external data)"),
        ("m.prof", ["--inference-only", "--enable-profiling", "--profile-prefix=m"], "--enable-profiling (top ops)"),
        ("m.pt", ["--save-model=n.pt", "--save-collapsed=m.pt"], "--save-collapsed"),
        ("m.pt", ["--save-model=n.pt", "--save-best=m.pt"], "--save-best"),
    ],
)
def test_outputs_may_not_overwrite_the_loaded_checkpoint(name, flags, flag, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_cli([*TINY, f"--save-model={name}"], capsys)[0] == 0
    before = (tmp_path / name).read_bytes()
    code, out, err = run_cli([*TINY, f"--load-model={name}", *flags], capsys)
    assert code == 2 and "time/loss" not in out and len(err.strip().splitlines()) == 1, err
    assert f"error: {flag} " in err and "same file as --load-model; one would overwrite the other" in err
    assert (tmp_path / name).read_bytes() == before


def test_save_model_may_name_the_loaded_checkpoint(tmp_path, capsys) -> None:
    checkpoint = tmp_path / "m.pt"  # resuming writes the continued run over the file it loaded
    assert run_cli([*TINY, f"--save-model={checkpoint}"], capsys)[0] == 0
    assert run_cli([*TINY, "--nepochs=2", f"--load-model={checkpoint}", f"--save-model={checkpoint}"], capsys)[0] == 0
    assert torch.load(checkpoint, weights_only=True)["position"]["epoch"] == 2


def test_gpu_flag_without_gpu_is_reported(capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = run_cli([*TINY, "--use-gpu"], capsys)
    assert code == 2 and "--use-gpu" in err and len(err.strip().splitlines()) == 1


def test_upstream_bool_flags_parse_false() -> None:
    """Upstream's type=bool made '--flag=False' true; here it is false."""
    assert configs.parse_args([*TINY, "--arch-interaction-itself=False"]).arch_interaction_itself is False
    assert configs.parse_args([*TINY, "--arch-interaction-itself"]).arch_interaction_itself is True
    assert configs.parse_args([*TINY, "--round-targets=1"]).round_targets is True


def test_run_config_fills_architecture() -> None:
    run = configs.run_config([*TINY, "--mlet-hidden=16"])
    config = run.model
    assert config.table_sizes == (200, 30, 5) and config.bottom_mlp == (13, 8, 4) and config.top_mlp == (8, 1)
    assert config.mlet_hidden == 16 and config.interaction_width() == 4 + 6
    assert run.flags["table_sizes"] == [200, 30, 5] and run.flags["bottom_mlp"] == [
        13,
        8,
        4,
    ]  # as checkpoints record them


def test_the_command_line_starts_without_importing_the_compiler_or_scikit_learn() -> None:
    """``--help``, a flag error and a run without ``--compile`` do not wait for ``torch._dynamo``, inductor
    or scikit-learn (seconds of imports: each is imported where it is used)."""
    heavy = ["torch._dynamo", "torch._inductor", "sklearn"]
    code = f"import sys, dlrm_mlet; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def two_epochs_with_step(step_class: type[TrainStep], monkeypatch, capsys) -> str:
    """The log of two epochs of tiny random data whose training step is a ``step_class``."""
    monkeypatch.setattr(
        trainer_module,
        "make_train_step",
        lambda model, loss_fn, optimizer, **_: step_class(model, loss_fn, optimizer),
    )
    code, out, err = run_cli([*TINY, "--nepochs=2"], capsys)
    assert code == 0, err
    return out


@pytest.mark.parametrize("eager_share", [1.0, 0.25])
def test_a_run_whose_graphed_steps_run_eagerly_over_a_quarter_of_an_epoch_says_so_once(
    eager_share: float, monkeypatch, capsys
) -> None:
    """When more than a quarter of an epoch's steps miss the captured shape, the log says so, once per run."""
    counted = 0

    class CountingStep(TrainStep):
        def __call__(self, batch):
            nonlocal counted
            counted += 1
            self.other_shape_steps += counted % round(1 / eager_share) == 0  # every step, or every fourth
            return super().__call__(batch)

    out = two_epochs_with_step(CountingStep, monkeypatch, capsys)
    notes = [line for line in out.splitlines() if "ran eagerly" in line]
    if eager_share == 1.0:
        assert len(notes) == 1 and "--num-indices-per-lookup-fixed" in notes[0], out
    else:
        assert notes == []


def test_a_run_whose_graphed_step_pads_multi_hot_bags_says_so_once(monkeypatch, capsys) -> None:
    class PaddingStep(TrainStep):
        padded_bag_length = 7

    out = two_epochs_with_step(PaddingStep, monkeypatch, capsys)
    assert [line for line in out.splitlines() if "padded" in line] == [
        "cuda graph: multi-hot bags padded to 7 ids each (the longest the data makes; padding ids weigh 0), so that"
        " one graph replays batches of every total"
    ]
    monkeypatch.undo()  # the eager step on the CPU pads nothing
    code, out, err = run_cli([*TINY, "--nepochs=2"], capsys)
    assert code == 0 and "padded" not in out, err


def test_one_eager_step_of_an_epoch_is_no_reason_for_the_note() -> None:
    """An epoch's last, smaller batch runs eagerly in every graphed run: alone it says nothing, even in the
    few steps a resumed run trains of an epoch."""
    assert eager_steps_note(1, 2, epoch=3) is None
    assert eager_steps_note(2, 7, epoch=3) is not None and "epoch 3" in eager_steps_note(2, 7, epoch=3)
    assert eager_steps_note(2, 8, epoch=3) is None


def test_parse_args_raises_user_error_not_traceback() -> None:
    with pytest.raises(UserError, match="--arch-mlp-bot"):
        configs.parse_args([*TINY, "--arch-mlp-bot=13-8-5"])


def test_results_json_contents(tmp_path, capsys) -> None:
    out = tmp_path / "run.json"
    code, stdout, _ = run_cli(
        [
            *TINY,
            "--mlet-hidden=16",
            "--test-freq=5",
            f"--results-json={out}",
            "--test-data-size=500",
            "--test-mini-batch-size=64",
        ],
        capsys,
    )
    assert code == 0
    result = json.loads(out.read_text())
    for key in ("auc", "logloss", "accuracy"):
        assert 0.0 <= result["final"][key] <= 1.0 or key == "logloss"
        assert result["best"][key] is not None
    assert result["final"]["samples"] == 500  # whole test set, not cut at the training batch count
    assert [h["iteration"] for h in result["history"]] == [5, 10, 12]
    assert result["train_samples_per_second"] > 0
    params = result["parameters"]
    rows = 200 + 30 + 5
    assert params["embedding_training_bytes"] == 4 * (rows * 16 + 3 * 16 * 4)
    assert params["embedding_inference_bytes"] == 4 * rows * 4
    assert (
        params["training"]["bytes"] - params["inference"]["bytes"]
        == params["embedding_training_bytes"] - params["embedding_inference_bytes"]
    )
    assert result["args"]["mlet_hidden"] == 16 and result["model_config"]["mlet_hidden"] == 16
    assert "Testing at - 5/12 of epoch 0" in stdout and "Finished training it 12/12 of epoch 0" in stdout


@pytest.mark.parametrize(
    ("flags", "said", "tables"),
    [
        ([], "the tables as trained (plain d=4 tables), nothing to collapse", "plain d=4 tables"),
        (["--mlet-hidden=8"], "MLET tables collapsed from K=8 to plain d=4 tables; no optimizer state", "K=8 -> plain"),
        (
            ["--mlet-hidden=8", "--qr-flag", "--qr-threshold=100"],
            "MLET tables collapsed from K=8 to plain d=4 tables (quotient-remainder mult x4 on 1 table)",
            "K=8 -> plain d=4 tables (quotient-remainder mult x4 on 1 table)",
        ),
    ],
)
def test_save_collapsed_and_collapse_say_what_they_wrote(flags: list[str], said: str, tables: str, tmp_path, capsys):
    saved, trained = tmp_path / "c.pt", tmp_path / "m.pt"
    code, out, err = run_cli([*TINY, *flags, f"--save-collapsed={saved}", f"--save-model={trained}"], capsys)
    assert code == 0, err
    assert f"saved {saved} (inference checkpoint: {said}" in out
    assert checkpoint.main(["collapse", str(trained), str(tmp_path / "again.pt")]) == 0
    assert f"inference checkpoint, {tables}" in capsys.readouterr().out


class Terminal(io.StringIO):
    """A stderr that says it is a terminal (tqdm draws its bars only on one)."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("progress", [True, False])
def test_evaluation_shows_a_progress_bar_on_a_terminal(progress: bool, monkeypatch, capsys) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = override_flags(TINY, "--test-data-size=100", "--test-mini-batch-size=10", f"--progress={progress}")
    assert dlrm_mlet.main(argv) == 0
    bars = terminal.getvalue()
    assert ("evaluating on test:" in bars and "/10 [" in bars) == progress, bars[-500:]  # 10 test batches


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags",
    [
        ["--loss-function=mse"],
        ["--loss-function=wbce", "--loss-weights=1.0-3.0"],
        ["--optimizer=adagrad"],
        ["--optimizer=adam"],
    ],
)
def test_losses_and_optimizers_train(flags: list[str], tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    code, _, err = run_cli([*TINY, "--mlet-hidden=8", f"--results-json={out}", *flags], capsys)
    assert code == 0, err
    assert json.loads(out.read_text())["final"]["logloss"] > 0


def test_multi_hot_random_bags(tmp_path, capsys) -> None:
    code, _, err = run_cli(
        [*TINY, "--num-indices-per-lookup=4", "--mlet-hidden=8", "--arch-interaction-itself"], capsys
    )
    assert code == 0, err


def test_lr_schedule_flags_run(capsys) -> None:
    code, _, err = run_cli(
        [*TINY, "--lr-num-warmup-steps=3", "--lr-decay-start-step=5", "--lr-num-decay-steps=4"], capsys
    )
    assert code == 0, err


def test_reduction_settings_without_their_switch_are_named(capsys) -> None:
    code, out, err = run_cli([*TINY, "--qr-collisions=8", "--md-temperature=0.5", "--md-flag=false"], capsys)
    assert code == 0, err
    assert "--qr-collisions: ignored without --qr-flag" in out and "--md-temperature: ignored without --md-flag" in out
    code, out, err = run_cli([*TINY, "--qr-flag", "--qr-threshold=100", "--qr-collisions=8"], capsys)
    assert code == 0 and "ignored without" not in out, err


def test_the_data_line_says_when_num_batches_caps_an_epoch(tmp_path, capsys) -> None:
    """On a data set ``--num-batches`` caps each epoch: the start-of-run line says so beside the full count."""
    argv = [
        "--data-generation=dataset",
        "--data-set=kaggle",
        f"--raw-data-file={sample_file('criteo_kaggle_train_head1999.txt')}",
        f"--processed-data-file={tmp_path / 'p'}",
        "--arch-sparse-feature-size=4",
        "--arch-mlp-bot=13-8-4",
        "--arch-mlp-top=8-1",
        "--mini-batch-size=32",
        "--num-batches=3",
        "--progress=false",
    ]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    batches = int(re.search(r"train [\d,]+ samples \((\d+) batches, 3 an epoch \(--num-batches\)\)", out).group(1))
    assert batches > 3


def test_random_data_draws_as_the_flags_say(capsys) -> None:
    """Upstream's --rand-data-* and --round-targets reach the random data (the log names how it is drawn); their
    settings without gaussian ids, or without random data, are named as ignored."""
    code, out, err = run_cli([*TINY, "--rand-data-dist=gaussian", "--rand-data-max=20", "--rand-data-sigma=4"], capsys)
    assert code == 0, err
    assert "random (gaussian ids (mu the middle, sigma 4, within [0, 20]), soft labels)" in out
    assert "ignored" not in out
    code, out, err = run_cli([*TINY, "--round-targets", "--rand-data-mu=3"], capsys)
    assert code == 0, err
    assert (
        "random (uniform ids, 0/1 labels)" in out and "--rand-data-mu: ignored without --rand-data-dist=gaussian" in out
    )
    run = configs.run_config([*TINY, "--rand-data-dist=gaussian", "--rand-data-min=1", "--rand-data-mu=2"])
    assert (run.data.random.distribution, run.data.random.low, run.data.random.mu) == ("gaussian", 1.0, 2.0)
    synthetic = configs.run_config([*TINY, "--data-generation=synthetic", "--rand-data-dist=gaussian"])
    assert synthetic.notes == ("--rand-data-dist: ignored: only --data-generation=random draws ids",)
    # settings that draw nothing are not checked either (upstream accepts them): named as ignored
    uniform = configs.run_config([*TINY, "--rand-data-sigma=0", "--rand-data-max=-1"])
    assert uniform.notes == (
        "--rand-data-max: ignored without --rand-data-dist=gaussian",
        "--rand-data-sigma: ignored without --rand-data-dist=gaussian",
    )


def test_flags_of_generated_data_that_nothing_reads_are_named() -> None:
    """--data-size and the bag flags beside a data set, the click model's flags beside random data: each a line
    (they were accepted without a word); where they generate something, none."""
    tiny = [flag for flag in TINY if not flag.startswith("--data-generation")]
    flags = ["--data-size=100", "--num-indices-per-lookup=5", "--num-indices-per-lookup-fixed", "--synthetic-rank=4"]
    synthetic = configs.run_config([*tiny, "--data-generation=synthetic", *flags])
    assert synthetic.notes == (
        "--num-indices-per-lookup: ignored: only --data-generation=random reads it",
        "--num-indices-per-lookup-fixed: ignored: only --data-generation=random reads it",
    )
    random = configs.run_config([*TINY, *flags])
    assert random.notes == ("--synthetic-rank: ignored: only --data-generation=synthetic reads it",)
    dataset = [f"--raw-data-file={sample_file('criteo_kaggle_train_sample100.txt')}", "--arch-mlp-bot=13-2"]
    with_data = configs.run_config(["--data-generation=dataset", "--data-set=kaggle", *dataset, *flags[:2]])
    assert with_data.notes == (
        "--data-size: ignored: only --data-generation=random or synthetic reads it",
        "--num-indices-per-lookup: ignored: only --data-generation=random reads it",
    )


def test_flags_that_change_nothing_here_are_named(capsys) -> None:
    """--mlet-init without MLET, and the GPU's --tf32 and --data-on-device=on without --use-gpu, each get a line."""
    code, out, err = run_cli([*TINY, "--mlet-init=xavier", "--tf32", "--data-on-device=on"], capsys)
    assert code == 0, err
    assert "--mlet-init: ignored without --mlet-hidden" in out
    assert "--tf32: ignored without --use-gpu" in out
    assert "--data-on-device=on: without --use-gpu the data stays in host memory" in out
    assert not configs.run_config([*TINY, "--mlet-init=xavier", "--mlet-hidden=8"]).notes
    assert not configs.run_config([*TINY, "--mlet-init=normal", "--tf32=false", "--data-on-device=off"]).notes


@pytest.mark.parametrize(("sizes", "says"), [("200", "model: 1 table (plain"), ("200-30", "model: 2 tables (plain")])
def test_the_model_line_counts_its_tables_in_words(sizes: str, says: str, capsys) -> None:
    """One table was 'model: 1 tables'."""
    code, out, err = run_cli(override_flags(TINY, f"--arch-embedding-size={sizes}", "--num-batches=1"), capsys)
    assert code == 0 and says in out, err
