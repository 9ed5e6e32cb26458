"""The ``dlrm_mlet.py`` command line: its flags, in groups (checked and turned into configs by ``mlet/cli/configs.py``).

Upstream DLRM's flags keep their names and meanings; the upstream and MLET-fork
flags that are no-ops or refused here come from :mod:`mlet.cli.upstream`.
"""

from __future__ import annotations

import argparse

from mlet.cli.reporting import add_reporting_flags
from mlet.cli.upstream import add_foreign_flags
from mlet.core.config import (
    COMPILE_MODES,
    DATA_GENERATIONS,
    INTERACTIONS,
    LOSSES,
    OPTIMIZERS,
    QR_OPERATIONS,
    RANDOM_ID_DISTRIBUTIONS,
)
from mlet.core.errors import OneLineParser, add_bool
from mlet.data.device import PLACEMENTS
from mlet.data.flags import add_dataset_flags
from mlet.parallel import process_group

PROG = "dlrm_mlet.py"
DEFAULT_EMBEDDING_SIZE = "4-3-2"
NO_QUANTIZATION = 32  # --quantize-emb-with-bit: float tables, upstream's default
DEFAULT_OPTIMIZER = "sgd"
DESCRIPTION = """dlrm-mlet: train DLRM with plain or MLET (two-layer) embedding tables.

Upstream DLRM's flags keep their names and meanings (docs/upstream.md: every
upstream and MLET-fork flag, and what it does here); --mlet-hidden K trains
every table as W1 (n x K) @ W2 (K x d); upstream's quotient-remainder (--qr-*),
mixed-dimension (--md-*) and quantization (--quantize-emb-with-bit) flags work
too."""


def build_parser() -> OneLineParser:
    """The command-line parser (upstream DLRM flags plus MLET's)."""
    p = OneLineParser(prog=PROG, usage=f"{PROG} [--flag=VALUE ...]", description=DESCRIPTION)
    add_model_flags(p.add_argument_group("model"))
    add_reduction_flags(p)
    add_data_flags(p)
    training = p.add_argument_group("training")
    add_training_flags(training)
    add_device_flags(training)
    test = p.add_argument_group("testing and logging")
    add_testing_flags(test)
    add_reporting_flags(test)
    add_checkpoint_flags(p.add_argument_group("checkpoints"))
    add_multi_process_flags(p.add_argument_group("several processes (launch with torchrun; see docs/distributed.md)"))
    add_foreign_flags(p)
    return p


def add_model_flags(arch: argparse._ActionsContainer) -> None:
    """The architecture flags."""
    arch.add_argument(
        "--arch-sparse-feature-size", type=int, default=2, help="embedding dimension d (the width the interaction sees)"
    )
    arch.add_argument(
        "--arch-embedding-size",
        type=str,
        default=None,
        help=(
            f"rows of each table, dash-separated (default: {DEFAULT_EMBEDDING_SIZE} for generated data; "
            "a data set's own sizes, which a given value must match)"
        ),
    )
    arch.add_argument("--arch-mlp-bot", type=str, default="4-3-2", help="bottom MLP widths, dense input first, d last")
    arch.add_argument("--arch-mlp-top", type=str, default="4-2-1", help="top MLP widths after the interaction, 1 last")
    arch.add_argument(
        "--arch-interaction-op", choices=INTERACTIONS, default="dot", help="feature interaction: dot products or concat"
    )
    add_bool(arch, "--arch-interaction-itself", False, "include self dot products")
    arch.add_argument("--mlet-hidden", type=int, default=0, help="MLET inner width K (0: plain tables)")
    arch.add_argument("--mlet-init", type=str, default="normal", help="W2 init: normal (std 0.25), normal-STD, xavier")


def add_reduction_flags(parser: argparse.ArgumentParser) -> None:
    """The quotient-remainder, mixed-dimension and quantization flags, with upstream's defaults."""
    qr = parser.add_argument_group("quotient-remainder tables (upstream's --qr-*)")
    add_bool(qr, "--qr-flag", False, "store each table of more than --qr-threshold rows as a quotient-remainder pair")
    qr.add_argument("--qr-threshold", type=int, default=200, help="tables with more rows than this get the pair")
    qr.add_argument("--qr-collisions", type=int, default=4, help="rows of the remainder table (ids sharing a quotient)")
    qr.add_argument(
        "--qr-operation",
        choices=QR_OPERATIONS,
        default="mult",
        help="how the two rows combine (concat: each half d/2 wide)",
    )
    md = parser.add_argument_group("mixed-dimension tables (upstream's --md-*)")
    add_bool(md, "--md-flag", False, "give each table a width from its popularity, projected to d")
    md.add_argument("--md-threshold", type=int, default=200, help="tables of at most this many rows keep d")
    md.add_argument("--md-temperature", type=float, default=0.3, help="alpha: width ~ (rows per query) ** -alpha")
    add_bool(md, "--md-round-dims", False, "round the widths to powers of 2")
    parser.add_argument(
        "--quantize-emb-with-bit",
        type=str,
        default=str(NO_QUANTIZATION),
        help=(
            "4 or 8: row-wise quantized tables at evaluation (--inference-only: the model evaluated; "
            "training: also evaluated so after training, into the results' 'quantized'; 8-4 for both); 32: none"
        ),
    )


def add_data_flags(p: argparse.ArgumentParser) -> None:
    """Where the data come from: generated (random, the click model) or a data set."""
    data = p.add_argument_group("data")
    data.add_argument(
        "--data-generation",
        choices=DATA_GENERATIONS,
        default="random",
        help="random: upstream's random ids and labels; synthetic: the click model; dataset: --data-set's files",
    )
    data.add_argument("--data-size", type=int, default=1, help="training samples of generated data")
    data.add_argument(
        "--test-data-size",
        type=int,
        default=None,
        help="test samples of generated data (default: a quarter of train, at most 262144); on a data set, a cap "
        "on the validation and test rows evaluated (their first N; none unless given)",
    )
    data.add_argument("--num-batches", type=int, default=0, help="training batches per epoch (0: all)")
    data.add_argument(
        "--num-indices-per-lookup", type=int, default=10, help="ids per bag of random data (upper bound unless fixed)"
    )
    add_bool(
        data, "--num-indices-per-lookup-fixed", False, "every random bag holds exactly --num-indices-per-lookup ids"
    )
    add_dataset_flags(data)
    data.add_argument(
        "--num-workers", type=int, default=-1, help="threads assembling training batches (-1: 1 on CPU, 4 on GPU)"
    )
    add_bool(
        data,
        "--round-targets",
        False,
        "random data: 0/1 labels (otherwise soft labels, uniform in [0, 1), as upstream); metrics always round labels",
    )
    add_random_id_flags(data)
    data.add_argument(
        "--data-on-device",
        choices=PLACEMENTS,
        default="auto",
        help="hold the training and test data in device memory and cut batches there (auto: on a GPU when it fits"
        " beside the model; off on a CPU)",
    )
    synth = p.add_argument_group("synthetic click model (--data-generation=synthetic)")
    synth.add_argument("--synthetic-rank", type=int, default=16, help="rank of the planted latent vectors")
    synth.add_argument("--synthetic-zipf", type=float, default=1.05, help="Zipf exponent of value popularity")
    synth.add_argument("--synthetic-interaction-std", type=float, default=3.0, help="logit std of the pairwise term")
    synth.add_argument("--synthetic-bias-std", type=float, default=0.8, help="logit std of per-value biases")
    synth.add_argument("--synthetic-dense-std", type=float, default=0.5, help="logit weight of the dense term")
    synth.add_argument("--synthetic-noise-std", type=float, default=0.0, help="extra Gaussian logit noise")
    synth.add_argument("--synthetic-positive-rate", type=float, default=0.25, help="target share of clicks")


def add_random_id_flags(data: argparse._ActionsContainer) -> None:
    """How ``--data-generation=random`` draws ids: upstream's ``--rand-data-*`` flags and defaults."""
    data.add_argument(
        "--rand-data-dist",
        choices=RANDOM_ID_DISTRIBUTIONS,
        default="uniform",
        help="random ids: uniform over each table, or gaussian (N(mu, sigma) within [min, max] and the table)",
    )
    data.add_argument("--rand-data-min", type=float, default=0.0, help="gaussian ids: the smallest id")
    data.add_argument("--rand-data-max", type=float, default=1.0, help="gaussian ids: the largest id")
    data.add_argument(
        "--rand-data-mu", type=float, default=-1.0, help="gaussian ids: the mean (default: -1, the middle of min-max)"
    )
    data.add_argument("--rand-data-sigma", type=float, default=1.0, help="gaussian ids: the standard deviation")


def add_training_flags(train: argparse._ActionsContainer) -> None:
    """Loss, optimizer, schedule, seed, device."""
    train.add_argument(
        "--loss-function", choices=LOSSES, default="bce", help="training loss (default: bce; upstream's is mse)"
    )
    train.add_argument("--loss-weights", type=str, default="1.0-1.0", help="wbce weights of negatives-positives")
    train.add_argument(
        "--loss-threshold",
        type=float,
        default=0.0,
        help="t in (0, 0.5): clamp predicted probabilities to [t, 1-t] in the loss, as upstream (default: 0, off)",
    )
    train.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=None,
        help=f"optimizer of tables and MLPs (default: {DEFAULT_OPTIMIZER})",
    )
    train.add_argument(
        "--optim",
        choices=OPTIMIZERS,
        default=None,
        help="the MLET fork's name of --optimizer (default: as --optimizer; both given must agree)",
    )
    train.add_argument(
        "--embedding-update",
        choices=("auto", "fused", "autograd"),
        default="auto",
        help=(
            "fused: table rows updated inside the backward (sgd, adagrad, rwsadagrad); "
            "autograd: sparse gradients + torch optimizer; auto: fused where supported"
        ),
    )
    train.add_argument("--learning-rate", type=float, default=0.01, help="base learning rate")
    train.add_argument("--mini-batch-size", type=int, default=1, help="training batch (under torchrun: the global one)")
    train.add_argument("--nepochs", type=int, default=1, help="epochs over the training data")
    train.add_argument("--lr-num-warmup-steps", type=int, default=0, help="steps of linear warm-up (0: none)")
    train.add_argument("--lr-decay-start-step", type=int, default=0, help="step where the polynomial decay starts")
    train.add_argument(
        "--lr-num-decay-steps",
        type=int,
        default=0,
        help="steps of polynomial decay (0: none); its last rate holds after",
    )
    train.add_argument(
        "--numpy-rand-seed", type=int, default=123, help="seed of everything: data, initialisation, shuffling"
    )
    add_bool(
        train,
        "--adapt-threads",
        True,
        "on a CPU, train with fewer threads while other processes use the cores (false: a fixed count, as exact resumes"
        " need)",
    )


def add_device_flags(train: argparse._ActionsContainer) -> None:
    """Where and in what precision the step runs: the GPU, its CUDA graph, TF32, bfloat16, ``torch.compile``."""
    add_bool(train, "--use-gpu", False, "train on the (first) CUDA device")
    add_bool(train, "--cuda-graph", True, "on GPU with the fused update, replay each training step from a CUDA graph")
    add_bool(train, "--tf32", False, "allow TF32 matrix products on GPU (faster, less precise)")
    add_bool(
        train,
        "--bf16",
        False,
        "mixed precision: MLPs and interaction in bfloat16, tables, optimizer state and master weights in float32"
        " (MLET's projection too: add --tf32 for its products in TF32)",
    )
    train.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="none",
        help="torch.compile the GPU step's MLPs and dense update (fuses their elementwise kernels and bias sums; needs"
        " the CUDA-graph step); compiling takes seconds at start (default) or minutes (max-autotune)",
    )


def add_testing_flags(test: argparse._ActionsContainer) -> None:
    """When to test and what to log."""
    test.add_argument(
        "--test-freq",
        type=int,
        default=-1,
        help="test every N iterations, and at the end of each epoch (default: -1, only at the end of each epoch)",
    )
    test.add_argument(
        "--test-mini-batch-size", type=int, default=-1, help="test batch (default: -1, the --mini-batch-size)"
    )
    test.add_argument(
        "--test-num-workers",
        type=int,
        default=-1,
        help="threads assembling test batches (default: -1, as --num-workers)",
    )
    test.add_argument(
        "--eval-split",
        choices=("test", "val"),
        default="test",
        help="split the reported metrics come from (val: to choose settings without seeing test)",
    )
    test.add_argument("--print-freq", type=int, default=0, help="log every N iterations (0: about 20 lines per epoch)")
    add_bool(test, "--print-time", False, "add ms/it and samples/s to the training log lines")
    add_bool(test, "--print-wall-time", False, "add the wall-clock time (HH:MM) to the training log lines")
    test.add_argument("--print-precision", type=int, default=5, help="digits of logged losses and metrics")
    test.add_argument("--results-json", type=str, default="", help="write final and best metrics here")
    add_bool(test, "--progress", True, "show a tqdm progress bar (only on a terminal)")
    add_bool(test, "--inference-only", False, "only evaluate the --load-model checkpoint")


def add_checkpoint_flags(ckpt: argparse._ActionsContainer) -> None:
    """Saving, loading, collapsing."""
    ckpt.add_argument("--save-model", type=str, default="", help="write a resumable checkpoint here")
    ckpt.add_argument(
        "--save-freq", type=int, default=0, help="also checkpoint every N iterations (0: at the end only)"
    )
    ckpt.add_argument(
        "--save-best",
        type=str,
        default="",
        help="also write the checkpoint of the model at each test that improves the best AUC here (upstream's"
        " --save-model keeps the best model by test accuracy)",
    )
    ckpt.add_argument(
        "--load-model", type=str, default="", help="resume from (or, with --inference-only, evaluate) this checkpoint"
    )
    ckpt.add_argument(
        "--save-collapsed",
        type=str,
        default="",
        help="at the end, also write the inference checkpoint (MLET tables collapsed to n x d) here",
    )


def add_multi_process_flags(multi: argparse._ActionsContainer) -> None:
    """torchrun runs."""
    multi.add_argument(
        "--dist-backend",
        choices=process_group.BACKENDS,
        default=None,
        help="torch.distributed backend (default: nccl with --use-gpu, else gloo)",
    )
    multi.add_argument(
        "--dist-timeout",
        type=int,
        default=process_group.DEFAULT_TIMEOUT_S,
        help="seconds a collective may wait for the other processes (a wait for another run's build of the "
        "processed data is not counted)",
    )
