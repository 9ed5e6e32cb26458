"""Upstream DLRM's and the MLET fork's flags: each one classified and handled; --help states every default once."""

from __future__ import annotations

import argparse

import pytest
import torch
from helpers import ROOT, TINY, run_cli

import checkpoint
import data_utils
import dlrm_mlet
from mlet.cli import configs
from mlet.cli.upstream import FLAGS, FORK, UPSTREAM, WORKS
from mlet.core.config import TrainConfig
from mlet.core.errors import UserError
from mlet.training.losses import loss_function

# Every flag of upstream's dlrm_s_pytorch.py (its argparse block) and the fork's own flags.
UPSTREAM_FLAGS = [
    "arch-sparse-feature-size",
    "arch-embedding-size",
    "arch-mlp-bot",
    "arch-mlp-top",
    "arch-interaction-op",
    "arch-interaction-itself",
    "weighted-pooling",
    "md-flag",
    "md-threshold",
    "md-temperature",
    "md-round-dims",
    "qr-flag",
    "qr-threshold",
    "qr-operation",
    "qr-collisions",
    "activation-function",
    "loss-function",
    "loss-weights",
    "loss-threshold",
    "round-targets",
    "data-size",
    "num-batches",
    "data-generation",
    "rand-data-dist",
    "rand-data-min",
    "rand-data-max",
    "rand-data-mu",
    "rand-data-sigma",
    "data-trace-file",
    "data-set",
    "raw-data-file",
    "processed-data-file",
    "data-randomize",
    "data-trace-enable-padding",
    "max-ind-range",
    "data-sub-sample-rate",
    "num-indices-per-lookup",
    "num-indices-per-lookup-fixed",
    "num-workers",
    "memory-map",
    "mini-batch-size",
    "nepochs",
    "learning-rate",
    "print-precision",
    "numpy-rand-seed",
    "sync-dense-params",
    "optimizer",
    "dataset-multiprocessing",
    "inference-only",
    "quantize-mlp-with-bit",
    "quantize-emb-with-bit",
    "save-onnx",
    "use-gpu",
    "local_rank",
    "dist-backend",
    "print-freq",
    "test-freq",
    "test-mini-batch-size",
    "test-num-workers",
    "print-time",
    "print-wall-time",
    "debug-mode",
    "enable-profiling",
    "plot-compute-graph",
    "tensor-board-filename",
    "save-model",
    "load-model",
    "mlperf-logging",
    "mlperf-acc-threshold",
    "mlperf-auc-threshold",
    "mlperf-bin-loader",
    "mlperf-bin-shuffle",
    "mlperf-grad-accum-iter",
    "lr-num-warmup-steps",
    "lr-decay-start-step",
    "lr-num-decay-steps",
]
FORK_FLAGS = [
    "dump-emb-init",
    "enable-rp",
    "rp-file",
    "enable-rp-up",
    "rpup-file",
    "concat-og-features",
    "wide-feat-sel",
    "enable-linp",
    "enable-linp-up",
    "proj-down-dim",
    "proj-up-dim",
    "linp-init",
    "linp-act",
    "fp16",
    "avazu-db-path",
    "avazu-epoch-shuffle",
    "enable_amp",
    "apex-mode",
    "auc-only",
    "enable-auc",
    "optim",
]


def option_actions() -> dict[str, argparse.Action]:
    """Each option string of dlrm_mlet.py's parser and its action."""
    parser = dlrm_mlet.build_parser()
    return {name: action for action in parser._actions for name in action.option_strings}


def test_every_upstream_and_fork_flag_is_classified_and_parsed() -> None:
    by_name = {flag.name: flag for flag in FLAGS}
    assert sorted(by_name) == sorted(f"--{name}" for name in UPSTREAM_FLAGS + FORK_FLAGS)
    assert {by_name[f"--{n}"].origin for n in UPSTREAM_FLAGS} == {UPSTREAM}
    assert {by_name[f"--{n}"].origin for n in FORK_FLAGS} == {FORK}
    actions = option_actions()
    for flag in FLAGS:
        assert flag.name in actions, flag.name  # nothing an upstream command passes is an unknown argument
        if flag.status == WORKS:  # a flag of ours, not a compatibility placeholder
            assert actions[flag.name].default is not argparse.SUPPRESS or flag.name == "--optim", flag.name


def test_docs_list_every_flag_with_its_status() -> None:
    page = (ROOT / "docs" / "upstream.md").read_text().split("## Every flag", 1)[1]
    for flag in FLAGS:
        row = next((line for line in page.splitlines() if line.startswith(f"| `{flag.name}`")), None)
        assert row is not None, f"{flag.name} missing from docs/upstream.md"
        assert f"| {flag.status} |" in row, row


def test_help_states_every_default_once_and_explains_each_flag() -> None:
    parser = dlrm_mlet.build_parser()
    text = parser.format_help()
    assert "``" not in text  # no reST markup
    formatter = parser._get_formatter()
    for name, action in option_actions().items():
        if name in ("-h", "--help"):
            continue
        rendered = formatter._expand_help(action) if action.help else ""
        assert rendered.strip(), f"{name} has no help"
        if action.default is argparse.SUPPRESS:
            assert any(word in rendered for word in ("ignored", "refused", "default: as")), name
        else:
            assert rendered.count("default") == 1, f"{name}: {rendered}"
    assert "(default: --mini-batch-size) (default: -1)" not in text
    for other in (checkpoint.build_parser(), data_utils.command_line_parser()):
        assert "``" not in other.format_help()
    assert "(default: -1, the --mini-batch-size)" in text  # the sentinel explained


def test_no_op_flags_log_one_line_each_and_the_run_works(capsys) -> None:
    code, out, err = run_cli(
        [*TINY, "--memory-map", "--mlperf-bin-loader", "--sync-dense-params=True", "--local_rank=0"], capsys
    )
    assert code == 0, err
    for flag in ("--memory-map", "--mlperf-bin-loader", "--sync-dense-params", "--local_rank"):
        lines = [line for line in out.splitlines() if line.startswith(f"{flag}:")]
        assert len(lines) == 1 and "upstream DLRM's flag, ignored" in lines[0], out


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--weighted-pooling=learned"], "--weighted-pooling: upstream DLRM's flag, not supported here"),
        (["--activation-function=sigmoid"], "only relu is accepted"),
        (["--mlperf-grad-accum-iter=4"], "use a larger --mini-batch-size"),
        (["--fp16"], "--fp16: the MLET authors' fork's flag, not supported here"),
        (["--linp-init=xavier"], "use --mlet-init"),
        (["--enable-linp", "--arch-sparse-feature-size=64"], "write --mlet-hidden=64 --arch-sparse-feature-size=4"),
    ],
)
def test_refused_flags_give_one_line_naming_origin_and_alternative(flags, expected, capsys) -> None:
    code, out, err = run_cli([*TINY, *flags], capsys)
    assert code == 2 and "Finished training" not in out
    assert err.count("\n") == 1 and expected in err, err


def test_refused_flags_at_upstreams_default_value_are_no_ops(capsys) -> None:
    code, out, err = run_cli(
        [*TINY, "--activation-function=relu", "--quantize-mlp-with-bit=32", "--apex-mode=O0"],
        capsys,
    )
    assert code == 0, err
    assert "--activation-function: upstream DLRM's flag, ignored" in out


def test_torch_launch_rank_flags_are_accepted(capsys) -> None:
    """torch.distributed.launch passes --local_rank or --local-rank; upstream's parser also took the prefix --local."""
    for flag in ("--local_rank=0", "--local-rank=0", "--local=0"):
        code, out, err = run_cli([*TINY, flag], capsys)
        assert code == 0 and "--local_rank: upstream DLRM's flag, ignored" in out, err


def test_fork_optim_is_optimizer() -> None:
    """--optim names the optimizer alone or beside an --optimizer that agrees; the snapshot keeps the one name."""
    for flags in (["--optim=adagrad"], ["--optimizer=adagrad"], ["--optim=adagrad", "--optimizer=adagrad"]):
        run = configs.run_config([*TINY, *flags])
        assert run.train.optimizer == "adagrad" and run.flags is not None
        assert run.flags["optimizer"] == "adagrad" and "optim" not in run.flags
    assert configs.run_config(TINY).train.optimizer == "sgd"


@pytest.mark.parametrize("flags", [["--optimizer=adagrad", "--optim=sgd"], ["--optim=adagrad", "--optimizer=sgd"]])
def test_fork_optim_disagreeing_with_optimizer_is_refused(flags: list[str]) -> None:
    """Giving both names with different values stops with one line, whichever comes last (argparse kept the last)."""
    with pytest.raises(UserError, match=r"^--optim: the MLET fork's name of --optimizer.*give one of the two$"):
        configs.run_config([*TINY, *flags])


def test_loss_threshold_clamps_probabilities_as_upstream() -> None:
    logits = torch.tensor([-9.0, -0.3, 0.2, 7.0], requires_grad=True)
    labels = torch.tensor([0.0, 1.0, 0.0, 1.0])
    t = 0.05
    for kind in ("bce", "mse"):
        ours = loss_function(TrainConfig(loss_function=kind, loss_threshold=t), torch.device("cpu"))(logits, labels)
        p = torch.sigmoid(logits).clamp(t, 1 - t)  # upstream's clamp of the probability
        expected = (
            torch.nn.functional.binary_cross_entropy(p, labels)
            if kind == "bce"
            else torch.nn.functional.mse_loss(p, labels)
        )
        assert torch.allclose(ours, expected, atol=1e-6), kind
    unclamped = loss_function(TrainConfig(), torch.device("cpu"))(logits, labels)
    assert not torch.allclose(unclamped, ours)


def test_bad_reporting_flags(capsys) -> None:
    for flags, named in (
        (["--loss-threshold=0.7"], "--loss-threshold"),
        (["--mlperf-auc-threshold=2"], "--mlperf-auc-threshold"),
        (["--test-num-workers=-3"], "--test-num-workers"),
    ):
        code, _, err = run_cli([*TINY, *flags], capsys)
        assert code == 2 and named in err and err.count("\n") == 1, err
