"""Checkpoints: atomic writes, safe (no-pickle-code) loading, model rebuilding.

A checkpoint is a plain dict of tensors and primitives, written with
``torch.save`` and read with ``torch.load(weights_only=True)``, so loading a
file never runs code from it.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch

from dlrm_model import DLRM, ModelConfig
from errors import UserError

FORMAT = "dlrm-mlet-checkpoint"
VERSION = 1


def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over it.

    A crash at any point leaves either the old file or the new one, never a torn one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint without executing code from it.

    Raises :class:`UserError` for a missing file, a file that is not a
    checkpoint of this tool, or one whose pickle holds anything but tensors and
    plain data (a possibly malicious file: it is refused, nothing in it runs).
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such checkpoint file" if not p.exists() else f"{p}: is not a file")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{p}: refused: the file holds pickled objects other than tensors and plain data, which could run code ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise UserError(f"{p}: not a readable checkpoint ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{p}: not a dlrm-mlet checkpoint")
    return ckpt


def describe_mismatch(saved: ModelConfig, wanted: ModelConfig) -> str | None:
    """One line naming the first architecture difference (``None`` if equal)."""
    fields = [
        ("table_sizes", "--arch-embedding-size", lambda v: "-".join(map(str, v))),
        ("dim", "--arch-sparse-feature-size", str),
        ("mlet_hidden", "--mlet-hidden", str),
        ("bottom_mlp", "--arch-mlp-bot", lambda v: "-".join(map(str, v))),
        ("top_mlp", "--arch-mlp-top", lambda v: "-".join(map(str, v))),
        ("interaction", "--arch-interaction-op", str),
        ("interaction_itself", "--arch-interaction-itself", str),
    ]
    for name, flag, fmt in fields:
        a, b = getattr(saved, name), getattr(wanted, name)
        if a != b:
            return f"{flag}: checkpoint has {fmt(a)}, the flags give {fmt(b)}"
    return None


def model_from_checkpoint(ckpt: dict, device: torch.device | str = "cpu") -> DLRM:
    """Rebuild the model a checkpoint holds."""
    config = ModelConfig.from_dict(ckpt["model_config"])
    model = DLRM(config, seed=0, device=device)
    model.load_state_dict(ckpt["model"])
    return model
