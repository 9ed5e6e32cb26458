"""What the training loop tells the outside while it runs: TensorBoard scalars and MLPerf log lines.

The :class:`~mlet.training.trainer.Trainer` calls each :class:`Observer` at
the points of a run (epochs, steps, logged training points, tests, the end);
an observer does nothing at the points it does not override. Only the main
process (rank 0) gets observers, so none of them writes twice.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from mlet.core.errors import UserError
from mlet.core.launch import log


@dataclass(frozen=True)
class TrainPoint:
    """One logged training point: the mean loss since the previous one, the rate, the speed."""

    iteration: int
    epoch: int
    loss: float
    learning_rate: float
    samples_per_second: float


class Observer:
    """Hooks of a training run; each does nothing unless overridden."""

    def epoch_started(self, epoch: int) -> None:
        """Epoch ``epoch`` (0-based) begins."""

    def stepped(self, iteration: int) -> None:
        """Training step ``iteration`` (1-based: the steps done so far) has finished."""

    def trained(self, point: TrainPoint) -> None:
        """A training log line was printed."""

    def testing(self, epoch_progress: float) -> None:
        """A test begins, ``epoch_progress`` epochs into the run (1-based, as MLPerf counts)."""

    def tested(self, result: dict, epoch_progress: float) -> None:
        """A test gave ``result`` (``auc``, ``logloss``, ``accuracy``, ``iteration``, ...)."""

    def epoch_ended(self, epoch: int) -> None:
        """Epoch ``epoch`` is done."""

    def finished(self, reached_target: bool) -> None:
        """The run ends (``reached_target``: a stop threshold was reached)."""


class TensorBoardWriter(Observer):
    """``--tensor-board-filename DIR``: scalars for TensorBoard, one point per logged step and per test.

    Tags: ``Train/Loss``, ``Train/LearningRate``, ``Train/SamplesPerSecond``;
    ``Test/AUC``, ``Test/LogLoss``, ``Test/Acc`` (``Val/...`` when the reported
    split is validation). The step is the iteration.
    """

    def __init__(self, directory: str, split: str = "test") -> None:
        self.writer = summary_writer(directory)
        self.prefix = "Val" if split == "val" else "Test"

    def trained(self, point: TrainPoint) -> None:
        """The training scalars of a logged step."""
        self.writer.add_scalar("Train/Loss", point.loss, point.iteration)
        self.writer.add_scalar("Train/LearningRate", point.learning_rate, point.iteration)
        self.writer.add_scalar("Train/SamplesPerSecond", point.samples_per_second, point.iteration)

    def tested(self, result: dict, epoch_progress: float) -> None:
        """The test metrics (a diverged model's NaN metrics are left out)."""
        for key, tag in (("auc", "AUC"), ("logloss", "LogLoss"), ("accuracy", "Acc")):
            value = result.get(key)
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(f"{self.prefix}/{tag}", value, result["iteration"])
        self.writer.flush()

    def finished(self, reached_target: bool) -> None:
        """Write everything out."""
        self.writer.close()


def summary_writer(directory: str) -> Any:
    """torch's TensorBoard ``SummaryWriter`` on ``directory``; a :class:`UserError` if tensorboard is missing."""
    check_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(directory)


def check_tensorboard() -> None:
    """A one-line :class:`UserError` naming the flag when the optional tensorboard package is not installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UserError(
            "--tensor-board-filename: needs the tensorboard package "
            "(pip install tensorboard, or pip install 'dlrm-mlet[tensorboard]')"
        ) from None


class MLPerfLog(Observer):
    """``--mlperf-logging``: MLPerf's ``:::MLLOG {...}`` lines, with the keys of its DLRM reference.

    The command line logs the start (:meth:`start`, :meth:`run_started`);
    the loop logs blocks, epochs, evaluations (``eval_accuracy`` is the AUC, as
    in MLPerf's DLRM) and ``run_stop`` (``success`` when a threshold was reached).
    """

    def __init__(self, clock=time.time) -> None:
        self.clock = clock

    def line(self, key: str, value: Any = None, kind: str = "POINT_IN_TIME", **metadata: Any) -> None:
        """Print one MLPerf log line."""
        record = {
            "namespace": "",
            "time_ms": int(self.clock() * 1000),
            "event_type": kind,
            "key": key,
            "value": value,
            "metadata": {"file": "dlrm_mlet.py", **metadata},
        }
        log(":::MLLOG " + json.dumps(record))

    def start(self) -> None:
        """Before the data are read: the cache note and ``init_start``."""
        self.line("cache_clear", True)
        self.line("init_start", kind="INTERVAL_START")

    def run_started(self, seed: int, batch_size: int, hyperparameters: dict[str, Any], samples: dict[str, int]) -> None:
        """Data and model ready: ``init_stop``, ``run_start``, the submission and hyperparameter keys."""
        self.line("init_stop", kind="INTERVAL_END")
        self.line("run_start", kind="INTERVAL_START")
        for key, value in (
            ("submission_benchmark", "dlrm"),
            ("submission_org", "dlrm-mlet"),
            ("submission_division", "open"),
            ("submission_status", "research"),
            ("submission_platform", "dlrm-mlet"),
            ("seed", seed),
            ("global_batch_size", batch_size),
            *hyperparameters.items(),
            *samples.items(),
        ):
            self.line(key, value)

    def epoch_started(self, epoch: int) -> None:
        """``block_start`` and ``epoch_start`` (MLPerf counts epochs from 1)."""
        self.line("block_start", kind="INTERVAL_START", first_epoch_num=epoch + 1, epoch_count=1)
        self.line("epoch_start", kind="INTERVAL_START", epoch_num=epoch + 1)

    def testing(self, epoch_progress: float) -> None:
        """``eval_start``."""
        self.line("eval_start", kind="INTERVAL_START", epoch_num=epoch_progress)

    def tested(self, result: dict, epoch_progress: float) -> None:
        """``eval_accuracy`` (the AUC) and ``eval_stop``."""
        auc = result.get("auc")
        self.line("eval_accuracy", auc if auc is not None and math.isfinite(auc) else None, epoch_num=epoch_progress)
        self.line("eval_stop", kind="INTERVAL_END", epoch_num=epoch_progress)

    def epoch_ended(self, epoch: int) -> None:
        """``epoch_stop`` and ``block_stop``."""
        self.line("epoch_stop", kind="INTERVAL_END", epoch_num=epoch + 1)
        self.line("block_stop", kind="INTERVAL_END", first_epoch_num=epoch + 1)

    def finished(self, reached_target: bool) -> None:
        """``run_stop``: success when a threshold was reached, else aborted (MLPerf's reading of a run)."""
        self.line("run_stop", kind="INTERVAL_END", status="success" if reached_target else "aborted")
