"""dlrm-mlet: train DLRM with plain or MLET (two-layer) embedding tables.

Upstream DLRM's flags keep their names and meanings; ``--mlet-hidden K`` trains
every table as ``W1 (n x K) @ W2 (K x d)``. Run ``python dlrm_mlet.py --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from checkpoint import (
    FORMAT,
    TRAINING,
    VERSION,
    atomic_save,
    bytes_report,
    check_file,
    check_inference_flags,
    check_training_flags,
    collapsed_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    restore_rng_state,
    resume_flag_changes,
    rng_state,
    trained_hidden,
)
from data_utils import DEFAULT_EMBEDDING_SIZE, Batch, DataBundle, add_dataset_flags, build_data, prefetch, validate_dataset_flags
from dlrm_model import DLRM, INTERACTIONS, ModelConfig
from errors import OneLineParser, UserError
from metrics import ctr_metrics, predict
from mlet_layers import parse_projection_init
from optimizers import FUSED_OPTIMIZERS, OPTIMIZERS, LRPolicy, build_optimizer
from train_step import make_train_step

PROG = "dlrm_mlet.py"
LOSSES = ("bce", "mse", "wbce")
DATA_GENERATIONS = ("random", "synthetic", "dataset")


def str2bool(value: str) -> bool:
    """Parse ``true/false/1/0/yes/no`` (fixes upstream's ``type=bool``, where any text is True)."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


def add_bool(parser: argparse.ArgumentParser, flag: str, default: bool, help: str) -> None:
    """A boolean flag usable as ``--flag``, ``--flag=true`` or ``--flag=false``."""
    parser.add_argument(flag, type=str2bool, nargs="?", const=True, default=default, metavar="BOOL", help=help)


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
    args.table_sizes = parse_dashed("--arch-embedding-size", args.arch_embedding_size or DEFAULT_EMBEDDING_SIZE)
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
    for flag, value, minimum in [
        ("--mini-batch-size", args.mini_batch_size, 1),
        ("--nepochs", args.nepochs, 1),
        ("--num-indices-per-lookup", args.num_indices_per_lookup, 1),
        ("--data-size", args.data_size, 1),
        ("--num-batches", args.num_batches, 0),
        ("--print-freq", args.print_freq, 0),
        ("--save-freq", args.save_freq, 0),
        ("--lr-num-warmup-steps", args.lr_num_warmup_steps, 0),
        ("--lr-decay-start-step", args.lr_decay_start_step, 0),
        ("--lr-num-decay-steps", args.lr_num_decay_steps, 0),
    ]:
        if value < minimum:
            raise UserError(f"{flag}: must be >= {minimum}, got {value}")
    if not (args.learning_rate > 0 and math.isfinite(args.learning_rate)):
        raise UserError(f"--learning-rate: must be a positive number, got {args.learning_rate}")
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
    if args.save_collapsed and args.save_model and Path(args.save_collapsed).resolve() == Path(args.save_model).resolve():
        raise UserError("--save-collapsed: same file as --save-model; the inference checkpoint would replace the resumable one")
    if args.inference_only and args.save_collapsed:
        raise UserError("--save-collapsed: not with --inference-only; collapse a saved checkpoint with: python checkpoint.py collapse IN OUT")
    if args.use_gpu and not torch.cuda.is_available():
        raise UserError("--use-gpu: no CUDA device is available")
    if args.data_generation == "dataset":
        validate_dataset_flags(args)
    if args.data_generation == "synthetic" and args.synthetic_rank < 1:
        raise UserError(f"--synthetic-rank: must be >= 1, got {args.synthetic_rank}")
    if not 0 < args.synthetic_positive_rate < 1:
        raise UserError(f"--synthetic-positive-rate: must be in (0, 1), got {args.synthetic_positive_rate}")


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


def loss_function(args: argparse.Namespace, device: torch.device):
    """``loss(logits, labels)`` for ``--loss-function`` (mean over the batch)."""
    if args.loss_function == "mse":
        return lambda logits, labels: F.mse_loss(torch.sigmoid(logits), labels)
    if args.loss_function == "bce":
        return F.binary_cross_entropy_with_logits
    weights = torch.tensor(args.loss_weights_pair, device=device)

    def weighted_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_sample = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return (per_sample * weights[labels.round().long()]).mean()

    return weighted_bce


def log(message: str) -> None:
    """Print a log line without breaking the progress bar."""
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def parameter_report(model: DLRM) -> dict:
    """Parameter counts and bytes for training (as built) and inference (collapsed)."""
    return bytes_report(model.config.parameter_counts(), model.tables.weight.element_size())


def json_safe(value):
    """NaN/inf -> None, recursively, so the results file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str, payload: dict) -> None:
    """Write ``payload`` atomically as strict JSON."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(json_safe(payload), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, target)


def plain_args(args: argparse.Namespace) -> dict:
    """The argument set as JSON/checkpoint-safe primitives."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}


class Trainer:
    """The training loop: steps, periodic logging, testing and checkpointing."""

    def __init__(self, args: argparse.Namespace, data: DataBundle, model: DLRM, device: torch.device) -> None:
        self.args, self.data, self.model, self.device = args, data, model, device
        fused_tables = model.tables if args.embedding_update == "fused" else None
        self.optimizer = build_optimizer(args.optimizer, args.learning_rate, model.sparse_parameters(), model.dense_parameters(), fused_tables)
        self.lr_policy = LRPolicy(args.learning_rate, args.lr_num_warmup_steps, args.lr_decay_start_step, args.lr_num_decay_steps)
        self.loss_fn = loss_function(args, device)
        use_graph = args.cuda_graph and device.type == "cuda" and fused_tables is not None
        self.train_step = make_train_step(model, self.loss_fn, self.optimizer, cuda_graph=use_graph)
        self.batches_per_epoch = min(args.num_batches, len(data.train)) if args.num_batches > 0 else len(data.train)
        self.print_freq = args.print_freq or max(1, self.batches_per_epoch // 20)
        self.epoch, self.batch, self.iteration = 0, 0, 0
        self.history: list[dict] = []
        self.best: dict | None = None
        self.train_time, self.train_samples = 0.0, 0
        self.loaded: dict | None = None  # what --load-model loaded

    # -- checkpoints -------------------------------------------------------
    def position(self) -> dict:
        """Where the run stands: the next batch is ``batch`` of ``epoch``.

        The order of an epoch's batches is a function of (seed, epoch), so the
        position plus the data's size identify the next batch exactly.
        """
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "iteration": self.iteration,
            "batches_per_epoch": self.batches_per_epoch,
            "train_samples_per_epoch": self.data.train.num_samples,
            "shuffle_seed": self.args.numpy_rand_seed,
        }

    def state(self) -> dict:
        """A resumable checkpoint of the run so far."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": TRAINING,
            "model_config": self.model.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": {**asdict(self.lr_policy), "next_lr": self.lr_policy.lr(self.iteration)},
            "position": self.position(),
            "rng": rng_state(),
            "history": self.history,
            "best": self.best,
            "train_time": self.train_time,
            "train_samples": self.train_samples,
            "args": plain_args(self.args),
            "data": self.data.description,
            "torch": str(torch.__version__),
        }

    def restore(self, ckpt: dict) -> None:
        """Continue from a checkpoint made by :meth:`state` (of an inference checkpoint: take its weights only)."""
        self.model.load_state_dict(ckpt["model"])
        if ckpt.get("kind") != TRAINING:
            return
        self.optimizer.load_state_dict(ckpt["optimizer"])
        pos = ckpt["position"]
        self.epoch, self.batch, self.iteration = pos["epoch"], pos["batch"], pos["iteration"]
        self.history, self.best = list(ckpt.get("history") or []), ckpt.get("best")
        self.train_time, self.train_samples = ckpt.get("train_time", 0.0), ckpt.get("train_samples", 0)
        if ckpt.get("rng"):
            restore_rng_state(ckpt["rng"])

    def save(self) -> None:
        """Write the resumable checkpoint (``--save-model``)."""
        atomic_save(self.state(), self.args.save_model)

    # -- steps ---------------------------------------------------------------
    def step(self, batch: Batch) -> torch.Tensor:
        """One optimisation step; returns the (detached) batch loss."""
        self.optimizer.set_lr(self.lr_policy.lr(self.iteration))
        return self.train_step(batch)

    def evaluate(self, source) -> dict:
        """AUC, log loss, accuracy and sample count of the model on every sample of ``source``."""
        probs, labels = predict(self.model, prefetch(source.batches(0)), self.device)
        return {"epoch": self.epoch, "iteration": self.iteration, **ctr_metrics(probs, labels)}

    def validate(self, final: dict) -> dict | None:
        """Metrics on the validation split for the model of ``final`` (None without a validation split).

        So one run serves both choosing settings (validation) and reporting them
        (test); under ``--eval-split=val`` the test metrics already are these.
        """
        if self.data.val is None:
            return None
        return dict(final) if self.data.val is self.data.test else self.evaluate(self.data.val)

    def test(self) -> dict:
        """Evaluate on the whole test set, log, and remember the best AUC."""
        result = self.evaluate(self.data.test)
        self.history.append(result)
        if self.best is None or (result["auc"] or -1) > (self.best["auc"] or -1) or math.isnan(self.best["auc"]):
            self.best = result
        precision = self.args.print_precision
        log(
            f"Testing at - {self.batch}/{self.batches_per_epoch} of epoch {self.epoch},"
            f" loss {result['logloss']:.{precision + 1}f}, auc {result['auc']:.{precision - 1}f},"
            f" best auc {self.best['auc']:.{precision - 1}f}, accuracy {100 * result['accuracy']:3.3f} %,"
            f" best accuracy {100 * max(h['accuracy'] for h in self.history):3.3f} %"
        )
        return result

    def train(self) -> None:
        """Run the remaining epochs."""
        args = self.args
        total = args.nepochs * self.batches_per_epoch
        bar = tqdm(total=total, initial=self.iteration, unit="it", disable=None if args.progress else True, dynamic_ncols=True, leave=False)
        while self.epoch < args.nepochs:
            self.run_epoch(bar)
            self.epoch, self.batch = self.epoch + 1, 0
        bar.close()

    def run_epoch(self, bar: tqdm) -> None:
        """Train on the rest of the current epoch.

        ``train_time`` counts wall time spent waiting for and training on
        batches; testing and checkpointing are excluded.
        """
        args = self.args
        loss_sum, loss_count, window_time, window_samples = 0.0, 0, 0.0, 0
        batches = prefetch(self.data.train.batches(self.epoch, self.batch), pin=self.device.type == "cuda")
        last = time.perf_counter()
        for batch in batches:
            if self.batch >= self.batches_per_epoch:
                break
            batch = batch.to(self.device, non_blocking=True)
            loss = self.step(batch)
            loss_sum, loss_count = loss_sum + loss, loss_count + 1
            self.batch, self.iteration = self.batch + 1, self.iteration + 1
            self.train_samples += batch.size
            window_samples += batch.size
            bar.update(1)
            if self.batch % self.print_freq == 0 or self.batch == self.batches_per_epoch:
                loss_value = float(loss_sum) / loss_count  # synchronises the device
                now = time.perf_counter()
                self.train_time, window_time = self.train_time + now - last, window_time + now - last
                self.log_train(loss_value, loss_count, window_time, window_samples)
                loss_sum, loss_count, window_time, window_samples, last = 0.0, 0, 0.0, 0, now
            if args.test_freq > 0 and self.batch % args.test_freq == 0 and self.batch != self.batches_per_epoch:
                self.test()
                last = time.perf_counter()
            if args.save_model and args.save_freq and self.iteration % args.save_freq == 0:
                self.save()
                last = time.perf_counter()
        batches.close()
        if self.batch >= self.batches_per_epoch:
            self.test()

    def log_train(self, loss: float, steps: int, elapsed: float, samples: int) -> None:
        """Upstream's 'Finished training it' line."""
        timing = f" {1000 * elapsed / steps:.2f} ms/it, {samples / elapsed:,.0f} samples/s," if self.args.print_time else ""
        log(f"Finished training it {self.batch}/{self.batches_per_epoch} of epoch {self.epoch},{timing} loss {loss:.{self.args.print_precision + 1}f}")

    def results(self, final: dict, val: dict | None = None) -> dict:
        """The ``--results-json`` payload (``val``: :meth:`validate`'s metrics)."""
        return {
            "final": final,
            "val": val,
            "best": self.best,
            "history": self.history,
            "train_samples_per_second": self.train_samples / self.train_time if self.train_time else None,
            "train_samples": self.train_samples,
            "train_seconds": self.train_time,
            "iterations": self.iteration,
            "parameters": parameter_report(self.model),
            "model_config": self.model.config.to_dict(),
            "data": self.data.description,
            "device": str(self.device),
            "torch": torch.__version__,
            "args": plain_args(self.args),
            "checkpoint": self.loaded,
        }


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
    check_data_position(ckpt, trainer)
    trainer.restore(ckpt)
    if changes:
        log(f"resuming with changed flags (the run continues with the new values): {', '.join(changes)}")


def load_into(trainer: Trainer, path: str) -> None:
    """Load ``--load-model``: evaluate it (``--inference-only``), resume it, or start training from its weights.

    Architecture flags must match the checkpoint (for evaluation ``--mlet-hidden``
    may also be 0 or the trained K); see :func:`checkpoint.resume_flag_changes`
    for the other flags. Any disagreement is one :class:`UserError` line.
    """
    ckpt = load_checkpoint(path)
    kind = ckpt.get("kind")
    try:
        if trainer.args.inference_only:
            check_inference_flags(ckpt, trainer.model.config)
            trainer.model = model_from_checkpoint(ckpt, trainer.device)
            pos = ckpt.get("position") or {}
            trainer.epoch, trainer.batch, trainer.iteration = pos.get("epoch", 0), pos.get("batch", 0), pos.get("iteration", 0)
        else:
            check_training_flags(ckpt, trainer.model.config)
            if kind == TRAINING:
                resume(trainer, ckpt)
            else:
                trainer.restore(ckpt)
    except (UserError, ValueError, RuntimeError) as error:
        raise UserError(f"--load-model {path}: {str(error).splitlines()[0]}") from None
    trainer.loaded = {"path": path, "kind": kind, "trained_mlet_hidden": trained_hidden(ckpt), "position": ckpt.get("position")}
    if kind == TRAINING and not trainer.args.inference_only:
        log(f"resuming {path} at epoch {trainer.epoch}, batch {trainer.batch} (iteration {trainer.iteration})")
    elif not trainer.args.inference_only:
        log(f"starting from the weights of {path} (inference checkpoint: no optimizer state; epoch 0, iteration 0)")
    else:
        log(
            f"loaded {path} ({kind}{f', collapsed from K={trained_hidden(ckpt)}' if kind != TRAINING and trained_hidden(ckpt) else ''}, iteration {trainer.iteration})"
        )


def run(args: argparse.Namespace) -> dict:
    """Train and/or evaluate as the flags say; returns the results payload."""
    torch.manual_seed(args.numpy_rand_seed)
    device = torch.device("cuda" if args.use_gpu else "cpu")
    if args.use_gpu:
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    dense_features = args.bottom_mlp[0]
    data = build_data(args, args.table_sizes, dense_features)
    model = DLRM(model_config(args, data.table_sizes), seed=args.numpy_rand_seed, device=device)
    trainer = Trainer(args, data, model, device)
    if args.load_model:
        load_into(trainer, args.load_model)
    describe(trainer.model, data, args)
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
            atomic_save(collapsed_checkpoint(trainer.state()), args.save_collapsed)
            log(f"saved {args.save_collapsed} (inference checkpoint: collapsed tables, no optimizer state)")
    payload = trainer.results(final, trainer.validate(final))
    if args.results_json:
        write_json(args.results_json, payload)
        log(f"results written to {args.results_json}")
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; bad input ends with one line on stderr and exit code 2."""
    try:
        run(parse_args(argv))
    except UserError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
