"""Every flag of upstream DLRM's ``dlrm_s_pytorch.py`` and of the MLET authors' fork, and what it does here.

:data:`FLAGS` classifies each one:

* ``works``: the same meaning here (a flag of ``dlrm_mlet.py``; the note says
  where a default or a detail differs);
* ``no-op``: accepted, with one log line saying why nothing needs doing (it
  tuned upstream's own machinery, e.g. ``--memory-map``);
* ``refused``: one error line naming it as an upstream or fork flag, why, and
  what to use instead. Some are accepted at upstream's default value (listed
  in ``accepted``), where they change nothing.

:func:`add_foreign_flags` adds the no-op and refused flags to a parser (the
working ones are the command's own); :func:`check_foreign_flags` reports them.
docs/upstream.md is the same table for people.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mlet.core.errors import UserError, str2bool

WORKS, NO_OP, REFUSED = "works", "no-op", "refused"
UPSTREAM, FORK = "upstream DLRM", "the MLET authors' fork"


@dataclass(frozen=True)
class ForeignFlag:
    """One flag of upstream DLRM or the fork.

    ``takes_value``: the flag needs a value (``--flag=V``); otherwise it is a
    switch (``--flag``, also ``--flag=true|false``). ``accepted``: values of a
    refused flag that change nothing here (given with one of them, it is a no-op).
    """

    name: str
    origin: str
    status: str
    note: str
    takes_value: bool = False
    accepted: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        """The argparse attribute."""
        return self.name[2:].replace("-", "_")


def _works(name: str, note: str = "same meaning", origin: str = UPSTREAM) -> ForeignFlag:
    return ForeignFlag(name, origin, WORKS, note)


def _no_op(name: str, note: str, takes_value: bool = False, origin: str = UPSTREAM) -> ForeignFlag:
    return ForeignFlag(name, origin, NO_OP, note, takes_value)


def _refused(
    name: str, note: str, takes_value: bool = False, accepted: tuple[str, ...] = (), origin: str = UPSTREAM
) -> ForeignFlag:
    return ForeignFlag(name, origin, REFUSED, note, takes_value, accepted)


MLET_HINT = (
    "here MLET is --mlet-hidden=K, and --arch-sparse-feature-size is d, the width the interaction sees "
    "(in the fork it was K, the table width, and d the last width of --arch-mlp-bot)"
)

FLAGS: tuple[ForeignFlag, ...] = (
    # upstream dlrm_s_pytorch.py, in its order
    _works("--arch-sparse-feature-size"),
    _works("--arch-embedding-size", "same meaning; on a data set the sizes come from the data"),
    _works("--arch-mlp-bot"),
    _works("--arch-mlp-top"),
    _works("--arch-interaction-op"),
    _works("--arch-interaction-itself"),
    _refused(
        "--weighted-pooling",
        "per-sample weights of pooled ids are not supported; bags are summed, as upstream's default",
        takes_value=True,
    ),
    _works("--md-flag", "widths from the training counts' perplexity, projected to d; MLET inside with --mlet-hidden"),
    _works("--md-threshold"),
    _works("--md-temperature"),
    _works("--md-round-dims"),
    _works("--qr-flag", "a quotient and a remainder table per large table; MLET inside with --mlet-hidden"),
    _works("--qr-threshold"),
    _works("--qr-operation", "mult (default), add or concat, as upstream"),
    _works("--qr-collisions"),
    _refused(
        "--activation-function",
        "upstream parses it but its MLPs always use ReLU, as here; only relu is accepted",
        takes_value=True,
        accepted=("relu",),
    ),
    _works("--loss-function", "same choices (mse, bce, wbce); the default is bce here, mse upstream"),
    _works("--loss-weights"),
    _works("--loss-threshold", "clamps the predicted probability to [t, 1-t] in the training loss, as upstream"),
    _works(
        "--round-targets",
        "same meaning: random data has soft labels without it, as upstream; metrics round labels to 0/1 always",
    ),
    _works("--data-size"),
    _works("--num-batches"),
    _works("--data-generation", "random and dataset as upstream; synthetic is this project's click model"),
    _works(
        "--rand-data-dist",
        "uniform or gaussian, as upstream; a bag keeps repeated ids (upstream drops repeated draws)",
    ),
    _works("--rand-data-min"),
    _works("--rand-data-max", "same meaning; ids are also clipped to the table (upstream would index past it)"),
    _works("--rand-data-mu"),
    _works("--rand-data-sigma"),
    _no_op(
        "--data-trace-file",
        "only upstream's trace-driven generator (no longer among its --data-generation choices) reads it",
        takes_value=True,
    ),
    _works("--data-set", "kaggle and terabyte as upstream, and avazu"),
    _works("--raw-data-file", "kaggle: train.txt; terabyte: the day_ prefix or the folder of day_0 ... day_23"),
    _works("--processed-data-file", "a folder here (upstream: one .npz file); made on first use"),
    _works("--data-randomize", "total (default), day or none, as upstream; training rows are reshuffled each epoch"),
    _no_op(
        "--data-trace-enable-padding",
        "only upstream's trace-driven generator reads it",
        takes_value=True,
    ),
    _works("--max-ind-range", "id mod R, applied to the frequency-ranked ids; default 40M for terabyte"),
    _works("--data-sub-sample-rate", "drops that share of the negative training rows (seeded); terabyte and kaggle"),
    _works(
        "--num-indices-per-lookup",
        "same meaning; on a GPU, bags of random length are padded to it so that the CUDA graph replays them",
    ),
    _works("--num-indices-per-lookup-fixed"),
    _works("--num-workers", "threads assembling batches (upstream: DataLoader processes); default 1 on CPU, 4 on GPU"),
    _no_op("--memory-map", "the processed data is always memory-mapped here"),
    _works("--mini-batch-size"),
    _works("--nepochs"),
    _works("--learning-rate"),
    _works("--print-precision"),
    _works("--numpy-rand-seed"),
    _no_op(
        "--sync-dense-params",
        "the dense parameters are one copy per process, kept equal by gradient all-reduce",
        takes_value=True,
    ),
    _works("--optimizer", "sgd, adagrad and rwsadagrad (row-wise sparse Adagrad) as upstream, also on a GPU, and adam"),
    _no_op(
        "--dataset-multiprocessing",
        "preprocessing always uses the cores it has (Terabyte: one process per day file)",
    ),
    _works("--inference-only"),
    _refused(
        "--quantize-mlp-with-bit",
        "quantized MLPs are not supported; only 32 (float, upstream's default) is accepted",
        takes_value=True,
        accepted=("32",),
    ),
    _works(
        "--quantize-emb-with-bit",
        "4 or 8: row-wise quantized tables (torch's quantized embedding bags) for evaluation; training stays float",
    ),
    _works(
        "--save-onnx",
        "writes dlrm_mlet.onnx (the inference model: MLET tables collapsed), after training or of the"
        " --inference-only model",
    ),
    _works("--use-gpu"),
    ForeignFlag(
        "--local_rank",
        UPSTREAM,
        NO_OP,
        "the rank comes from torchrun's environment (LOCAL_RANK); launch with torchrun",
        takes_value=True,
        aliases=("--local-rank", "--local"),
    ),
    _works(
        "--dist-backend",
        "gloo and nccl, as upstream (default: nccl with --use-gpu, else gloo); upstream's mpi and ccl are not offered,"
        " and an mpirun launch is refused: launch with torchrun",
    ),
    _works("--print-freq", "same meaning; the default is about 20 lines per epoch here, every iteration upstream"),
    _works("--test-freq"),
    _works("--test-mini-batch-size"),
    _works("--test-num-workers", "threads assembling test batches (default: as --num-workers)"),
    _works("--print-time"),
    _works("--print-wall-time", "adds the wall-clock time (HH:MM) to the training log lines"),
    _works("--debug-mode", "prints the architecture, the training batches and the parameters before and after"),
    _works(
        "--enable-profiling",
        "a torch.profiler trace of a few steps and the top ops (dlrm_mlet.json and .prof; under --save-model's stem,"
        " or --profile-prefix)",
    ),
    _refused(
        "--plot-compute-graph",
        "upstream itself stops with an error for it (it needs pytorchviz); use --enable-profiling",
    ),
    _works("--tensor-board-filename", "TensorBoard scalars in that folder; off unless given (upstream: always)"),
    _works(
        "--save-model",
        "the latest state (at the end and every --save-freq), for an exact resume; upstream writes it at each test"
        " that beats its best accuracy, the best model: that is --save-best here, by AUC (see docs/checkpoints.md)",
    ),
    _works(
        "--load-model",
        "same meaning; upstream's own checkpoints are named and refused (other module names, no architecture stored)",
    ),
    _works("--mlperf-logging", "MLPerf :::MLLOG lines; the thresholds below also work without it"),
    _works("--mlperf-acc-threshold", "stops training at a test whose accuracy reaches it"),
    _works("--mlperf-auc-threshold", "stops training at a test whose AUC reaches it"),
    _no_op("--mlperf-bin-loader", "the processed data already is a binary, memory-mapped cache"),
    _no_op("--mlperf-bin-shuffle", "the training rows are shuffled every epoch (--data-randomize)"),
    _refused(
        "--mlperf-grad-accum-iter",
        "gradient accumulation is not supported; use a larger --mini-batch-size. 1 (no accumulation) is accepted",
        takes_value=True,
        accepted=("1",),
    ),
    _works("--lr-num-warmup-steps"),
    _works("--lr-decay-start-step"),
    _works(
        "--lr-num-decay-steps",
        "same meaning, upstream's rate at every step, but the base rate holds between warm-up and decay "
        "(upstream: the last warm-up rate)",
    ),
    # the MLET authors' fork (benghaem/dlrm_mlet): its own flags
    _refused("--enable-linp", MLET_HINT, origin=FORK),
    _refused("--enable-linp-up", "the up-projection after MLET is not part of MLET here; " + MLET_HINT, origin=FORK),
    _refused(
        "--proj-down-dim",
        "the fork's projection width; here it is --arch-sparse-feature-size (d), and --mlet-hidden is K",
        takes_value=True,
        origin=FORK,
    ),
    _refused(
        "--proj-up-dim", "the up-projection is not part of MLET here; " + MLET_HINT, takes_value=True, origin=FORK
    ),
    _refused(
        "--linp-init",
        "use --mlet-init: normal and normal-STD mean the same; xavier is uniform here (the fork's is normal)",
        takes_value=True,
        origin=FORK,
    ),
    _refused(
        "--linp-act",
        "MLET's projection is linear here; only none (the fork's default) is accepted",
        takes_value=True,
        accepted=("none",),
        origin=FORK,
    ),
    _works(
        "--optim",
        "the fork's name of --optimizer (sgd, adagrad); given beside --optimizer, the two must agree",
        origin=FORK,
    ),
    _refused("--dump-emb-init", "use --save-model (the checkpoint holds the tables)", origin=FORK),
    _refused("--enable-rp", "random projections are not supported; MLET is --mlet-hidden", origin=FORK),
    _refused("--rp-file", "random projections are not supported; MLET is --mlet-hidden", takes_value=True, origin=FORK),
    _refused("--enable-rp-up", "random projections are not supported; MLET is --mlet-hidden", origin=FORK),
    _refused(
        "--rpup-file", "random projections are not supported; MLET is --mlet-hidden", takes_value=True, origin=FORK
    ),
    _refused("--concat-og-features", "concatenating the unprojected features is not supported", origin=FORK),
    _refused("--wide-feat-sel", "wide features are not supported", takes_value=True, origin=FORK),
    _refused("--fp16", "float16 is not supported; on GPU, --bf16 trains the MLPs in bfloat16", origin=FORK),
    _refused("--enable_amp", "apex mixed precision is not supported; on GPU, see --bf16 (torch autocast)", origin=FORK),
    _refused(
        "--apex-mode",
        "mixed precision (apex) is not supported; only O0 (off, the fork's default) is accepted",
        takes_value=True,
        accepted=("O0",),
        origin=FORK,
    ),
    _refused(
        "--avazu-db-path",
        "Avazu is read from its raw train file: --data-set=avazu --raw-data-file=train",
        takes_value=True,
        origin=FORK,
    ),
    _no_op("--avazu-epoch-shuffle", "training rows are shuffled every epoch for every data set", origin=FORK),
    _no_op("--auc-only", "AUC, log loss and accuracy are always computed", origin=FORK),
    _no_op("--enable-auc", "AUC is always computed", origin=FORK),
)
BY_NAME = {flag.name: flag for flag in FLAGS}


def add_foreign_flags(parser: argparse.ArgumentParser) -> None:
    """Add the no-op and refused flags of :data:`FLAGS`, each absent from the namespace unless given."""
    group = parser.add_argument_group(
        "upstream DLRM and MLET-fork flags that are accepted as no-ops or refused (see docs/upstream.md)"
    )
    for flag in FLAGS:
        if flag.status == WORKS:
            continue
        where = f"{flag.origin}'s flag; {'ignored' if flag.status == NO_OP else 'refused'}: {flag.note}"
        names = (flag.name, *flag.aliases)
        if flag.takes_value:
            group.add_argument(*names, type=str, default=argparse.SUPPRESS, metavar="VALUE", help=where)
        else:
            group.add_argument(
                *names, type=str2bool, nargs="?", const=True, default=argparse.SUPPRESS, metavar="BOOL", help=where
            )


def given(args: argparse.Namespace) -> list[tuple[ForeignFlag, object]]:
    """The no-op and refused flags present in ``args``, with their values."""
    return [(flag, getattr(args, flag.dest)) for flag in FLAGS if flag.status != WORKS and hasattr(args, flag.dest)]


def check_foreign_flags(args: argparse.Namespace) -> list[str]:
    """The log lines of the no-op flags given; a :class:`UserError` for the first refused one.

    A switch given as ``=false`` and a refused flag at an ``accepted`` value
    change nothing, and are no-ops too.
    """
    lines = []
    for flag, value in given(args):
        text = str(value)
        harmless = value is False or (flag.takes_value and text in flag.accepted)
        if flag.status == REFUSED and not harmless:
            raise UserError(f"{flag.name}: {flag.origin}'s flag, not supported here: {refusal(flag, args)}")
        lines.append(f"{flag.name}: {flag.origin}'s flag, ignored: {flag.note}")
    return lines


def refusal(flag: ForeignFlag, args: argparse.Namespace) -> str:
    """Why ``flag`` is refused and what to use instead; for the fork's MLET flags, the equivalent flags."""
    if flag.name not in ("--enable-linp", "--enable-linp-up", "--proj-down-dim"):
        return flag.note
    width = getattr(args, "arch_sparse_feature_size", None)
    bottom = str(getattr(args, "arch_mlp_bot", "")).split("-")[-1]
    if flag.name == "--enable-linp" and width and bottom.isdigit():
        return f"{flag.note}: for these flags write --mlet-hidden={width} --arch-sparse-feature-size={bottom}"
    return flag.note
