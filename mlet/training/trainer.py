"""The training loop: steps, periodic logging, testing, checkpoints, results.

:class:`Trainer` is driven by ``dlrm_mlet.py``, which turns the flags into a
:class:`~mlet.core.config.TrainConfig` and builds the data and the model; it
works the same in one process and in a multi-process run (``parallel``, a
:class:`~mlet.training.processes.Parallel`). It owns the run's state: it
writes checkpoints (:meth:`Trainer.state`) and reads them back (:meth:`Trainer.load`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict

import torch
from tqdm import tqdm

from dlrm_model import DLRM, ModelConfig
from mlet.core.batch import Batches, StepBatch
from mlet.core.config import TrainConfig
from mlet.core.errors import UserError, one_line
from mlet.core.launch import log
from mlet.core.signals import stop_name
from mlet.data.sources import DataBundle
from mlet.training import cpu_threads
from mlet.training.checkpoints import TRAINING, atomic_save, trained_hidden, training_config
from mlet.training.losses import loss_function
from mlet.training.observers import Observer, TrainPoint
from mlet.training.optimizers import LRPolicy, build_optimizer
from mlet.training.processes import Parallel, SingleProcess, feed
from mlet.training.results import one_time_seconds, parameter_report, steady_rate
from mlet.training.state import (
    Position,
    TrainingState,
    check_data_position,
    check_training,
    restore_rng_state,
    resume_flag_changes,
    rng_state,
)
from mlet.training.stops import Stops
from mlet.training.train_step import make_train_step


def batch_workers(num_workers: int, device: torch.device) -> int:
    """Threads assembling training batches: ``--num-workers``, or (-1) 1 on CPU, where the
    cores train the model, and 4 on GPU, where one thread cannot keep up (docs/performance.md)."""
    if num_workers >= 0:
        return max(1, num_workers)
    return 4 if device.type == "cuda" else 1


def eager_steps_note(eager: int, steps: int, epoch: int) -> str | None:
    """The log line for an epoch whose graphed step ran more than a quarter of its ``steps`` (this process's, in
    ``epoch``) eagerly (``eager``: batches not of the captured shape, which replay cannot take); else ``None``.
    One such step is an epoch's last, smaller batch, so one alone says nothing (a resumed run may train only a
    few steps of an epoch)."""
    if eager <= 1 or 4 * eager <= steps:
        return None
    return (
        f"cuda graph: {eager:,} of {steps:,} steps of epoch {epoch} ran eagerly, their batches not of the captured"
        " shape (multi-hot bags of varying total length, padded to one only for plain and MLET tables, not"
        " --qr-flag or --md-flag ones: random data keeps one shape with --num-indices-per-lookup-fixed)"
    )


def schedule_rule_note(saved: dict, policy: LRPolicy, iteration: int) -> str | None:
    """A line for a checkpoint whose schedule settings equal this run's but whose next rate does not: it was
    written under an earlier rule of the schedule (before it followed upstream's step count, 2026-12-01), so the
    resumed run's rates differ from those of the run it continues."""
    saved_next, now = saved.get("next_lr"), policy.lr(iteration)
    same_settings = all(saved.get(name) == value for name, value in asdict(policy).items())
    if not same_settings or saved_next is None or math.isclose(saved_next, now, rel_tol=1e-12):
        return None
    return (
        f"learning rate: the checkpoint's next step was to train at {saved_next:g}, this version's schedule gives"
        f" {now:g} at iteration {iteration} (the checkpoint predates the schedule's upstream step count)"
    )


class Window:
    """The steps since the last 'Finished training it' line: their summed loss, samples and seconds of training.

    The clock stops for a test or a checkpoint inside the window (:meth:`stop`, :meth:`restart`): the line's
    ms/it and samples/s, and the run's training time, count the window's steps, all of them, and not the pause.
    """

    def __init__(self) -> None:
        self.loss_sum: torch.Tensor | float = 0.0
        self.steps, self.samples, self.seconds = 0, 0, 0.0
        self.started: float | None = time.perf_counter()  # None: stopped

    def add(self, loss: torch.Tensor | float, samples: int) -> None:
        """Count one step of ``samples`` samples and its ``loss`` (a device tensor: summed without a sync)."""
        self.loss_sum, self.steps, self.samples = self.loss_sum + loss, self.steps + 1, self.samples + samples

    def stop(self, device: torch.device | None = None) -> float:
        """Stop the clock and return the seconds since it (re)started, added to the window (0 where it is stopped
        already). ``device``: wait for the steps it still runs first (a CUDA device queues them; they are training,
        not what comes next)."""
        if self.started is None:
            return 0.0
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - self.started
        self.seconds, self.started = self.seconds + elapsed, None
        return elapsed

    def restart(self) -> None:
        """Start the clock again after a pause (:meth:`stop`)."""
        self.started = time.perf_counter()


class Trainer:
    """The training loop: steps, periodic logging, testing and checkpointing.

    ``parallel`` says how the work is split between processes: it shards
    batches, sums loss shares, evaluates, and gathers checkpoints; the
    default is one process on the CPU. ``flags`` is the command line's flag
    snapshot, kept in checkpoints and results.
    """

    def __init__(
        self,
        config: TrainConfig,
        data: DataBundle,
        model: DLRM,
        parallel: Parallel | None = None,
        flags: dict | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.config, self.data, self.model = config, data, model
        self.parallel = parallel if parallel is not None else SingleProcess()
        self.observers = list(observers)
        self.device = self.parallel.device
        self.flags = dict(flags or {})
        fused_tables = model.table_modules() if config.embedding_update == "fused" else None
        optimizer = build_optimizer(
            config.optimizer, config.learning_rate, model.sparse_parameters(), model.dense_parameters(), fused_tables
        )
        self.optimizer = self.parallel.shard_optimizer(optimizer, model)
        self.lr_policy = LRPolicy(
            config.learning_rate, config.lr_num_warmup_steps, config.lr_decay_start_step, config.lr_num_decay_steps
        )
        self.loss_fn = loss_function(config, self.device)
        use_graph = config.cuda_graph and self.device.type == "cuda" and fused_tables is not None
        self.train_step = make_train_step(
            model, self.loss_fn, self.optimizer, cuda_graph=use_graph, bf16=config.bf16, compile=config.compile
        )
        self.batches_per_epoch = min(config.num_batches, len(data.train)) if config.num_batches > 0 else len(data.train)
        self.print_freq = config.print_freq or max(1, self.batches_per_epoch // 20)
        self.epoch, self.batch, self.iteration = 0, 0, 0
        self.history: list[dict] = []
        self.best: dict | None = None
        self.train_time, self.train_samples = 0.0, 0
        self.windows: list[tuple[int, float]] = []  # (samples, seconds) of each logged window of this process's run
        self.loaded: dict | None = None  # what --load-model loaded
        self.trained_config: ModelConfig | None = None  # what an evaluated checkpoint was trained as
        self.stopped: dict | None = None  # the threshold a test reached (training stops there)
        self.noted_eager = False  # whether the log said that the graphed step ran many steps eagerly
        self.noted_padding = False  # whether it said that the graphed step pads multi-hot bags
        self.stops = Stops(self.parallel, bool(config.save_model))  # Ctrl-C, SIGTERM: where to stop (and save)
        self.best_unsaved = False  # a --save-best checkpoint is being written (the model is still the test's)

    # -- checkpoints -------------------------------------------------------
    def position(self) -> Position:
        """Where the run stands (see :class:`~mlet.training.state.Position`)."""
        return Position(
            self.epoch,
            self.batch,
            self.iteration,
            self.batches_per_epoch,
            self.data.train.num_samples,
            self.config.seed,
        )

    def state(self) -> TrainingState:
        """The run so far, as a resumable checkpoint holds it (gathered on rank 0 in a multi-process run)."""
        return TrainingState(
            model_config=self.model.config,
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            lr_schedule={**asdict(self.lr_policy), "next_lr": self.lr_policy.lr(self.iteration)},
            position=self.position(),
            rng=rng_state(),
            history=self.history,
            best=self.best,
            train_time=self.train_time,
            train_samples=self.train_samples,
            flags=self.flags,
            data=self.data.description,
            data_files=self.data.files,
            distributed=self.parallel.record(),
        )

    def save(self, path: str | None = None) -> None:
        """Write the resumable checkpoint to ``path`` (default: ``--save-model``); every process gathers, rank 0
        writes."""
        state = self.state()
        if self.parallel.is_main:
            atomic_save(state.to_checkpoint(), path or self.config.save_model)

    def load(self, ckpt: dict, path: str, evaluate_only: bool = False) -> None:
        """Take over a ``--load-model`` checkpoint: resume it, start from its weights, or (``evaluate_only``)
        report its position.

        A training checkpoint resumes where it stopped; an inference checkpoint
        gives its weights only (epoch 0, iteration 0). For ``evaluate_only`` the
        model was already built from the checkpoint (``Parallel.model_from_checkpoint``).
        Any disagreement with the run is one :class:`UserError` line naming ``path``.
        """
        kind = ckpt.get("kind")
        try:
            if evaluate_only:
                self.epoch, self.batch, self.iteration = Position.from_dict(ckpt.get("position") or {}).completed()
                # a collapsed or quantized model's training size is its MLET tables' before collapsing
                self.trained_config = training_config(ckpt)
            elif kind == TRAINING:
                self.resume(TrainingState.from_checkpoint(ckpt), ckpt)
            else:
                check_training(ckpt, self.model.config)
                self.model.load_state_dict(ckpt["model"])
        except (UserError, ValueError, RuntimeError) as error:
            raise UserError(f"--load-model {path}: {one_line(error)}") from None
        self.loaded = {
            "path": path,
            "kind": kind,
            "trained_mlet_hidden": trained_hidden(ckpt),
            "position": ckpt.get("position"),
        }
        if evaluate_only:
            collapsed = (
                f", collapsed from K={trained_hidden(ckpt)}" if kind != TRAINING and trained_hidden(ckpt) else ""
            )
            log(f"loaded {path} ({kind}{collapsed}, iteration {self.iteration})")
        elif kind == TRAINING:
            log(f"resuming {path} at epoch {self.epoch}, batch {self.batch} (iteration {self.iteration})")
        else:
            log(f"starting from the weights of {path} (inference checkpoint: no optimizer state; epoch 0, iteration 0)")

    def resume(self, state: TrainingState, ckpt: dict) -> None:
        """Check a training checkpoint against this run, log the flags that changed, and continue from it."""
        changes = resume_flag_changes(state.flags, self.flags, state.position)
        check_training(ckpt, self.model.config)  # after the flags: a changed data flag explains changed table sizes
        check_data_position(state.position, self.data.train.num_samples, self.batches_per_epoch)
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.epoch, self.batch, self.iteration = state.position.epoch, state.position.batch, state.position.iteration
        self.history, self.best = state.history, state.best
        self.train_time, self.train_samples = state.train_time, state.train_samples
        if state.rng:
            restore_rng_state(state.rng)
        if changes:
            log(f"resuming with changed flags (the run continues with the new values): {', '.join(changes)}")
        if note := schedule_rule_note(state.lr_schedule, self.lr_policy, self.iteration):
            log(note)

    # -- steps ---------------------------------------------------------------
    def step(self, batch: StepBatch) -> torch.Tensor:
        """One optimisation step; returns the (detached) batch loss."""
        self.optimizer.set_lr(self.lr_policy.lr(self.iteration))
        return self.train_step(batch)

    def evaluate(self, source, split: str, model: DLRM | None = None) -> dict:
        """AUC, log loss, accuracy and sample count of the model (or ``model``, e.g. a quantized copy) on every
        sample of ``source`` (the ``split`` named on the progress bar, which only rank 0 shows, on a terminal,
        with ``--progress``)."""
        workers = self.config.test_num_workers if self.config.test_num_workers >= 0 else self.config.num_workers
        show = self.config.progress and self.parallel.is_main

        def progress(batches: Batches) -> Batches:
            yield from tqdm(
                batches,
                total=len(source),
                desc=f"evaluating on {split}",
                unit=" batches",
                disable=None if show else True,
                dynamic_ncols=True,
                leave=False,
            )

        metrics = self.parallel.evaluate(
            self.model if model is None else model,
            source,
            self.config.bf16,
            batch_workers(workers, self.device),
            progress,
        )
        return {"epoch": self.epoch, "iteration": self.iteration, **metrics}

    def validate(self, final: dict) -> dict | None:
        """Metrics on the validation split for the model of ``final`` (None without a validation split).

        So one run serves both choosing settings (validation) and reporting them
        (test); under ``--eval-split=val`` the test metrics already are these.
        """
        if self.data.val is None:
            return None
        if self.data.val is self.data.test:
            return dict(final)
        return {**self.evaluate(self.data.val, "val"), "epoch": final["epoch"], "iteration": final["iteration"]}

    def test(self) -> dict:
        """Evaluate on the whole test set (the validation split under ``--eval-split=val``), log, remember the
        best AUC (``--save-best``: checkpoint its model), and note a stop threshold reached."""
        progress = self.epoch + 1 + self.batch / max(self.batches_per_epoch, 1)
        self.notify("testing", progress)
        result = self.evaluate(self.data.test, self.data.eval_split)
        self.notify("tested", result, progress)
        self.history.append(result)
        previous = self.best
        improved = previous is None or (result["auc"] or -1) > (previous["auc"] or -1) or math.isnan(previous["auc"])
        best = self.best = result if improved or previous is None else previous
        precision = self.config.print_precision
        best_accuracy = max((h["accuracy"] for h in self.history if not math.isnan(h["accuracy"])), default=math.nan)
        verb = "Validating" if self.data.eval_split == "val" else "Testing"  # upstream's line names test
        log(
            f"{verb} at - {self.batch}/{self.batches_per_epoch} of epoch {self.epoch},"
            f" loss {result['logloss']:.{precision + 1}f}, auc {result['auc']:.{precision - 1}f},"
            f" best auc {best['auc']:.{precision - 1}f}, accuracy {100 * result['accuracy']:3.3f} %,"
            f" best accuracy {100 * best_accuracy:3.3f} %"
        )
        if improved and self.config.save_best:
            self.save_best()
        self.check_targets(result)
        return result

    def check_targets(self, result: dict) -> None:
        """Stop training (:attr:`stopped`) when ``result`` reaches ``--mlperf-auc-threshold`` or
        ``--mlperf-acc-threshold``; log when."""
        for metric, target, flag in (
            ("auc", self.config.target_auc, "--mlperf-auc-threshold"),
            ("accuracy", self.config.target_accuracy, "--mlperf-acc-threshold"),
        ):
            value = result.get(metric)
            if self.stopped is None and target > 0 and value is not None and value >= target:
                self.stopped = {
                    "flag": flag,
                    "metric": metric,
                    "threshold": target,
                    "value": value,
                    "epoch": result["epoch"],
                    "iteration": result["iteration"],
                    "train_seconds": self.train_time,
                }
                log(
                    f"{flag} {target} reached: test {metric} {value:.{self.config.print_precision - 1}f} at iteration"
                    f" {result['iteration']} (epoch {result['epoch']}, {self.train_time:.1f} s of training);"
                    " stop training"
                )

    def notify(self, event: str, *values) -> None:
        """Call ``event`` on every observer."""
        for observer in self.observers:
            getattr(observer, event)(*values)

    def train(self) -> None:
        """Run the remaining epochs (on a CPU with as many threads as other processes leave cores: cpu_threads.py)."""
        if self.loaded is not None and self.epoch >= self.config.nepochs:  # a finished run resumed: say so
            log(
                f"--nepochs {self.config.nepochs}: {self.loaded['path']} has trained {self.epoch} epoch"
                f"{'s' if self.epoch != 1 else ''} already"
                f" (iteration {self.iteration}); nothing is left to train (a larger --nepochs continues it)"
            )
        total = self.config.nepochs * self.batches_per_epoch
        show = self.config.progress and self.parallel.is_main
        bar = tqdm(
            total=total,
            initial=self.iteration,
            unit="it",
            disable=None if show else True,
            dynamic_ncols=True,
            leave=False,
        )
        started = self.iteration
        try:
            with (
                self.stops.watching(),
                cpu_threads.adapting(self.config.adapt_threads, self.device.type, log) as threads,
            ):
                while self.epoch < self.config.nepochs and self.stopped is None:
                    self.notify("epoch_started", self.epoch)
                    eager, steps, epoch = self.train_step.other_shape_steps, self.iteration, self.epoch
                    self.run_epoch(bar, threads)
                    self.note_eager_steps(self.train_step.other_shape_steps - eager, self.iteration - steps, epoch)
                    self.note_padding()
                    self.notify("epoch_ended", self.epoch)
                    if self.batch >= self.batches_per_epoch:  # not when a stop threshold ended the epoch early
                        self.epoch, self.batch = self.epoch + 1, 0
                if signals := self.stops.at_the_end():
                    self.stop_together(signals)
        except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM (their handlers from before are back)
            bar.close()
            if self.stops.saves_on_the_way_out and self.iteration > started:
                self.save_when_stopped(stop_name(stop))
            raise
        bar.close()
        self.notify("finished", self.stopped is not None)

    def save_when_stopped(self, cause: str) -> None:
        """Write the checkpoint (``--save-model``) of a run that a signal (``cause``: ``SIGTERM``, ``Ctrl-C``,
        ``SIGTERM to rank 1``) ends between two steps (:mod:`mlet.training.stops`), to continue with
        ``--load-model``. A second signal during the write ends it at once; the file holds what it held before
        (atomic_save)."""
        path = self.config.save_model
        log(
            f"{cause} at iteration {self.iteration} (epoch {self.epoch}, batch {self.batch} of"
            f" {self.batches_per_epoch}): saving the run to {path} before stopping (a second one stops at once)"
        )
        if self.best_unsaved:  # stopped while writing it: the model is still the best one, and the resumed run
            self.save_best()  # will not test at this point again
        self.save()
        log(f"saved {path}; continue the run with --load-model={path}")

    def save_best(self) -> None:
        """Write the ``--save-best`` checkpoint of the model as it is (the best tested so far)."""
        self.best_unsaved = True  # until written: a signal now leaves it to save_when_stopped
        self.save(self.config.save_best)
        self.best_unsaved = False
        log(f"saved {self.config.save_best} (best auc)")

    def stop_together(self, signals: dict[int, int]) -> None:
        """Where the processes of a run agreed to stop for ``signals`` (``{rank: signal}``): save, then end the loop
        on every process."""
        self.save_when_stopped(self.stops.cause(signals))
        self.stops.stop(signals)

    def note_eager_steps(self, eager: int, steps: int, epoch: int) -> None:
        """Log, once per run, that the graphed step ran over a quarter of an epoch eagerly (see eager_steps_note)."""
        note = eager_steps_note(eager, steps, epoch)
        if note is not None and not self.noted_eager:
            log(note)
            self.noted_eager = True

    def note_padding(self) -> None:
        """Log, once per run, that the graphed step pads multi-hot bags (see ``train_step.GraphedTrainStep``)."""
        length = self.train_step.padded_bag_length
        if length is not None and not self.noted_padding:
            log(
                f"cuda graph: multi-hot bags padded to {length} ids each (the longest the data makes; padding ids"
                " weigh 0), so that one graph replays batches of every total"
            )
            self.noted_padding = True

    def run_epoch(self, bar: tqdm, threads: cpu_threads.ThreadGovernor | None = None) -> None:
        """Train on the rest of the current epoch (``threads``: adjusts the CPU thread count between steps).

        ``train_time`` counts wall time spent waiting for and training on
        batches; testing and checkpointing are excluded.
        """
        config = self.config
        window = Window()
        workers = batch_workers(config.num_workers, self.device)
        train = self.data.train
        if self.owes_test():
            self.test()
            if self.stopped is not None:
                return
        batches = feed(train, self.parallel.batches(train, self.epoch, self.batch, workers), self.device)
        try:
            for batch in batches:
                if self.batch >= self.batches_per_epoch:
                    break
                batch = batch.to(self.device, non_blocking=True)
                self.stops.step_begins()  # a signal now waits for the step and its counts
                loss = self.step(batch)
                self.batch, self.iteration = self.batch + 1, self.iteration + 1
                self.train_samples += batch.size
                if signals := self.stops.step_ended(self.iteration):  # several processes, at a check
                    self.train_time += window.stop(self.device)
                    self.stop_together(signals)
                if threads is not None:
                    threads.tick()
                window.add(loss, batch.size)
                bar.update(1)
                self.notify("stepped", self.iteration)
                if self.batch % self.print_freq == 0 or self.batch == self.batches_per_epoch:
                    loss_value = float(self.parallel.all_sum(window.loss_sum)) / window.steps  # syncs the device
                    self.train_time += window.stop()
                    self.windows.append((window.samples, window.seconds))
                    self.log_train(loss_value, window.steps, window.seconds, window.samples)
                    window = Window()
                if config.test_freq > 0 and self.batch % config.test_freq == 0 and self.batch != self.batches_per_epoch:
                    self.train_time += window.stop(self.device)
                    self.test()
                    window.restart()
                    if self.stopped is not None:
                        break
                if config.save_model and config.save_freq and self.iteration % config.save_freq == 0:
                    self.train_time += window.stop(self.device)
                    self.save()
                    window.restart()
        except KeyboardInterrupt:  # the window's steps count, for the checkpoint that may follow (save_when_stopped)
            self.train_time += window.stop(self.device)
            raise
        batches.close()
        if self.batch >= self.batches_per_epoch:
            self.test()

    def owes_test(self) -> bool:
        """Whether the run stands where ``--test-freq`` tests (mid-epoch) and its history lacks that test: a run
        stopped during it (save_when_stopped) and resumed tests there first, as the run it continues would have."""
        config, done = self.config, self.history[-1]["iteration"] if self.history else 0
        at_test = config.test_freq > 0 and self.batch % config.test_freq == 0
        return at_test and 0 < self.batch < self.batches_per_epoch and done < self.iteration

    def log_train(self, loss: float, steps: int, elapsed: float, samples: int) -> None:
        """Upstream's 'Finished training it' line (and the point for the observers)."""
        timing = (
            f" {1000 * elapsed / steps:.2f} ms/it, {samples / elapsed:,.0f} samples/s,"
            if self.config.print_time
            else ""
        )
        wall = f" ({time.strftime('%H:%M')})" if self.config.print_wall_time else ""
        log(
            f"Finished training it {self.batch}/{self.batches_per_epoch} of epoch {self.epoch},{timing} "
            f"loss {loss:.{self.config.print_precision + 1}f}{wall}"
        )
        rate = self.lr_policy.lr(self.iteration - 1)
        self.notify("trained", TrainPoint(self.iteration, self.epoch, loss, rate, samples / max(elapsed, 1e-9)))

    def results(self, final: dict, val: dict | None = None) -> dict:
        """The ``--results-json`` payload (``val``: :meth:`validate`'s metrics)."""
        return {
            "final": final,
            "val": val,
            "best": self.best,
            "history": self.history,
            "train_samples_per_second": self.train_samples / self.train_time if self.train_time else None,
            "steady_samples_per_second": steady_rate(self.windows),
            "one_time_seconds": one_time_seconds(self.windows),
            "train_samples": self.train_samples,
            "train_seconds": self.train_time,
            "iterations": self.iteration,
            "parameters": parameter_report(self.model, self.parallel.all_sum, self.trained_config),
            "model_config": self.model.config.to_dict(),
            "data": self.data.description,
            "device": str(self.device),
            "distributed": self.parallel.record(),
            "torch": torch.__version__,
            "args": self.flags,
            "checkpoint": self.loaded,
            "stopped": self.stopped,
        }
