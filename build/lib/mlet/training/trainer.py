"""The training loop: steps, periodic logging, testing, checkpoints, results.

:class:`Trainer` is driven by ``dlrm_mlet.py`` (which parses the flags and
builds the data and the model); it works the same in one process and in a
multi-process run (``parallel``, see ``distributed.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dlrm_model import DLRM
from mlet.core.batch import Batch
from mlet.core.errors import UserError
from mlet.core.launch import log
from mlet.core.pipeline import prefetch
from mlet.data.sources import DataBundle
from mlet.parallel import distributed
from mlet.training.checkpoints import FORMAT, TRAINING, VERSION, atomic_save, bytes_report, restore_rng_state, rng_state
from mlet.training.optimizers import LRPolicy, build_optimizer
from mlet.training.train_step import make_train_step


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


def batch_workers(args: argparse.Namespace, device: torch.device) -> int:
    """Threads assembling training batches: ``--num-workers``, or (-1) 1 on CPU, where the
    cores train the model, and 4 on GPU, where one thread cannot keep up (bench/NOTES.md)."""
    if args.num_workers >= 0:
        return max(1, args.num_workers)
    return 4 if device.type == "cuda" else 1


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
    """Write ``payload`` atomically as strict JSON (:class:`UserError` naming ``path`` if it cannot be written)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(json_safe(payload), indent=2, sort_keys=False) + "\n")
        os.replace(tmp, target)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write the results ({error.strerror or error})") from None


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
        fused_tables = model.tables if args.embedding_update == "fused" else None
        optimizer = build_optimizer(args.optimizer, args.learning_rate, model.sparse_parameters(), model.dense_parameters(), fused_tables)
        self.optimizer = self.parallel.shard_optimizer(optimizer, model)
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
            "distributed": self.parallel.record(),
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
        """Write the resumable checkpoint (``--save-model``); every process gathers, rank 0 writes."""
        state = self.state()
        if self.parallel.is_main:
            atomic_save(state, self.args.save_model)

    # -- steps ---------------------------------------------------------------
    def step(self, batch: Batch) -> torch.Tensor:
        """One optimisation step; returns the (detached) batch loss."""
        self.optimizer.set_lr(self.lr_policy.lr(self.iteration))
        return self.train_step(batch)

    def evaluate(self, source) -> dict:
        """AUC, log loss, accuracy and sample count of the model on every sample of ``source``."""
        return {"epoch": self.epoch, "iteration": self.iteration, **self.parallel.evaluate(self.model, source.batches(0))}

    def validate(self, final: dict) -> dict | None:
        """Metrics on the validation split for the model of ``final`` (None without a validation split).

        So one run serves both choosing settings (validation) and reporting them
        (test); under ``--eval-split=val`` the test metrics already are these.
        """
        if self.data.val is None:
            return None
        if self.data.val is self.data.test:
            return dict(final)
        return {**self.evaluate(self.data.val), "epoch": final["epoch"], "iteration": final["iteration"]}

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
            f" best accuracy {100 * max((h['accuracy'] for h in self.history if not math.isnan(h['accuracy'])), default=math.nan):3.3f} %"
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
        workers = batch_workers(self.args, self.device)
        batches = prefetch(iter(self.parallel.shards(self.data.train.batches(self.epoch, self.batch, workers))), pin=self.device.type == "cuda")
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
            "distributed": self.parallel.record(),
            "torch": torch.__version__,
            "args": plain_args(self.args),
            "checkpoint": self.loaded,
        }
