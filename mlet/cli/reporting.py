"""The run's reporting flags (upstream DLRM's): TensorBoard, profiling, MLPerf logging and targets, debug output,
ONNX at the end; their checks, and the observers they give the training loop."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

from mlet.core.errors import UserError, add_bool, check_output_file, check_writable_folder, written_as_folder
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
        f"profile {DEFAULT_STEPS} training steps after the first {SKIPPED_STEPS}: Chrome trace PREFIX.json "
        "and top-ops table PREFIX.prof (--profile-prefix)",
    )
    group.add_argument(
        "--profile-prefix",
        type=str,
        default="",
        help="where --enable-profiling writes: PREFIX.json and PREFIX.prof; a folder (one that exists, or ending in "
        f"/) puts {PROFILE_PREFIX}.json and {PROFILE_PREFIX}.prof in it (default: the --save-model path without "
        f"its suffix, plus .profile, e.g. runs/a.profile for runs/a.pt; without --save-model {PROFILE_PREFIX} in the "
        "current folder, as upstream's fixed names)",
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
    profile_prefix: str = PROFILE_PREFIX
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
        profile_prefix=profile_prefix(args.profile_prefix, args.save_model),
        mlperf_logging=args.mlperf_logging,
        debug_mode=args.debug_mode,
        save_onnx=args.save_onnx,
    )


def profile_prefix(given: str, save_model: str) -> str:
    """``--profile-prefix``, or its default: the ``--save-model`` path without its suffix plus ``.profile`` (runs
    with their own checkpoints profile into their own files), else upstream's fixed stem in the current folder.
    A prefix that names a folder (an existing one, or one ending in ``/``, ``.`` or ``..``) means the default stem
    in that folder, ``FOLDER/dlrm_mlet``: taken as a stem it named files ``..json`` and ``..prof``, or hidden
    ``.json`` and ``.prof``."""
    if not given and not save_model:
        return PROFILE_PREFIX
    if not given:
        checkpoint = Path(save_model)  # "." or "/" have no name (no suffix to drop): refused later as folders
        return f"{checkpoint.with_suffix('') if checkpoint.name else checkpoint}.profile"
    if written_as_folder(given) or os.path.isdir(given):
        return str(Path(given) / PROFILE_PREFIX)
    return given


def profile_files(reporting: Reporting) -> dict[str, str]:
    """``{what: path}`` of the profiler's files: the trace and the top-ops table."""
    return {"trace": f"{reporting.profile_prefix}.json", "top ops": f"{reporting.profile_prefix}.prof"}


@dataclass(frozen=True)
class Output:
    """A file or folder a reporting flag writes."""

    flag: str
    path: str
    what: str = ""
    """Which of the flag's outputs, where it writes several (``trace``, ``external data``)."""
    folder: bool = False
    """A folder the run writes files into (TensorBoard's), not a file."""
    probed: bool = True
    """Checked writable before training; not the ONNX model's external data, written (beside the model, whose folder
    is probed) only for models over 2 GiB."""

    @property
    def label(self) -> str:
        """The flag, with which of its outputs where it writes several (``--enable-profiling (trace)``)."""
        return f"{self.flag} ({self.what})" if self.what else self.flag


def reporting_outputs(reporting: Reporting) -> list[Output]:
    """The files and folders the reporting flags write: the TensorBoard folder, the profiler's files under
    ``--profile-prefix``, the ONNX model (and its external data) in the current folder under upstream's fixed name.
    The one list that both the distinctness check (:func:`reporting_files`) and the writability check
    (:func:`check_reporting_files`) read, so that a new output cannot be left out of either."""
    outputs = [Output("--tensor-board-filename", reporting.tensorboard_dir, folder=True)]
    if reporting.profiling:
        outputs += [
            Output("--enable-profiling", str(Path.cwd() / path), what)
            for what, path in profile_files(reporting).items()
        ]
    if reporting.save_onnx:
        onnx = str(Path.cwd() / ONNX_FILE)
        outputs += [Output("--save-onnx", onnx), Output("--save-onnx", f"{onnx}.data", "external data", probed=False)]
    return [output for output in outputs if output.path]


def reporting_files(reporting: Reporting) -> dict[str, str]:
    """``{flag: path}`` of the files the reporting flags write (:func:`reporting_outputs`), for the check that a
    run's outputs are distinct."""
    return {output.label: output.path for output in reporting_outputs(reporting)}


def check_reporting_files(reporting: Reporting) -> None:
    """Fail before training, naming the flag, if the reporting flags' files cannot be written
    (:func:`reporting_outputs`): the TensorBoard folder (created now), the profiler's files and the ONNX model."""
    for output in reporting_outputs(reporting):
        if output.folder:
            check_writable_folder(output.flag, output.path)
        elif output.probed:
            check_output_file(output.flag, output.path)


def observers(reporting: Reporting, eval_split: str, cuda: bool, mlperf: MLPerfLog | None) -> list[Observer]:
    """The observers of the main process: TensorBoard, the profiler, the MLPerf log."""
    found: list[Observer] = []
    if reporting.tensorboard_dir:
        found.append(TensorBoardWriter(reporting.tensorboard_dir, eval_split))
    if reporting.profiling:
        found.append(StepProfiler(reporting.profile_prefix, cuda=cuda, tensorboard_dir=reporting.tensorboard_dir))
    if mlperf is not None:
        found.append(mlperf)
    return found
