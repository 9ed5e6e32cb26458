"""The state of a training run, as a checkpoint holds it, and what a run may load.

One writer and one reader: :meth:`Trainer.state` makes a :class:`TrainingState`
and :meth:`TrainingState.to_checkpoint` turns it into the dict that
:func:`~mlet.training.checkpoints.atomic_save` writes;
:meth:`TrainingState.from_checkpoint` reads it back for
:meth:`Trainer.load`. The dict's keys are the checkpoint format (docs/checkpoints.md).

Before anything is loaded, a checkpoint is checked against the run: an
architecture that differs is one line naming the flag; on resume, flags that
define the saved state (the optimizer, the training-data stream that the
position counts in) must match, and any other change is allowed and logged.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mlet.core.config import ModelConfig
from mlet.core.errors import UserError
from mlet.data.preprocessing.cache import files_record
from mlet.training.checkpoints import (
    FORMAT,
    INFERENCE,
    TRAINING,
    dashed,
    flag_name,
    format_version,
    refuse_quantized,
    trained_hidden,
)


@dataclass(frozen=True)
class Position:
    """Where a run stands: the next batch is ``batch`` of ``epoch``.

    The order of an epoch's batches is a function of (seed, epoch), so the
    position plus the size of the training data identify the next batch exactly.
    """

    epoch: int = 0
    batch: int = 0
    iteration: int = 0
    batches_per_epoch: int | None = None
    train_samples_per_epoch: int | None = None
    shuffle_seed: int | None = None

    def to_dict(self) -> dict:
        """The checkpoint's ``position`` entry."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Position:
        """Inverse of :meth:`to_dict` (missing entries take their defaults)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def completed(self) -> tuple[int, int, int]:
        """``(epoch, batch, iteration)`` the model had trained to, as its training run logged them.

        A checkpoint written at the end of an epoch points at the next batch
        (batch 0 of the next epoch); its model is that of the last batch of the epoch before.
        """
        if self.batch == 0 and self.epoch > 0 and self.batches_per_epoch:
            return self.epoch - 1, self.batches_per_epoch, self.iteration
        return self.epoch, self.batch, self.iteration

    def describe(self) -> str:
        """``epoch E, batch B``."""
        return f"epoch {self.epoch}, batch {self.batch}"


@dataclass
class TrainingState:
    """Everything a resumable checkpoint holds.

    ``flags`` is the snapshot of the command line's flags (stored as ``args``),
    so that a resumed run can name what changed; ``data`` describes the data.
    """

    model_config: ModelConfig
    model: dict[str, Tensor]
    optimizer: dict
    lr_schedule: dict
    position: Position
    rng: dict | None = None
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    train_time: float = 0.0
    train_samples: int = 0
    flags: dict = field(default_factory=dict)
    data: str = ""
    data_files: dict | None = None
    distributed: dict | None = None
    torch_version: str = str(torch.__version__)

    def to_checkpoint(self) -> dict:
        """The checkpoint dict (format version per :func:`~mlet.training.checkpoints.format_version`)."""
        ckpt = {
            "format": FORMAT,
            "version": 0,
            "kind": TRAINING,
            "model_config": self.model_config.to_dict(),
            "model": self.model,
            "optimizer": self.optimizer,
            "lr_schedule": self.lr_schedule,
            "position": self.position.to_dict(),
            "distributed": self.distributed,
            "rng": self.rng,
            "history": self.history,
            "best": self.best,
            "train_time": self.train_time,
            "train_samples": self.train_samples,
            "args": self.flags,
            "data": self.data,
            "data_files": self.data_files,
            "torch": self.torch_version,
        }
        return {**ckpt, "version": format_version(ckpt)}

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> TrainingState:
        """The state of a training checkpoint (checked by ``load_checkpoint``)."""
        return cls(
            model_config=ModelConfig.from_dict(ckpt["model_config"]),
            model=ckpt["model"],
            optimizer=ckpt["optimizer"],
            lr_schedule=ckpt.get("lr_schedule") or {},
            position=Position.from_dict(ckpt["position"]),
            rng=ckpt.get("rng"),
            history=list(ckpt.get("history") or []),
            best=ckpt.get("best"),
            train_time=ckpt.get("train_time", 0.0),
            train_samples=ckpt.get("train_samples", 0),
            flags=ckpt.get("args") or {},
            data=ckpt.get("data", ""),
            data_files=ckpt.get("data_files"),
            distributed=ckpt.get("distributed"),
            torch_version=ckpt.get("torch", ""),
        )


def rng_state() -> dict:
    """The global random generators' states (torch, CUDA, numpy, Python) as tensors and plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state` (CUDA states only where as many devices are present)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))


# -- what a run may load -------------------------------------------------------

ARCHITECTURE_FLAGS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("table_sizes", "--arch-embedding-size", dashed),
    ("dim", "--arch-sparse-feature-size", str),
    ("mlet_hidden", "--mlet-hidden", str),
    ("bottom_mlp", "--arch-mlp-bot", dashed),
    ("top_mlp", "--arch-mlp-top", dashed),
    ("interaction", "--arch-interaction-op", str),
    ("interaction_itself", "--arch-interaction-itself", str),
    ("qr_flag", "--qr-flag", str),
    ("qr_threshold", "--qr-threshold", str),
    ("qr_collisions", "--qr-collisions", str),
    ("qr_operation", "--qr-operation", str),
    (
        "md_dims",
        "--md-flag (its widths, from --md-temperature, --md-threshold, --md-round-dims and the data)",
        lambda dims: dashed(dims) if dims else "none",
    ),
]


QR_FIELDS = ("qr_flag", "qr_threshold", "qr_collisions", "qr_operation")
"""The quotient-remainder settings. They matter only through the tables they lay out (``table_configs``: which
tables are pairs, of what shape): another ``--qr-threshold`` that splits the same tables builds the same model."""


def describe_mismatch(saved: ModelConfig, wanted: ModelConfig) -> str | None:
    """One line naming the first architecture difference (``None`` if equal); quotient-remainder settings only
    where they change a table's layout (:func:`qr_layout_change`)."""
    for name, flag, fmt in ARCHITECTURE_FLAGS:
        a, b = getattr(saved, name), getattr(wanted, name)
        if a != b and name in QR_FIELDS:
            table = qr_layout_change(saved, wanted, name)
            if table is not None:
                rows = saved.table_sizes[table]
                return (
                    f"{flag}: checkpoint has {fmt(a)}, the flags give {fmt(b)}, "
                    f"which changes how table {table} ({rows:,} rows) is stored"
                )
        elif a != b:
            # a data set's tables take the data's sizes where the flag is not given: name both sources
            given = "this run's tables (the flag's, or the data's without it) are" if name == "table_sizes" else None
            return f"{flag}: checkpoint has {fmt(a)}, {given or 'the flags give'} {fmt(b)}"
    return None


def qr_layout_change(saved: ModelConfig, wanted: ModelConfig, name: str) -> int | None:
    """The first table whose layout ``wanted``'s quotient-remainder setting ``name`` changes, given the settings
    before it in :data:`QR_FIELDS` already changed (so that of several changed flags the one that splits a table
    is named); ``None`` where ``wanted``'s settings together leave every table of ``saved`` as it is."""
    settings = {setting: getattr(wanted, setting) for setting in QR_FIELDS}
    if replace(saved, **settings).table_configs() == saved.table_configs():
        return None
    earlier = QR_FIELDS[: QR_FIELDS.index(name)]
    before = replace(saved, **{setting: settings[setting] for setting in earlier})
    after = replace(before, **{name: settings[name]})
    changed = (t for t, (a, b) in enumerate(zip(before.table_configs(), after.table_configs())) if a != b)
    return next(changed, None)


def trained_tables(ckpt: dict) -> str:
    """A checkpoint's tables as the ``--mlet-hidden`` checks name them: ``plain tables (trained with 0)``,
    ``MLET tables trained with K=16``, and what was done to them since (``(collapsed, int8-quantized)``)."""
    k = trained_hidden(ckpt)
    bits = (ckpt.get("quantized") or {}).get("bits")
    since = [
        *(["collapsed"] if k and ckpt.get("kind") == INFERENCE else []),
        *([f"int{bits}-quantized"] if bits else []),
    ]
    if not k:
        return f"plain tables ({', '.join(['trained with 0', *since])})"
    return f"MLET tables trained with K={k}" + (f" ({', '.join(since)})" if since else "")


def check_evaluation(ckpt: dict, wanted: ModelConfig) -> None:
    """Check the flags of ``--inference-only`` against a checkpoint.

    The architecture flags must agree, except that ``--mlet-hidden`` may give
    either the training K (the training command's flags) or 0 (a baseline
    command's flags), for collapsed and two-layer checkpoints alike; a plain
    checkpoint takes 0 only.
    """
    saved = ModelConfig.from_dict(ckpt["model_config"])
    k = trained_hidden(ckpt)
    if wanted.mlet_hidden not in (0, k):
        accepted = f"{k} (the training flags) or 0 (a baseline's)" if k else "0"
        raise UserError(
            f"--mlet-hidden: checkpoint holds {trained_tables(ckpt)}, the flags give {wanted.mlet_hidden}; "
            f"give {accepted} to evaluate it"
        )
    mismatch = describe_mismatch(saved, replace(wanted, mlet_hidden=saved.mlet_hidden))
    if mismatch:
        raise UserError(mismatch)


def check_training(ckpt: dict, wanted: ModelConfig) -> None:
    """Check that a checkpoint can start or resume training of the flags' architecture."""
    refuse_quantized(ckpt, "training")
    if ckpt.get("kind") == INFERENCE and wanted.mlet_hidden:
        raise UserError(
            f"--mlet-hidden: checkpoint is an inference checkpoint of {trained_tables(ckpt)}, without optimizer"
            " state; MLET training cannot start from it: evaluate it with --inference-only, "
            "or fine-tune it as a plain model with --mlet-hidden=0"
        )
    mismatch = describe_mismatch(ModelConfig.from_dict(ckpt["model_config"]), wanted)
    if mismatch:
        raise UserError(mismatch)


# Resuming with other flags: architecture flags are checked through the model
# config above; these must match, since the saved state would not mean the same
# thing otherwise; bookkeeping flags are not compared; any other change is
# allowed and logged (the run continues with the new values).
MUST_MATCH_DATA = {"numpy_rand_seed", "mini_batch_size", "data_generation", "num_batches"}
MUST_MATCH_BY_GENERATION = {
    "random": {"data_size", "num_indices_per_lookup", "num_indices_per_lookup_fixed", "round_targets"},
    "synthetic": {"data_size"},
    "dataset": {
        "data_set",
        "data_split",
        "data_split_seed",
        "cat_min_count",
        "max_ind_range",
        "data_sub_sample_rate",
        "data_randomize",
    },
}
"""Flags that define the training-data stream of each ``--data-generation``; the others do not touch it."""
MUST_MATCH_PREFIXES = {"random": ("rand_data_",), "synthetic": ("synthetic_",), "dataset": ()}
BOOKKEEPING = {
    "load_model",
    "save_model",
    "save_freq",
    "save_best",
    "save_collapsed",
    "results_json",
    "print_freq",
    "print_time",
    "print_precision",
    "progress",
    "inference_only",
    "dist_backend",  # the process layout: a checkpoint resumes in any world size
    "dist_timeout",
    "print_wall_time",
    "test_num_workers",
    "tensor_board_filename",
    "enable_profiling",
    "profile_prefix",
    "mlperf_logging",
    "debug_mode",
    "save_onnx",
}
DATA_FILES = {"raw_data_file", "processed_data_file"}
"""Where a data set lies: not compared as flags (a file may move, a day's file may stand in for another);
:func:`data_files_note` compares what the files hold."""
ARCHITECTURE_ARGS = {
    "arch_sparse_feature_size",
    "arch_embedding_size",
    "arch_mlp_bot",
    "arch_mlp_top",
    "arch_interaction_op",
    "arch_interaction_itself",
    "mlet_hidden",
    "mlet_init",
    "md_flag",
    "md_threshold",
    "md_temperature",
    "md_round_dims",
}
"""Flags compared through the model they build (:func:`describe_mismatch`), not as flags. The quotient-remainder
flags are not among them: a change that splits the same tables alike resumes, and is logged as a changed flag."""
DERIVED = {"table_sizes", "bottom_mlp", "top_mlp", "loss_weights_pair"}
"""Values the snapshot derives from other flags (compared through those)."""


def resume_flag_changes(saved_flags: dict, flags: dict, position: Position) -> list[str]:
    """Compare the flags of a resumed run with the checkpoint's.

    Raises :class:`UserError` naming the first flag that must match but does
    not (``--optimizer`` or a flag defining the training-data stream that the
    saved ``position`` counts in); returns ``--flag=new (checkpoint: old)`` for
    every other changed flag.
    """
    changes = []
    generation = str(saved_flags.get("data_generation"))
    must_match = MUST_MATCH_DATA | MUST_MATCH_BY_GENERATION.get(generation, set())
    prefixes = MUST_MATCH_PREFIXES.get(generation, ())
    skipped = BOOKKEEPING | ARCHITECTURE_ARGS | DERIVED | DATA_FILES
    for dest in sorted(saved_flags.keys() & flags.keys() - skipped):
        old, new = saved_flags[dest], flags[dest]
        if old == new:
            continue
        flag = flag_name(dest)
        if dest == "optimizer":
            raise UserError(
                f"{flag}: checkpoint has {old}, the flags give {new}; the saved optimizer state belongs to {old}"
            )
        if dest in must_match or dest.startswith(prefixes):
            raise UserError(
                f"{flag}: checkpoint has {old}, the flags give {new}; "
                f"the saved data position ({position.describe()}) counts batches of the"
                " checkpoint's training data, so another value would skip or repeat samples "
                "(give the checkpoint's value, or start a new run)"
            )
        changes.append(f"{flag}={new} (checkpoint: {old})")
    return changes


def recorded_data_files(ckpt: dict) -> dict | None:
    """The data set files a checkpoint was trained on (:func:`~mlet.data.preprocessing.cache.files_record`): as
    recorded, else (older checkpoints) from its flags, resolved here, without a fingerprint; None for generated
    data."""
    if ckpt.get("data_files"):
        return ckpt["data_files"]
    flags = ckpt.get("args") or {}
    if flags.get("data_generation") != "dataset":
        return None
    return files_record(flags.get("raw_data_file"), flags.get("processed_data_file"), None)


def data_files_note(ckpt: dict, files: dict | None) -> str | None:
    """A log line when this run's data set ``files`` are not those ``ckpt`` was trained on, else None.

    Evaluating or resuming a checkpoint on another file can be meant (a moved file, a day's data), so it is a
    notice, not a refusal (the data-set flags and the table sizes are compared and refused elsewhere). Where both
    record the raw file's sampled fingerprint, equal ones mean the same content (a moved or copied file: no line);
    an older checkpoint records none, and then the processed directories are compared by path.
    """
    saved = recorded_data_files(ckpt)
    if saved is None or files is None:
        return None
    if saved.get("fingerprint") and files.get("fingerprint"):
        if saved["fingerprint"] == files["fingerprint"]:
            return None
        why = "other content: the sampled fingerprints of the raw files differ"
    elif saved["processed_data_file"] == files["processed_data_file"]:
        return None
    else:
        why = "the checkpoint records no fingerprint of its data, so the same content elsewhere cannot be told"
    flag = "--raw-data-file" if files["raw_data_file"] else "--processed-data-file"
    return (
        f"{flag}: {where_data_lies(files)} is not the data the checkpoint was trained on, {where_data_lies(saved)}"
        f" ({why})"
    )


def where_data_lies(files: dict) -> str:
    """The raw file of a :func:`recorded_data_files` record, else its processed directory."""
    return files["raw_data_file"] or files["processed_data_file"]


def check_resume_flags(ckpt: dict, flags: dict) -> None:
    """Refuse, before any data is prepared, a training checkpoint that the flags cannot resume: the
    :func:`resume_flag_changes` check on the checkpoint's saved flags (``Trainer.resume`` makes it again and logs
    the allowed changes). Inference checkpoints give weights only and compare no flags."""
    if ckpt.get("kind") == TRAINING:
        resume_flag_changes(ckpt.get("args") or {}, flags, Position.from_dict(ckpt["position"]))


def check_data_position(position: Position, train_samples: int, batches_per_epoch: int) -> None:
    """Refuse to resume when the training data differ in size from the checkpoint's (the position would not
    point to the same batch)."""
    saved = (position.train_samples_per_epoch, position.batches_per_epoch)
    if saved[1] is not None and saved != (train_samples, batches_per_epoch):
        raise UserError(
            "the training data differ from the checkpoint's "
            f"({train_samples:,} samples in {batches_per_epoch:,} batches per epoch,"
            f" the checkpoint's: {saved[0]:,} in {saved[1]:,}); resuming at its position would skip or repeat samples"
        )
