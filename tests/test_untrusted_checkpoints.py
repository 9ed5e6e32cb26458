"""Untrusted checkpoint files: one whose pickle would run a command is refused by every command that reads
checkpoints, in one line, and the command never runs (loading goes through ``torch.load(weights_only=True)``)."""

from __future__ import annotations

import contextlib
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

import checkpoint
import dlrm_mlet
from mlet.training.checkpoints import FORMAT, VERSION


class RunsACommand:
    """Pickles as a call of ``os.system``: a checkpoint holding it would run the command on a plain ``pickle`` load."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def malicious_file(path: Path, marker: Path, zip_format: bool) -> Path:
    """A file that passes every format check but whose pickle runs ``touch marker``."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "training",
        "model_config": {},
        "model": RunsACommand(f"touch {marker}"),
    }
    if zip_format:
        torch.save(payload, path)
    else:
        with path.open("wb") as handle:
            pickle.dump(payload, handle, protocol=2)
    return path


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch-zip", "raw-pickle"])
def test_malicious_pickle_is_refused_everywhere_and_never_runs(zip_format: bool, tmp_path, capsys) -> None:
    marker = tmp_path / "MARKER"
    evil = malicious_file(tmp_path / "evil.pt", marker, zip_format)
    entry_points = [
        (dlrm_mlet.main, [f"--load-model={evil}"], "dlrm_mlet.py: error: --load-model"),
        (dlrm_mlet.main, [f"--load-model={evil}", "--inference-only"], "dlrm_mlet.py: error: --load-model"),
        (checkpoint.main, ["info", str(evil)], "checkpoint.py: error:"),
        (checkpoint.main, ["collapse", str(evil), str(tmp_path / "out.pt")], "checkpoint.py: error:"),
        (checkpoint.main, ["export-onnx", str(evil), str(tmp_path / "out.onnx")], "checkpoint.py: error:"),
    ]
    for main, argv, prefix in entry_points:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(f"{prefix} {evil}: refused: ") and "could run code" in err[0], err[0]
        assert "system" in err[0] or "operand" in err[0]
        assert not marker.exists()
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "out.onnx").exists()
    # control: the file really runs the command when loaded the unsafe way
    control = tmp_path / "CONTROL"
    with (
        warnings.catch_warnings(),
        contextlib.suppress(RuntimeError),
    ):  # a raw pickle runs, then fails torch's magic-number check
        warnings.simplefilter("ignore")
        torch.load(malicious_file(tmp_path / "control.pt", control, zip_format), weights_only=False)
    assert control.exists()
