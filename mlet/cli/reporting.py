"""The run's reporting flags (upstream DLRM's): TensorBoard, profiling, MLPerf logging and targets, debug output,
ONNX at the end; their checks, and the observers they give the training loop."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from mlet.core.errors import UserError, add_bool, check_output_file, check_writable_folder
from mlet.training.observers import MLPerfLog, Observer, TensorBoardWriter, check_tensorboard
from mlet.training.profiling import DEFAULT_STEPS, SKIPPED_STEPS, StepProfiler

PROFILE_PREFIX = "dlrm_mlet"
ONNX_FILE = "dlrm_mlet.onnx"


def add_reporting_flags(group: argparse._ActionsContainer) -> None:
    """``--tensor-board-filename``, ``--enable-profiling``, the MLPerf flags, ``--debug-mode``, ``--save-onnx``."""
    group.add_argument(
        "--tensor-board-filename",
        type=str,
        default="",
        help="write TensorBoard scalars (loss, AUC, log loss, accuracy, rate, samples/s) into this folder "
        "(default: none; upstream always writes run_kaggle_pt)",
    )
    add_bool(
        group,
        "--enable-profiling",
        False,
        f"profile {DEFAULT_STEPS} training steps after the first {SKIPPED_STEPS}: Chrome trace {PROFILE_PREFIX}.json "
        f"and top-ops table {PROFILE_PREFIX}.prof in the current folder",
    )
    add_bool(group, "--mlperf-logging", False, "print MLPerf :::MLLOG lines (init, run, epochs, evaluations, stop)")
    group.add_argument(
        "--mlperf-auc-threshold",
        type=float,
        default=0.0,
        help="stop training at the first test whose AUC reaches this (0: never; upstream's Terabyte target 0.8025)",
    )
    group.add_argument(
        "--mlperf-acc-threshold",
        type=float,
        default=0.0,
        help="stop training at the first test whose accuracy reaches this (0: never)",
    )
    add_bool(
        group,
        "--debug-mode",
        False,
        "print the architecture, every training batch and the parameters before and after training (tiny runs)",
    )
    add_bool(group, "--save-onnx", False, f"at the end, export the inference model to {ONNX_FILE} (needs onnx)")


@dataclass(frozen=True)
class Reporting:
    """The reporting flags, checked."""

    tensorboard_dir: str = ""
    profiling: bool = False
    mlperf_logging: bool = False
    debug_mode: bool = False
    save_onnx: bool = False


def reporting_config(args: argparse.Namespace) -> Reporting:
    """Check the reporting flags (thresholds in [0, 1], tensorboard installed when asked for)."""
    for flag, value in (
        ("--mlperf-auc-threshold", args.mlperf_auc_threshold),
        ("--mlperf-acc-threshold", args.mlperf_acc_threshold),
    ):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise UserError(f"{flag}: must be in [0, 1] (0: no target), got {value}")
    if args.tensor_board_filename:
        check_tensorboard()
    return Reporting(
        tensorboard_dir=args.tensor_board_filename,
        profiling=args.enable_profiling,
        mlperf_logging=args.mlperf_logging,
        debug_mode=args.debug_mode,
        save_onnx=args.save_onnx,
    )


def reporting_files(reporting: Reporting) -> dict[str, str]:
    """``{flag: path}`` of the files the reporting flags write (the profiler's trace and the ONNX model go into the
    current folder, under upstream's fixed names), for the check that a run's outputs are distinct."""
    files = {"--tensor-board-filename": reporting.tensorboard_dir}
    if reporting.profiling:
        files["--enable-profiling (trace)"] = str(Path.cwd() / f"{PROFILE_PREFIX}.json")
        files["--enable-profiling (top ops)"] = str(Path.cwd() / f"{PROFILE_PREFIX}.prof")
    if reporting.save_onnx:
        files["--save-onnx"] = str(Path.cwd() / ONNX_FILE)
        files["--save-onnx (external data)"] = str(Path.cwd() / f"{ONNX_FILE}.data")
    return files


def check_reporting_files(reporting: Reporting) -> None:
    """Fail before training, naming the flag, if the reporting flags' files cannot be written: the TensorBoard
    folder (created now), the profiler's files and the ONNX model in the current folder."""
    if reporting.tensorboard_dir:
        check_writable_folder("--tensor-board-filename", reporting.tensorboard_dir)
    if reporting.profiling:
        for suffix in (".json", ".prof"):
            check_output_file("--enable-profiling", str(Path.cwd() / f"{PROFILE_PREFIX}{suffix}"))
    if reporting.save_onnx:
        check_output_file("--save-onnx", str(Path.cwd() / ONNX_FILE))


def observers(reporting: Reporting, eval_split: str, cuda: bool, mlperf: MLPerfLog | None) -> list[Observer]:
    """The observers of the main process: TensorBoard, the profiler, the MLPerf log."""
    found: list[Observer] = []
    if reporting.tensorboard_dir:
        found.append(TensorBoardWriter(reporting.tensorboard_dir, eval_split))
    if reporting.profiling:
        found.append(StepProfiler(PROFILE_PREFIX, cuda=cuda, tensorboard_dir=reporting.tensorboard_dir))
    if mlperf is not None:
        found.append(mlperf)
    return found
