"""dlrm-mlet: train DLRM with plain or MLET (two-layer) embedding tables.

Upstream DLRM's flags keep their names and meanings; ``--mlet-hidden K`` trains
every table as ``W1 (n x K) @ W2 (K x d)``. Run ``python dlrm_mlet.py --help``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import torch

from dlrm_model import DLRM, INTERACTIONS, ModelConfig
from mlet.core.errors import OneLineParser, UserError, add_bool, check_distinct_outputs, check_output_file, check_seed, one_line, require_at_least
from mlet.core.launch import is_main_process, log
from mlet.data.sources import DEFAULT_EMBEDDING_SIZE, DataBundle, add_dataset_flags, build_data, validate_dataset_flags
from mlet.data.synthetic import MODEL_FLAGS, check_model_flags
from mlet.parallel import distributed, process_group
from mlet.training.checkpoints import TRAINING, atomic_save, check_file, collapsed_checkpoint, load_checkpoint, trained_hidden
from mlet.training.optimizers import FUSED_OPTIMIZERS, OPTIMIZERS
from mlet.training.resume import check_inference_flags, check_training_flags, resume_flag_changes
from mlet.training.trainer import Trainer, parameter_report, write_json
from mlet_layers import parse_projection_init

PROG = "dlrm_mlet.py"
LOSSES = ("bce", "mse", "wbce")
DATA_GENERATIONS = ("random", "synthetic", "dataset")


def build_parser() -> OneLineParser:
    """The command-line parser (upstream DLRM flags plus MLET's)."""
    p = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    arch = p.add_argument_group("model")
    arch.add_argument("--arch-sparse-feature-size", type=int, default=2, help="embedding dimension d")
    arch.add_argument(
        "--arch-embedding-size",
        type=str,
        default=None,
        help=f"rows of each table, dash-separated (generated data: {DEFAULT_EMBEDDING_SIZE} if not given; data sets: the data's sizes, which a given value must match)",
    )
    arch.add_argument("--arch-mlp-bot", type=str, default="4-3-2", help="bottom MLP widths, dense input first, d last")
    arch.add_argument("--arch-mlp-top", type=str, default="4-2-1", help="top MLP widths after the interaction, 1 last")
    arch.add_argument("--arch-interaction-op", choices=INTERACTIONS, default="dot")
    add_bool(arch, "--arch-interaction-itself", False, "include self dot products")
    arch.add_argument("--mlet-hidden", type=int, default=0, help="MLET inner width K (0: plain tables)")
    arch.add_argument("--mlet-init", type=str, default="normal", help="W2 init: normal (std 0.25), normal-STD, xavier")

    data = p.add_argument_group("data")
    data.add_argument("--data-generation", choices=DATA_GENERATIONS, default="random")
    data.add_argument("--data-size", type=int, default=1, help="training samples of generated data")
    data.add_argument("--test-data-size", type=int, default=None, help="test samples of generated data (default: a quarter of train, at most 262144)")
    data.add_argument("--num-batches", type=int, default=0, help="training batches per epoch (0: all)")
    data.add_argument("--num-indices-per-lookup", type=int, default=10, help="ids per bag of random data (upper bound unless fixed)")
    add_bool(data, "--num-indices-per-lookup-fixed", False, "every random bag holds exactly --num-indices-per-lookup ids")
    add_dataset_flags(data)
    data.add_argument("--num-workers", type=int, default=-1, help="threads assembling training batches (-1: 1 on CPU, 4 on GPU)")
    add_bool(data, "--round-targets", False, "round labels to 0/1 (metrics always use rounded labels)")
    synth = p.add_argument_group("synthetic click model (--data-generation=synthetic)")
    synth.add_argument("--synthetic-rank", type=int, default=16, help="rank of the planted latent vectors")
    synth.add_argument("--synthetic-zipf", type=float, default=1.05, help="Zipf exponent of value popularity")
    synth.add_argument("--synthetic-interaction-std", type=float, default=3.0, help="logit std of the pairwise term")
    synth.add_argument("--synthetic-bias-std", type=float, default=0.8, help="logit std of per-value biases")
    synth.add_argument("--synthetic-dense-std", type=float, default=0.5, help="logit weight of the dense term")
    synth.add_argument("--synthetic-noise-std", type=float, default=0.0, help="extra Gaussian logit noise")
    synth.add_argument("--synthetic-positive-rate", type=float, default=0.25, help="target share of clicks")

    train = p.add_argument_group("training")
    train.add_argument("--loss-function", choices=LOSSES, default="bce")
    train.add_argument("--loss-weights", type=str, default="1.0-1.0", help="wbce weights of negatives-positives")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    train.add_argument(
        "--embedding-update",
        choices=("auto", "fused", "autograd"),
        default="auto",
        help="fused: table rows updated inside the backward (sgd, adagrad); autograd: sparse gradients + torch optimizer; auto: fused where supported",
    )
    train.add_argument("--learning-rate", type=float, default=0.01)
    train.add_argument("--mini-batch-size", type=int, default=1)
    train.add_argument("--nepochs", type=int, default=1)
    train.add_argument("--lr-num-warmup-steps", type=int, default=0)
    train.add_argument("--lr-decay-start-step", type=int, default=0)
    train.add_argument("--lr-num-decay-steps", type=int, default=0)
    train.add_argument("--numpy-rand-seed", type=int, default=123)
    train.add_argument("--use-gpu", action="store_true", help="train on the (first) CUDA device")
    add_bool(train, "--cuda-graph", True, "on GPU with the fused update, replay each training step from a CUDA graph")
    add_bool(train, "--tf32", False, "allow TF32 matrix products on GPU (faster, less precise; off by default)")

    test = p.add_argument_group("testing and logging")
    test.add_argument("--test-freq", type=int, default=-1, help="test every N iterations (always at the end)")
    test.add_argument("--test-mini-batch-size", type=int, default=-1, help="(default: --mini-batch-size)")
    test.add_argument(
        "--eval-split", choices=("test", "val"), default="test", help="split the reported metrics come from (val: to choose settings without seeing test)"
    )
    test.add_argument("--print-freq", type=int, default=0, help="log every N iterations (0: about 20 lines per epoch)")
    add_bool(test, "--print-time", False, "add ms/it and samples/s to the training log lines")
    test.add_argument("--print-precision", type=int, default=5)
    test.add_argument("--results-json", type=str, default="", help="write final and best metrics here")
    add_bool(test, "--progress", True, "show a tqdm progress bar (only on a terminal)")
    add_bool(test, "--inference-only", False, "only evaluate the --load-model checkpoint")

    ckpt = p.add_argument_group("checkpoints")
    ckpt.add_argument("--save-model", type=str, default="", help="write a resumable checkpoint here")
    ckpt.add_argument("--save-freq", type=int, default=0, help="also checkpoint every N iterations (0: at the end only)")
    ckpt.add_argument("--load-model", type=str, default="", help="resume from (or, with --inference-only, evaluate) this checkpoint")
    ckpt.add_argument("--save-collapsed", type=str, default="", help="at the end, also write the inference checkpoint (MLET tables collapsed to n x d) here")

    multi = p.add_argument_group("several processes (launch with torchrun; see the README)")
    multi.add_argument(
        "--dist-backend", choices=process_group.BACKENDS, default=None, help="torch.distributed backend (default: nccl with --use-gpu, else gloo)"
    )
    multi.add_argument("--dist-timeout", type=int, default=process_group.DEFAULT_TIMEOUT_S, help="seconds a collective may wait for the other processes")
    return p


def parse_dashed(flag: str, text: str, minimum: int = 1) -> list[int]:
    """``"13-512-256"`` -> ``[13, 512, 256]``; each value at least ``minimum``."""
    try:
        values = [int(v) for v in text.split("-")]
    except ValueError:
        raise UserError(f"{flag}: expected dash-separated integers, got '{text}'") from None
    bad = [v for v in values if v < minimum]
    if bad:
        raise UserError(f"{flag}: every value must be >= {minimum}, got {bad[0]} in '{text}'")
    return values


def validate(args: argparse.Namespace) -> None:
    """Check flag consistency; raise :class:`UserError` naming the flag."""
    d = args.arch_sparse_feature_size
    if d < 1:
        raise UserError(f"--arch-sparse-feature-size: must be >= 1, got {d}")
    args.table_sizes = parse_dashed("--arch-embedding-size", DEFAULT_EMBEDDING_SIZE if args.arch_embedding_size is None else args.arch_embedding_size)
    args.bottom_mlp = parse_dashed("--arch-mlp-bot", args.arch_mlp_bot)
    args.top_mlp = parse_dashed("--arch-mlp-top", args.arch_mlp_top)
    if len(args.bottom_mlp) < 2 or args.bottom_mlp[-1] != d:
        raise UserError(f"--arch-mlp-bot: must have at least two widths and end in d={d} (--arch-sparse-feature-size), got '{args.arch_mlp_bot}'")
    if args.top_mlp[-1] != 1:
        raise UserError(f"--arch-mlp-top: must end in 1 (one click logit), got '{args.arch_mlp_top}'")
    if args.mlet_hidden < 0:
        raise UserError(f"--mlet-hidden: must be >= 0 (0 for plain tables), got {args.mlet_hidden}")
    if 0 < args.mlet_hidden < d:
        raise UserError(f"--mlet-hidden: K={args.mlet_hidden} is smaller than d={d}; MLET's inner width must be >= --arch-sparse-feature-size")
    try:
        parse_projection_init(args.mlet_init)
    except ValueError as error:
        raise UserError(f"--mlet-init: {error}") from None
    require_at_least(
        [
            ("--mini-batch-size", args.mini_batch_size, 1),
            ("--nepochs", args.nepochs, 1),
            ("--num-indices-per-lookup", args.num_indices_per_lookup, 1),
            ("--data-size", args.data_size, 1),
            ("--num-batches", args.num_batches, 0),
            ("--print-freq", args.print_freq, 0),
            ("--print-precision", args.print_precision, 1),
            ("--save-freq", args.save_freq, 0),
            ("--num-workers", args.num_workers, -1),
            ("--lr-num-warmup-steps", args.lr_num_warmup_steps, 0),
            ("--lr-decay-start-step", args.lr_decay_start_step, 0),
            ("--lr-num-decay-steps", args.lr_num_decay_steps, 0),
            ("--dist-timeout", args.dist_timeout, 1),
        ]
    )
    if not (args.learning_rate > 0 and math.isfinite(args.learning_rate)):
        raise UserError(f"--learning-rate: must be a positive number, got {args.learning_rate}")
    check_seed("--numpy-rand-seed", args.numpy_rand_seed)
    if args.test_mini_batch_size == 0 or args.test_mini_batch_size < -1:
        raise UserError(f"--test-mini-batch-size: must be >= 1 (or -1: --mini-batch-size), got {args.test_mini_batch_size}")
    if args.test_data_size is not None and args.test_data_size < 1:
        raise UserError(f"--test-data-size: must be >= 1, got {args.test_data_size}")
    if args.lr_num_decay_steps and args.lr_decay_start_step < args.lr_num_warmup_steps:
        raise UserError("--lr-decay-start-step: must not come before the end of warm-up (--lr-num-warmup-steps)")
    args.loss_weights_pair = [float(w) for w in parse_loss_weights(args.loss_weights)]
    if args.embedding_update == "fused" and args.optimizer not in FUSED_OPTIMIZERS:
        raise UserError(f"--embedding-update=fused: supports --optimizer {' or '.join(FUSED_OPTIMIZERS)}, not {args.optimizer}")
    if args.embedding_update == "auto":
        args.embedding_update = "fused" if args.optimizer in FUSED_OPTIMIZERS else "autograd"
    if args.inference_only and not args.load_model:
        raise UserError("--inference-only: needs --load-model (the checkpoint to evaluate)")
    if args.load_model:
        try:
            check_file(args.load_model)
        except UserError as error:
            raise UserError(f"--load-model {error}") from None
    if args.save_freq and not args.save_model:
        raise UserError("--save-freq: needs --save-model (the checkpoint to write)")
    if args.inference_only and args.save_collapsed:
        raise UserError("--save-collapsed: not with --inference-only; collapse a saved checkpoint with: python checkpoint.py collapse IN OUT")
    if args.inference_only and args.save_model:
        raise UserError("--save-model: not with --inference-only (nothing is trained); collapse a checkpoint with: python checkpoint.py collapse IN OUT")
    if args.use_gpu and not torch.cuda.is_available():
        raise UserError("--use-gpu: no CUDA device is available")
    process_group.check_backend(args.dist_backend, args.use_gpu)
    if args.data_generation == "dataset":
        validate_dataset_flags(args)
    check_model_flags({field: getattr(args, flag[2:].replace("-", "_")) for flag, field in MODEL_FLAGS.items()})
    validate_outputs(args)


def validate_outputs(args: argparse.Namespace) -> None:
    """The files the run writes: distinct, and writable now rather than after training (checked by the writing process)."""
    outputs = {"--save-model": args.save_model, "--save-collapsed": args.save_collapsed, "--results-json": args.results_json}
    check_distinct_outputs(outputs)
    if args.load_model:
        check_distinct_outputs({"--load-model": args.load_model, "--results-json": args.results_json, "--save-collapsed": args.save_collapsed})
    if is_main_process():
        for flag, path in outputs.items():
            if path:
                check_output_file(flag, path)


def parse_loss_weights(text: str) -> tuple[float, float]:
    """``--loss-weights`` ``"w0-w1"`` (weights of negatives and positives for wbce)."""
    parts = text.split("-")
    try:
        w0, w1 = (float(v) for v in parts)
    except ValueError:
        raise UserError(f"--loss-weights: expected two dash-separated numbers like 1.0-3.0, got '{text}'") from None
    if w0 < 0 or w1 < 0:
        raise UserError(f"--loss-weights: weights must be >= 0, got '{text}'")
    return w0, w1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate ``argv``; a bad flag raises :class:`UserError` (or exits, for argparse's own checks)."""
    args = build_parser().parse_args(argv)
    validate(args)
    return args


def model_config(args: argparse.Namespace, table_sizes: Sequence[int]) -> ModelConfig:
    """The architecture the flags describe."""
    return ModelConfig(
        table_sizes=tuple(table_sizes),
        dim=args.arch_sparse_feature_size,
        bottom_mlp=tuple(args.bottom_mlp),
        top_mlp=tuple(args.top_mlp),
        mlet_hidden=args.mlet_hidden,
        mlet_init=args.mlet_init,
        interaction=args.arch_interaction_op,
        interaction_itself=args.arch_interaction_itself,
    )


def describe(model: DLRM, data: DataBundle, args: argparse.Namespace) -> None:
    """Start-of-run summary."""
    report = parameter_report(model)
    kind = f"MLET K={model.config.mlet_hidden}" if model.config.mlet_hidden else "plain"
    log(f"data: {data.description}; train {data.train.num_samples:,} samples ({len(data.train)} batches), test {data.test.num_samples:,}")
    log(
        f"model: {len(data.table_sizes)} tables ({kind}, d={args.arch_sparse_feature_size}, {sum(data.table_sizes):,} rows), bottom {args.arch_mlp_bot}, top {model.config.interaction_width()}-{args.arch_mlp_top}, interaction {args.arch_interaction_op}"
    )
    log(
        f"parameters: training {report['training']['count']:,} ({report['training']['bytes'] / 2**20:.1f} MiB), inference {report['inference']['count']:,} ({report['inference']['bytes'] / 2**20:.1f} MiB)"
    )


def check_data_position(ckpt: dict, trainer: Trainer) -> None:
    """Refuse to resume when the training data differ in size from the checkpoint's (the position would not point to the same batch)."""
    pos = ckpt["position"]
    saved = (pos.get("train_samples_per_epoch"), pos.get("batches_per_epoch"))
    now = (trainer.data.train.num_samples, trainer.batches_per_epoch)
    if saved[1] is not None and saved != now:
        raise UserError(
            f"the training data differ from the checkpoint's ({now[0]:,} samples in {now[1]:,} batches per epoch, the checkpoint's: {saved[0]:,} in {saved[1]:,});"
            " resuming at its position would skip or repeat samples"
        )


def resume(trainer: Trainer, ckpt: dict) -> None:
    """Check a training checkpoint against the flags, log what changed, restore it."""
    pos = ckpt["position"]
    flags = {action.dest for action in build_parser()._actions}
    changes = resume_flag_changes(ckpt.get("args") or {}, vars(trainer.args), flags, f"epoch {pos['epoch']}, batch {pos['batch']}")
    check_training_flags(ckpt, trainer.model.config)  # after the flags: a changed data flag explains changed table sizes
    check_data_position(ckpt, trainer)
    trainer.restore(ckpt)
    if changes:
        log(f"resuming with changed flags (the run continues with the new values): {', '.join(changes)}")


def completed_position(position: dict) -> tuple[int, int, int]:
    """``(epoch, batch, iteration)`` a checkpoint's model had trained to, as its training run logged them.

    A checkpoint written at the end of an epoch points at the next batch
    (batch 0 of the next epoch); its model is that of the last batch of the epoch before.
    """
    epoch, batch, iteration = position.get("epoch", 0), position.get("batch", 0), position.get("iteration", 0)
    if batch == 0 and epoch > 0 and position.get("batches_per_epoch"):
        return epoch - 1, position["batches_per_epoch"], iteration
    return epoch, batch, iteration


def load_into(trainer: Trainer, path: str) -> None:
    """Load ``--load-model``: evaluate it (``--inference-only``), resume it, or start training from its weights.

    Architecture flags must match the checkpoint (for evaluation ``--mlet-hidden``
    may also be 0 or the trained K); see :func:`resume_checks.resume_flag_changes`
    for the other flags. Any disagreement is one :class:`UserError` line.
    """
    try:
        ckpt = load_checkpoint(path)
    except UserError as error:
        raise UserError(f"--load-model {error}") from None
    kind = ckpt.get("kind")
    try:
        if trainer.args.inference_only:
            check_inference_flags(ckpt, trainer.model.config)
            trainer.model = trainer.parallel.model_from_checkpoint(ckpt)
            trainer.epoch, trainer.batch, trainer.iteration = completed_position(ckpt.get("position") or {})
        else:
            if kind == TRAINING:
                resume(trainer, ckpt)
            else:
                check_training_flags(ckpt, trainer.model.config)
                trainer.restore(ckpt)
    except (UserError, ValueError, RuntimeError) as error:
        raise UserError(f"--load-model {path}: {one_line(error)}") from None
    trainer.loaded = {"path": path, "kind": kind, "trained_mlet_hidden": trained_hidden(ckpt), "position": ckpt.get("position")}
    if kind == TRAINING and not trainer.args.inference_only:
        log(f"resuming {path} at epoch {trainer.epoch}, batch {trainer.batch} (iteration {trainer.iteration})")
    elif not trainer.args.inference_only:
        log(f"starting from the weights of {path} (inference checkpoint: no optimizer state; epoch 0, iteration 0)")
    else:
        log(
            f"loaded {path} ({kind}{f', collapsed from K={trained_hidden(ckpt)}' if kind != TRAINING and trained_hidden(ckpt) else ''}, iteration {trainer.iteration})"
        )


def prepare(args: argparse.Namespace, parallel: distributed.SingleProcess | distributed.MultiProcess) -> tuple[DataBundle, Trainer]:
    """Data, model and trainer, with ``--load-model`` restored: the steps that may fail on one process alone."""
    data = build_data(args, args.table_sizes, args.bottom_mlp[0])
    model = parallel.build_model(model_config(args, data.table_sizes), seed=args.numpy_rand_seed)
    trainer = Trainer(args, data, model, parallel.device, parallel)
    if args.load_model:
        load_into(trainer, args.load_model)
    return data, trainer


def run(args: argparse.Namespace) -> dict:
    """Train and/or evaluate as the flags say; returns the results payload.

    Under torchrun every process runs this; rank 0 alone prints and writes.
    """
    torch.manual_seed(args.numpy_rand_seed)
    if args.use_gpu:
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    with distributed.session(args) as parallel:
        data, trainer = parallel.agree(lambda: prepare(args, parallel))
        describe(trainer.model, data, args)
        for line in parallel.summary():
            log(line)
        if args.inference_only:
            final = trainer.test()
        else:
            log("time/loss/accuracy (if enabled):")
            trainer.train()
            final = trainer.history[-1] if trainer.history else trainer.test()
            if args.save_model:
                trainer.save()
                log(f"saved {args.save_model}")
            if args.save_collapsed:
                state = trainer.state()  # gathered on rank 0
                if parallel.is_main:
                    atomic_save(collapsed_checkpoint(state), args.save_collapsed)
                log(f"saved {args.save_collapsed} (inference checkpoint: collapsed tables, no optimizer state)")
        payload = trainer.results(final, trainer.validate(final))
        if args.results_json and parallel.is_main:
            write_json(args.results_json, payload)
            log(f"results written to {args.results_json}")
        return payload


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; bad input ends with one line on stderr and exit code 2.

    Under torchrun, argparse's own errors are the same on every process (rank 0
    reports them); the other checks (files, devices) may fail on one process
    only, so the processes join first and share what failed.
    """
    try:
        args = build_parser().parse_args(argv)
        process_group.start(args.dist_timeout)
        process_group.agree(lambda: validate(args))
        run(args)
    except UserError as error:
        if (line := process_group.error_line(error)) is not None:
            print(f"{PROG}: error: {line}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if (failure := process_group.communication_failure(error)) is None:
            raise
        print(f"{PROG}: error: {process_group.error_line(failure)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


def cli() -> None:
    """The ``dlrm-mlet`` console command (``python dlrm_mlet.py``)."""
    process_group.exit_process(main())


if __name__ == "__main__":
    cli()
