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
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import distributed
from checkpoint import FORMAT, VERSION, atomic_save, describe_mismatch, load_checkpoint
from data_utils import Batch, DataBundle, build_data, prefetch
from dlrm_model import DLRM, INTERACTIONS, ModelConfig
from errors import UserError
from mlet_layers import EmbeddingTables, parse_projection_init
from optimizers import OPTIMIZERS, CombinedOptimizer, LRPolicy, build_optimizer

PROG = "dlrm_mlet.py"
LOSSES = ("bce", "mse", "wbce")
DATA_GENERATIONS = ("random", "synthetic", "dataset")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line, without the usage block."""

    def error(self, message: str) -> None:
        # Every process of a torchrun launch parses the same flags: rank 0 alone reports.
        self.exit(2, f"{self.prog}: error: {message}\n" if distributed.launched_rank() == 0 else None)


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
    arch.add_argument("--arch-embedding-size", type=str, default="4-3-2", help="rows of each table, dash-separated")
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
    data.add_argument("--data-set", type=str, default="kaggle", help="data set for --data-generation=dataset")
    data.add_argument("--raw-data-file", type=str, default="")
    data.add_argument("--processed-data-file", type=str, default="")
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
    train.add_argument("--learning-rate", type=float, default=0.01)
    train.add_argument("--mini-batch-size", type=int, default=1)
    train.add_argument("--nepochs", type=int, default=1)
    train.add_argument("--lr-num-warmup-steps", type=int, default=0)
    train.add_argument("--lr-decay-start-step", type=int, default=0)
    train.add_argument("--lr-num-decay-steps", type=int, default=0)
    train.add_argument("--numpy-rand-seed", type=int, default=123)
    train.add_argument("--use-gpu", action="store_true", help="train on the (first) CUDA device")

    test = p.add_argument_group("testing and logging")
    test.add_argument("--test-freq", type=int, default=-1, help="test every N iterations (always at the end)")
    test.add_argument("--test-mini-batch-size", type=int, default=-1, help="(default: --mini-batch-size)")
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

    multi = p.add_argument_group("several processes (launch with torchrun; see the README)")
    multi.add_argument("--dist-backend", choices=distributed.BACKENDS, default=None, help="torch.distributed backend (default: nccl with --use-gpu, else gloo)")
    multi.add_argument("--dist-timeout", type=int, default=distributed.DEFAULT_TIMEOUT_S, help="seconds a collective may wait for the other processes")
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
    args.table_sizes = parse_dashed("--arch-embedding-size", args.arch_embedding_size)
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
        ("--dist-timeout", args.dist_timeout, 1),
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
    if args.inference_only and not args.load_model:
        raise UserError("--inference-only: needs --load-model (the checkpoint to evaluate)")
    if args.use_gpu and not torch.cuda.is_available():
        raise UserError("--use-gpu: no CUDA device is available")
    distributed.check_backend(args.dist_backend, args.use_gpu)
    if args.data_generation == "dataset":
        raise UserError("--data-generation=dataset: reading Criteo/Avazu files is not available in this version; use random or synthetic")
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
    """``loss(logits, labels)`` for ``--loss-function``: one loss per sample.

    The caller divides their sum by the global batch size, so that processes
    holding parts of a batch add up to the batch mean.
    """
    if args.loss_function == "mse":
        return lambda logits, labels: F.mse_loss(torch.sigmoid(logits), labels, reduction="none")
    if args.loss_function == "bce":
        return lambda logits, labels: F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    weights = torch.tensor(args.loss_weights_pair, device=device)

    def weighted_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_sample = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return per_sample * weights[labels.round().long()]

    return weighted_bce


def log(message: str) -> None:
    """Print a log line without breaking the progress bar (on rank 0 alone, in a multi-process run)."""
    if not distributed.is_main_process():
        return
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def parameter_report(config: ModelConfig) -> dict:
    """Parameter counts and bytes of the whole model for training (as built) and inference (collapsed).

    Measured on a parameter-less (meta-device) copy, so it is the same however the tables are sharded.
    """
    tables = EmbeddingTables(config.table_sizes, config.dim, config.mlet_hidden, config.mlet_init, seed=None, device="meta")
    model = DLRM(config, device="meta", tables=tables)
    total = sum(p.numel() for p in model.parameters())
    elem = tables.weight.element_size()
    table_train = sum(p.numel() for p in tables.parameters())
    table_infer = tables.weight.shape[0] * tables.dim
    dense = total - table_train
    return {
        "training": {"count": total, "bytes": total * elem},
        "inference": {"count": dense + table_infer, "bytes": (dense + table_infer) * elem},
        "embedding_training_bytes": table_train * elem,
        "embedding_inference_bytes": table_infer * elem,
    }


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
    """The training loop: steps, periodic logging, testing and checkpointing.

    ``parallel`` (see ``distributed.py``) says how the work is split between
    processes: it shards batches, sums loss shares, evaluates, and gathers
    checkpoints; the default is a single process.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        data: DataBundle,
        model: DLRM,
        device: torch.device,
        parallel: distributed.SingleProcess | distributed.MultiProcess | None = None,
    ) -> None:
        self.args, self.data, self.model, self.device = args, data, model, device
        self.parallel = parallel or distributed.SingleProcess(device)
        optimizer = build_optimizer(args.optimizer, args.learning_rate, model.sparse_parameters(), model.dense_parameters())
        self.optimizer: CombinedOptimizer = self.parallel.shard_optimizer(optimizer, model)
        self.lr_policy = LRPolicy(args.learning_rate, args.lr_num_warmup_steps, args.lr_decay_start_step, args.lr_num_decay_steps)
        self.loss_fn = loss_function(args, device)
        self.batches_per_epoch = min(args.num_batches, len(data.train)) if args.num_batches > 0 else len(data.train)
        self.print_freq = args.print_freq or max(1, self.batches_per_epoch // 20)
        self.epoch, self.batch, self.iteration = 0, 0, 0
        self.history: list[dict] = []
        self.best: dict | None = None
        self.train_time, self.train_samples = 0.0, 0

    # -- checkpoints -------------------------------------------------------
    def state(self) -> dict:
        """A resumable checkpoint of the run so far."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": "training",
            "model_config": self.model.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "position": {"epoch": self.epoch, "batch": self.batch, "iteration": self.iteration},
            "distributed": self.parallel.record(),
            "history": self.history,
            "best": self.best,
            "train_time": self.train_time,
            "train_samples": self.train_samples,
            "args": plain_args(self.args),
        }

    def restore(self, ckpt: dict) -> None:
        """Continue from a checkpoint made by :meth:`state`."""
        self.model.load_state_dict(ckpt["model"])
        if ckpt.get("kind") == "training":
            self.optimizer.load_state_dict(ckpt["optimizer"])
            pos = ckpt["position"]
            self.epoch, self.batch, self.iteration = pos["epoch"], pos["batch"], pos["iteration"]
            self.history, self.best = list(ckpt.get("history") or []), ckpt.get("best")
            self.train_time, self.train_samples = ckpt.get("train_time", 0.0), ckpt.get("train_samples", 0)

    def save(self) -> None:
        """Write the resumable checkpoint (``--save-model``); every process gathers, rank 0 writes."""
        state = self.state()
        if self.parallel.is_main:
            atomic_save(state, self.args.save_model)

    # -- steps ---------------------------------------------------------------
    def step(self, batch: Batch) -> torch.Tensor:
        """One optimisation step; returns the (detached) batch loss: this process's share of it
        when ``batch`` is a shard (the shares of all processes add up to the batch mean)."""
        self.optimizer.set_lr(self.lr_policy.lr(self.iteration))
        logits = self.model(batch.dense, batch.sparse)
        loss = self.loss_fn(logits, batch.labels).sum() / batch.size
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def test(self) -> dict:
        """Evaluate on the whole test set, log, and remember the best AUC."""
        result = {"epoch": self.epoch, "iteration": self.iteration, **self.parallel.evaluate(self.model, self.data.test.batches(0))}
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
        show = args.progress and self.parallel.is_main
        bar = tqdm(total=total, initial=self.iteration, unit="it", disable=None if show else True, dynamic_ncols=True, leave=False)
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
        batches = prefetch(iter(self.parallel.shards(self.data.train.batches(self.epoch, self.batch))), pin=self.device.type == "cuda")
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
                loss_value = float(self.parallel.all_sum(loss_sum)) / loss_count  # synchronises the device
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

    def results(self, final: dict) -> dict:
        """The ``--results-json`` payload."""
        return {
            "final": final,
            "best": self.best,
            "history": self.history,
            "train_samples_per_second": self.train_samples / self.train_time if self.train_time else None,
            "train_samples": self.train_samples,
            "train_seconds": self.train_time,
            "iterations": self.iteration,
            "parameters": parameter_report(self.model.config),
            "model_config": self.model.config.to_dict(),
            "data": self.data.description,
            "device": str(self.device),
            "distributed": self.parallel.record(),
            "torch": torch.__version__,
            "args": plain_args(self.args),
        }


def describe(model: DLRM, data: DataBundle, args: argparse.Namespace) -> None:
    """Start-of-run summary."""
    report = parameter_report(model.config)
    kind = f"MLET K={args.mlet_hidden}" if args.mlet_hidden else "plain"
    log(f"data: {data.description}; train {data.train.num_samples:,} samples ({len(data.train)} batches), test {data.test.num_samples:,}")
    log(
        f"model: {len(data.table_sizes)} tables ({kind}, d={args.arch_sparse_feature_size}, {sum(data.table_sizes):,} rows), bottom {args.arch_mlp_bot}, top {model.config.interaction_width()}-{args.arch_mlp_top}, interaction {args.arch_interaction_op}"
    )
    log(
        f"parameters: training {report['training']['count']:,} ({report['training']['bytes'] / 2**20:.1f} MiB), inference {report['inference']['count']:,} ({report['inference']['bytes'] / 2**20:.1f} MiB)"
    )


def load_into(trainer: Trainer, path: str) -> None:
    """Restore ``path`` into the trainer, refusing a checkpoint of another architecture."""
    ckpt = load_checkpoint(path)
    saved = ModelConfig.from_dict(ckpt["model_config"])
    wanted = trainer.model.config
    if ckpt.get("kind") == "inference" and trainer.args.inference_only and saved == wanted.collapsed():
        trainer.model = trainer.model.collapse()
    elif (mismatch := describe_mismatch(saved, wanted)) is not None:
        raise UserError(f"--load-model {path}: {mismatch}")
    try:
        trainer.restore(ckpt)
    except ValueError as error:
        raise UserError(f"--load-model {path}: {error}") from None
    log(f"loaded {path} ({ckpt.get('kind')}, epoch {trainer.epoch}, iteration {trainer.iteration})")


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
        payload = trainer.results(final)
        if args.results_json and parallel.is_main:
            write_json(args.results_json, payload)
            log(f"results written to {args.results_json}")
        return payload


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; bad input ends with one line on stderr and exit code 2."""
    try:
        args = parse_args(argv)
    except UserError as error:
        if distributed.launched_rank() == 0:  # every process parses the same flags
            print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    try:
        run(args)
    except UserError as error:
        if (line := distributed.error_line(error)) is not None:
            print(f"{PROG}: error: {line}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if (failure := distributed.communication_failure(error)) is None:
            raise
        print(f"{PROG}: error: {distributed.error_line(failure)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    distributed.exit_process(main())
