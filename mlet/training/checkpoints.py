"""Checkpoint files: writing atomically, reading without running code, structure checks, collapse.

:func:`atomic_save` writes to a temporary file beside the target, fsyncs and
renames it over the target (a kill mid-save leaves the previous version;
:func:`remove_stale_temporaries` clears a dead writer's leftovers).
:func:`load_checkpoint` first checks every zip member against its CRC-32
(:func:`damaged_member`: one pass over the file), then reads with
``torch.load(weights_only=True)``, so a pickle that names anything but
tensors and plain data is refused; upstream DLRM's checkpoint is named as such; and
:func:`structure_problem` names what is missing or mistyped before anything
is built. :func:`model_from_checkpoint` rebuilds the model;
:func:`collapsed_checkpoint` folds MLET's ``W1 @ W2`` into the inference
checkpoint's plain ``n x d`` tables.

What a checkpoint holds, its two kinds, resume and collapse: docs/checkpoints.md.
"""

from __future__ import annotations

import glob
import os
import pickle
import re
import socket
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from dlrm_model import DLRM, ModelConfig
from mlet.core.config import QR_OPERATIONS
from mlet.core.errors import UserError
from mlet.core.files import process_gone
from mlet_layers import build_tables, table_weight_shapes

FORMAT = "dlrm-mlet-checkpoint"
VERSION = 3
"""Format version read up to; written as :func:`format_version` says."""
PLAIN_VERSION = 2
"""What plain and MLET checkpoints are written as: readers of version 2 load them unchanged."""
RUN_RECORD = ("position", "args", "train_time", "train_samples", "data", "data_files")
"""Checkpoint entries that describe the training run (where it stopped, its flags, data and time); every
checkpoint made from another (collapsed, quantized) keeps them."""
TRAINING, INFERENCE = "training", "inference"

# -- writing -----------------------------------------------------------------


def _temp_prefix(target: Path) -> str:
    """Temporary files of ``target`` are ``.NAME.HOST.PID.XXXXXXXX.tmp`` beside it."""
    return f".{target.name}.{socket.gethostname()}.{os.getpid()}."


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Delete temporary files left beside ``target`` by writers that were killed mid-save.

    Only files of exited processes on this host are removed, so a concurrent
    writer's file is never touched. Nothing ever loads these files; this only
    reclaims their disk space. Returns the removed paths.
    """
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?P<host>.+)\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp$")
    removed = []
    for candidate in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        match = pattern.match(candidate.name)
        if match and process_gone(match["host"], int(match["pid"])):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _file_mode(target: Path) -> int:
    """Permissions for a new version of ``target``: the old file's, else the umask's (mkstemp's are 0600)."""
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


WRITER_ERRORS = ("PytorchStreamWriter", "inline_container")
"""Marks of torch's zip writer in the text of the ``RuntimeError`` it raises when a write fails."""


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then what it was raised from or while handling, and so on."""
    seen: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and link not in seen:
        yield link
        seen.append(link)
        link = link.__cause__ or link.__context__


def interruption(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM (:class:`~mlet.core.signals.Terminated`) behind ``error``, if any: torch's zip
    writer turns one that arrives while it writes into a ``RuntimeError`` (``unexpected pos``) raised while
    handling it."""
    return next((link for link in error_chain(error) if isinstance(link, KeyboardInterrupt)), None)


def write_failure(error: BaseException) -> str | None:
    """Why ``torch.save`` could not write, in a few words, or ``None`` for an error that is not about writing.

    An ``OSError``, or a ``RuntimeError`` of torch's zip writer: torch 2.13 reports a full disk as
    ``[enforce fail at inline_container.cc:...] . unexpected pos ...``, raised while the ``OSError``
    (``No space left on device``) it follows is its context; that errno text is what is said.
    """
    writer_error = isinstance(error, RuntimeError) and any(mark in str(error) for mark in WRITER_ERRORS)
    if not (isinstance(error, OSError) or writer_error):
        return None  # another RuntimeError (say, an object torch cannot serialise) is not disguised as a write
    for link in error_chain(error):
        if isinstance(link, OSError):
            return link.strerror or str(link) or type(link).__name__
    return str(error).strip().splitlines()[0]


def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, rename over it, fsync the folder.

    A crash or kill at any point leaves either the old file or the new one,
    never a torn one. Temporary files of earlier, killed writers are removed.
    Raises :class:`UserError` if the file cannot be written.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
    except OSError as error:
        raise UserError(f"{target}: cannot write the checkpoint ({error.strerror or error})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _file_mode(target))
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if (stop := interruption(error)) is not None and stop is not error:  # not a failed write: Ctrl-C, SIGTERM
            raise stop from None
        if (detail := write_failure(error)) is not None:  # e.g. a full disk
            raise UserError(f"{target}: cannot write the checkpoint ({detail})") from None
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# -- reading -----------------------------------------------------------------


def _refusal_reason(error: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, in a few words."""
    text = str(error)
    if match := re.search(r"GLOBAL ([\w.]+)", text):
        return f"it references {match[1]}"
    if match := re.search(r"Unsupported operand \d+", text):
        return match[0]
    return type(error).__name__


def check_file(path: str | os.PathLike) -> Path:
    """``path`` if it is an existing file, else :class:`UserError` (cheap: checked before data is loaded)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such checkpoint file" if not p.exists() else f"{p}: is not a file")
    return p


CRC_CHUNK = 1 << 24
"""Bytes read at a time by :func:`damaged_member`."""
UPSTREAM_CHECKPOINT = (
    "upstream DLRM's checkpoint (state_dict, opt_state_dict, nepochs: its dlrm_s_pytorch.py's --save-model format, "
    "not read here)"
)


def damaged_member(path: Path) -> str | None:
    """What is damaged in the zip archive at ``path`` (a member whose bytes do not match their CRC-32, or that
    cannot be read), or ``None``.

    One pass over the file. A member stored with CRC 0 is not checked: torch writes 0 when saving with
    ``torch.utils.serialization.config.save.compute_crc32 = False``.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 and info.file_size:
                    continue
                try:
                    with archive.open(info) as member:
                        while member.read(CRC_CHUNK):
                            pass
                except zipfile.BadZipFile as error:
                    return f"CRC mismatch in {info.filename}" if "CRC" in str(error) else f"{info.filename}: {error}"
                except EOFError:
                    return f"{info.filename} is cut short"
    except (OSError, zipfile.BadZipFile) as error:
        return str(error)
    return None


def looks_upstream(has: Callable[[str], bool]) -> bool:
    """Whether a file whose top-level keys ``has`` tells is upstream DLRM's (or the MLET fork's) ``--save-model``
    checkpoint: ``state_dict`` beside ``nepochs`` or ``opt_state_dict``."""
    return has("state_dict") and (has("nepochs") or has("opt_state_dict"))


def upstream_pickle(path: Path) -> bool:
    """Whether the pickle of the zip archive at ``path`` names upstream DLRM's checkpoint keys (read as bytes,
    never unpickled: for a file whose pickle was refused)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            pickled = archive.read(name) if name is not None else b""
    except (OSError, zipfile.BadZipFile):
        return False
    return looks_upstream(lambda key: key.encode() in pickled)


def upstream_error(path: Path) -> UserError:
    """The one line for upstream DLRM's checkpoint: what it is, why it is not read, what to do."""
    return UserError(
        f"{path}: is {UPSTREAM_CHECKPOINT}: its weights bear upstream's module names and it stores no architecture,"
        " so it is neither resumed nor evaluated here; train with dlrm_mlet.py (the same flags) and --save-model"
    )


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """Read a checkpoint without executing code from it.

    ``mmap`` maps the tensors from the file instead of reading them (for
    inspecting or converting large checkpoints). Raises :class:`UserError` for a
    missing file, a damaged one (a member whose CRC-32 does not match: one pass
    over the file), a file that is not a checkpoint of this tool (upstream
    DLRM's is named as such), a newer format, or one whose pickle holds anything
    but tensors and plain data (a possibly malicious file: it is refused and
    nothing in it runs).
    """
    p = check_file(path)
    is_zip = zipfile.is_zipfile(p)
    if is_zip and (damage := damaged_member(p)) is not None:
        raise UserError(f"{p}: damaged checkpoint ({damage})")
    if not is_zip:
        with p.open("rb") as handle:
            head = handle.read(4)
        if head.startswith(b"PK"):
            raise UserError(f"{p}: not a readable checkpoint (a truncated or damaged zip archive)")
        if not head.startswith(pickle.PROTO):  # protocol 2+ pickles (torch.save's legacy format) open with PROTO
            raise UserError(
                f"{p}: not a readable checkpoint (neither a zip archive, as torch.save writes, nor a pickle)"
            )
    ckpt = _unpickle(p, map_location, mmap and is_zip)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        if isinstance(ckpt, dict) and looks_upstream(ckpt.__contains__):
            raise upstream_error(p)
        raise UserError(f"{p}: not a dlrm-mlet checkpoint")
    if int(ckpt.get("version", 0)) > VERSION:
        raise UserError(
            f"{p}: written by a newer dlrm-mlet (checkpoint format {ckpt['version']}); this one reads up to {VERSION}"
        )
    problem = structure_problem(ckpt)
    if problem:
        raise UserError(f"{p}: malformed checkpoint ({problem})")
    return ckpt


def _unpickle(p: Path, map_location: str | torch.device, mmap: bool) -> object:
    """``torch.load(weights_only=True)`` of ``p``; what it refuses or cannot read is a :class:`UserError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about unusual pickle protocols before refusing
            return torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        if upstream_pickle(p):  # upstream's metrics may be numpy scalars
            raise upstream_error(p) from None
        raise UserError(
            f"{p}: refused: the file's pickle holds more than tensors and plain data, "
            f"and loading it could run code ({_refusal_reason(error)})"
        ) from None
    except Exception as error:  # torch raises many types for files that are not checkpoints
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UserError(
            f"{p}: not a readable checkpoint ({type(error).__name__}{': ' + detail if detail else ''})"
        ) from None


def structure_problem(ckpt: dict) -> str | None:
    """What is missing or of the wrong type in a checkpoint dict (``None`` if nothing)."""
    kind = ckpt.get("kind")
    if kind not in (TRAINING, INFERENCE):
        return f"kind {kind!r} is neither {TRAINING} nor {INFERENCE}"
    model = ckpt.get("model")
    if not isinstance(model, dict) or not model or not all(isinstance(v, torch.Tensor) for v in model.values()):
        return "no model weights"
    try:
        config = ModelConfig.from_dict(ckpt["model_config"])
        # a field of the wrong type (a hand-edited "dim": "x") fails in the checks and shapes, not in from_dict
        problem = config_problem(config)
        shapes = table_weight_shapes(config) if problem is None else {}
    except (KeyError, TypeError, ValueError, AttributeError):
        return "no valid model_config"
    if problem is not None:
        return f"model_config {problem}"
    if ckpt.get("quantized") is not None:
        return quantized_problem(ckpt)
    for name, shape in shapes.items():
        weight = model.get(f"tables.{name}")
        if not isinstance(weight, torch.Tensor):
            return f"no model weights (tables.{name})"
        if tuple(weight.shape) != shape:
            saved_shape = " x ".join(f"{n:,}" for n in weight.shape)
            return f"model_config describes tables of {shape[0]:,} x {shape[1]}, the saved weight is {saved_shape}"
    if kind == TRAINING:
        position = ckpt.get("position")
        if (
            not isinstance(ckpt.get("optimizer"), dict)
            or not isinstance(position, dict)
            or not {"epoch", "batch", "iteration"} <= position.keys()
        ):
            return "a training checkpoint without optimizer state or position"
    return None


def config_problem(config: ModelConfig) -> str | None:
    """What makes a stored ``ModelConfig`` unbuildable (a size below 1, an unknown operation), or ``None``."""
    if min(*config.table_sizes, config.dim, *config.bottom_mlp, *config.top_mlp) < 1 or config.mlet_hidden < 0:
        return "holds a size below 1"
    if config.qr_flag and (config.qr_collisions < 1 or config.qr_operation not in QR_OPERATIONS):
        return f"holds an invalid quotient-remainder setting ({config.qr_collisions}, {config.qr_operation!r})"
    if config.qr_flag and config.qr_operation == "concat" and config.dim % 2:
        return f"concatenates quotient-remainder halves of an odd d={config.dim}"
    if config.md_dims and (
        len(config.md_dims) != len(config.table_sizes) or not all(1 <= w <= config.dim for w in config.md_dims)
    ):
        return f"holds mixed-dimension widths {list(config.md_dims)} that do not fit its tables"
    return None


def quantized_problem(ckpt: dict) -> str | None:
    """What is wrong with a quantized checkpoint's ``quantized`` entry (its packed tables are checked when the
    model is built, by ``mlet.serving.quantize``)."""
    quantized = ckpt["quantized"]
    if ckpt.get("kind") != INFERENCE or not isinstance(quantized, dict) or quantized.get("bits") not in (4, 8):
        return "a quantized checkpoint must be an inference checkpoint of 4 or 8 bits"
    return None


def format_version(ckpt: dict) -> int:
    """The format version to write ``ckpt`` as: 3 where it holds quotient-remainder, mixed-dimension or quantized
    tables (older readers cannot build those), else 2."""
    config = ModelConfig.from_dict(ckpt["model_config"])
    return VERSION if config.is_composite or ckpt.get("quantized") is not None else PLAIN_VERSION


def refuse_quantized(ckpt: dict, use: str, path: str | os.PathLike | None = None) -> None:
    """A :class:`UserError` (prefixed with ``path`` when given) if ``ckpt`` holds quantized tables, which ``use``
    (what the command does: ``training``, ``the ONNX export``, ...) cannot take: it needs the float checkpoint
    the quantized one was made from; the quantized one is only evaluated."""
    quantized = ckpt.get("quantized")
    if quantized is None:
        return
    where = f"{path}: " if path is not None else ""
    raise UserError(
        f"{where}holds int{quantized.get('bits')} row-wise quantized tables; {use} needs the float checkpoint it"
        " was quantized from (dlrm_mlet.py --inference-only evaluates this one as it is)"
    )


def model_from_checkpoint(ckpt: dict, device: torch.device | str = "cpu") -> DLRM:
    """Rebuild the (float) model a checkpoint holds; quantized checkpoints are ``mlet.serving.quantize``'s
    (commands refuse them first with :func:`refuse_quantized`, naming what they do).

    The tables are not initialised (their storage is replaced by the saved
    tensors), so a large model is not built twice.
    """
    refuse_quantized(ckpt, "the float model")
    config = ModelConfig.from_dict(ckpt["model_config"])
    model = DLRM(config, seed=0, device=device, tables=build_tables(config, seed=None, device=device))
    assign = torch.device(device).type == "cpu" and all(t.device.type == "cpu" for t in ckpt["model"].values())
    try:
        model.load_state_dict(ckpt["model"], assign=assign)
    except RuntimeError as error:
        raise misfit_error(error) from None
    return model


def misfit_error(error: Exception, weights: str = "the weights") -> UserError:
    """The one line for ``load_state_dict``'s refusal of a checkpoint's ``weights``: every finding of torch's
    (tensors of another shape, missing and unexpected ones), not only its last, on one line."""
    lines = [line.strip().rstrip(".").strip() for line in str(error).splitlines()]
    findings = [line for line in lines if line and not line.startswith("Error(s) in loading state_dict")]
    return UserError(
        f"{weights} do not fit the checkpoint's model_config ({'; '.join(findings) or 'state_dict mismatch'})"
    )


# -- architecture ----------------------------------------------------------------


def dashed(values: Sequence[int]) -> str:
    """``[1, 2, 3]`` -> ``1-2-3`` (the form of the architecture flags)."""
    return "-".join(map(str, values))


def trained_hidden(ckpt: dict) -> int:
    """MLET K the checkpoint's model was trained with (0: plain tables), collapsed or not."""
    collapsed_from = ckpt.get("collapsed_from") or {}
    return int(collapsed_from.get("mlet_hidden", ckpt["model_config"].get("mlet_hidden", 0)))


def flag_name(dest: str) -> str:
    """``mini_batch_size`` -> ``--mini-batch-size``."""
    return "--" + dest.replace("_", "-")


# -- collapse ----------------------------------------------------------------


def bytes_report(counts: dict[str, int], element_size: int) -> dict:
    """Parameter counts (``ModelConfig.parameter_counts``) as the results' ``parameters`` entry."""
    return {
        "training": {"count": counts["training"], "bytes": counts["training"] * element_size},
        "inference": {"count": counts["inference"], "bytes": counts["inference"] * element_size},
        "embedding_training_bytes": counts["embedding_training"] * element_size,
        "embedding_inference_bytes": counts["embedding_inference"] * element_size,
    }


def element_size(ckpt: dict) -> int:
    """Bytes per value of the checkpoint's float weights (of its MLPs, so also for quantized tables)."""
    return next(v for v in ckpt["model"].values() if v.is_floating_point()).element_size()


def training_config(ckpt: dict) -> ModelConfig:
    """The architecture as trained (for a collapsed checkpoint: before collapsing)."""
    collapsed_from = ckpt.get("collapsed_from") or {}
    return ModelConfig.from_dict(collapsed_from.get("model_config", ckpt["model_config"]))


def collapsed_checkpoint(ckpt: dict) -> dict:
    """The inference checkpoint of ``ckpt``: W1 @ W2 folded into plain ``n x d`` tables.

    No optimizer, schedule or RNG state; arguments, position, history and best
    metrics are kept, and ``collapsed_from`` records the trained architecture
    and its parameter sizes. An inference checkpoint is returned unchanged.
    """
    if ckpt.get("kind") == INFERENCE:
        return ckpt
    model = model_from_checkpoint(ckpt, device=next(iter(ckpt["model"].values())).device)
    config = model.config
    plain = model.collapse()
    kept = {k: ckpt[k] for k in (*RUN_RECORD, "history", "best") if k in ckpt}  # the same model's metrics
    collapsed = {
        "format": FORMAT,
        "version": PLAIN_VERSION,
        "kind": INFERENCE,
        "model_config": plain.config.to_dict(),
        "model": plain.state_dict(),
        "collapsed_from": {
            "kind": ckpt.get("kind"),
            "mlet_hidden": config.mlet_hidden,
            "model_config": config.to_dict(),
            "parameters": bytes_report(config.parameter_counts(), element_size(ckpt)),
        },
        "torch": str(torch.__version__),
        **kept,
    }
    return {**collapsed, "version": format_version(collapsed)}
