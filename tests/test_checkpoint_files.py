"""Checkpoint files that are damaged, foreign, or whose weights do not fit their config, and checkpoint.py's
refusals: each a one-line error with exit 2, nothing written over an input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoint
import dlrm_mlet
from mlet.training import checkpoints
from mlet.training.checkpoints import FORMAT, VERSION, atomic_save, load_checkpoint


def _saved(path: Path, content: dict) -> Path:
    torch.save(content, path)
    return path


def _written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _torn(tmp_path: Path) -> Path:
    torn = tmp_path / "torn.pt"
    atomic_save({"format": FORMAT, "version": VERSION, "kind": "training", "x": torch.zeros(1000)}, torn)
    torn.write_bytes(torn.read_bytes()[:1500])
    return torn


def _damaged(tmp_path: Path) -> Path:
    """16 bytes of a tensor's data flipped to zeros, as ``dd ... conv=notrunc`` does."""
    damaged = tmp_path / "damaged.pt"
    atomic_save({"format": FORMAT, "version": VERSION, "kind": "training", "x": torch.full((1000,), 7.0)}, damaged)
    content = bytearray(damaged.read_bytes())
    at = content.index(torch.full((4,), 7.0).numpy().tobytes()) + 64
    content[at : at + 16] = bytes(16)
    damaged.write_bytes(bytes(content))
    return damaged


UPSTREAM_LAYOUT = {"state_dict": {"emb_l.0.weight": torch.zeros(3, 2)}, "nepochs": 1, "opt_state_dict": {}}
"""The keys of upstream DLRM's ``--save-model``."""
SMALL_CONFIG = {"table_sizes": [10, 5], "dim": 4, "bottom_mlp": [13, 4], "top_mlp": [1]}
HEADER = {"format": FORMAT, "version": VERSION}

BROKEN_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (lambda tmp: tmp / "nope.pt", "no such checkpoint file"),
    "directory": (lambda tmp: tmp, "is not a file"),
    "text": (lambda tmp: _written(tmp / "notes.txt", "hello\n"), "not a readable checkpoint"),
    "json": (
        lambda tmp: _written(tmp / "run.json", '{"auc": 0.8}\n'),
        "not a readable checkpoint (neither a zip archive, as torch.save writes, nor a pickle)",
    ),
    "torn": (_torn, "not a readable checkpoint (a truncated or damaged zip archive)"),
    "damaged": (_damaged, "damaged checkpoint (CRC mismatch in archive/data/0)"),
    "upstream": (
        lambda tmp: _saved(tmp / "upstream.pt", {**UPSTREAM_LAYOUT, "iter": 10, "train_loss": 0.5}),
        "is upstream DLRM's checkpoint (state_dict, opt_state_dict, nepochs",
    ),
    "upstream_numpy": (  # with --mlperf-logging, upstream stores numpy metrics
        lambda tmp: _saved(tmp / "upstream_numpy.pt", {**UPSTREAM_LAYOUT, "test_auc": np.float64(0.5)}),
        "is upstream DLRM's checkpoint",
    ),
    "foreign": (
        lambda tmp: _saved(tmp / "foreign.pt", {"state_dict": {"w": torch.zeros(2)}}),
        "not a dlrm-mlet checkpoint",
    ),
    "newer": (
        lambda tmp: _saved(tmp / "newer.pt", {"format": FORMAT, "version": VERSION + 1}),
        f"checkpoint format {VERSION + 1}",
    ),
    "malformed": (
        lambda tmp: _saved(
            tmp / "malformed.pt",
            {**HEADER, "kind": "training", "model_config": {"dim": 4}, "model": {"tables.weight": torch.zeros(3, 4)}},
        ),
        "malformed checkpoint (no valid model_config)",
    ),
    "mismatched": (
        lambda tmp: _saved(
            tmp / "mismatched.pt",
            {
                **HEADER,
                "kind": "inference",
                "model_config": SMALL_CONFIG,
                "model": {"tables.weight": torch.zeros(3, 4)},
            },
        ),
        "malformed checkpoint (model_config describes tables of 15 x 4, the saved weight is 3 x 4)",
    ),
    "negative": (
        lambda tmp: _saved(
            tmp / "negative.pt",
            {
                **HEADER,
                "kind": "inference",
                "model_config": {**SMALL_CONFIG, "dim": -4},
                "model": {"tables.weight": torch.zeros(15, 4)},
            },
        ),
        "malformed checkpoint (model_config holds a size below 1)",
    ),
    "non_numeric": (  # a hand-edited config: a word where a size belongs
        lambda tmp: _saved(
            tmp / "non_numeric.pt",
            {
                **HEADER,
                "kind": "inference",
                "model_config": {**SMALL_CONFIG, "dim": "four"},
                "model": {"tables.weight": torch.zeros(15, 4)},
            },
        ),
        "malformed checkpoint (no valid model_config)",
    ),
    "non_numeric_threshold": (
        lambda tmp: _saved(
            tmp / "non_numeric_threshold.pt",
            {
                **HEADER,
                "kind": "inference",
                "model_config": {**SMALL_CONFIG, "qr_flag": True, "qr_threshold": "200"},
                "model": {"tables.weight": torch.zeros(15, 4)},
            },
        ),
        "malformed checkpoint (no valid model_config)",
    ),
}
"""Files that are not usable checkpoints: how to make each in a folder, and the message it gives."""


@pytest.mark.parametrize("case", list(BROKEN_FILES))
def test_bad_input_is_one_line_with_exit_2(case: str, tmp_path, capsys) -> None:
    make, message = BROKEN_FILES[case]
    path = make(tmp_path)
    for argv in (
        ["info", str(path)],
        ["collapse", str(path), str(tmp_path / "o.pt")],
        ["export-onnx", str(path), str(tmp_path / "o.onnx")],
    ):
        assert checkpoint.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"checkpoint.py: error: {path}: ") and message in err[0], err
    assert dlrm_mlet.main([f"--load-model={path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_checkpoints_saved_without_crc_load(checkpoint_runs, tmp_path) -> None:
    """torch writes CRC 0 when saving with compute_crc32 off: such members are not checked, the file loads."""
    from torch.utils.serialization import config

    ckpt = load_checkpoint(checkpoint_runs["baseline"])
    config.save.compute_crc32 = False
    try:
        torch.save(ckpt, tmp_path / "no_crc.pt")
    finally:
        config.save.compute_crc32 = True
    assert checkpoints.damaged_member(tmp_path / "no_crc.pt") is None
    assert torch.equal(
        load_checkpoint(tmp_path / "no_crc.pt")["model"]["tables.weight"], ckpt["model"]["tables.weight"]
    )


def test_weights_that_do_not_fit_the_config_are_one_line(checkpoint_runs, tmp_path, capsys) -> None:
    ckpt = load_checkpoint(checkpoint_runs["mlet"])
    ckpt["model"]["top.0.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    for argv in (["collapse", str(bad), str(tmp_path / "o.pt")], ["export-onnx", str(bad), str(tmp_path / "o.onnx")]):
        assert checkpoint.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(
            f"checkpoint.py: error: {bad}: the weights do not fit the checkpoint's model_config "
            "(size mismatch for top.0.weight"
        )


def _shape_and_missing(model: dict) -> None:
    model["top.0.weight"] = torch.zeros(3, 3)
    del model["bottom.0.bias"]


def _extra(model: dict) -> None:
    model["extra.weight"] = torch.zeros(2)


@pytest.mark.parametrize("source", ["mlet", "mlet_collapsed", "int8"])
@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (_shape_and_missing, 'Missing key(s) in state_dict: "bottom.0.bias"; size mismatch for top.0.weight: '),
        (_extra, 'Unexpected key(s) in state_dict: "extra.weight")'),
    ],
)
def test_info_refuses_weights_that_do_not_fit_the_config(
    source, edit, named, checkpoint_runs, tmp_path, capsys
) -> None:
    """``info`` printed a hand-edited file's report (exit 0) that collapse, quantize, export-onnx and --load-model
    refuse; it refuses it the same way, in one line naming the file."""
    path = checkpoint_runs.get(source)
    if path is None:
        path = tmp_path / "q8.pt"
        assert checkpoint.main(["quantize", str(checkpoint_runs["mlet_collapsed"]), str(path), "--bits=8"]) == 0
        capsys.readouterr()
    assert checkpoint.main(["info", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"file        {path} (")
    ckpt = load_checkpoint(path)
    edit(ckpt["model"])
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    for argv in (["info", str(bad)], ["info", "--json", str(bad)]):
        assert checkpoint.main(argv) == 2
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert out == "" and len(lines) == 1, lines
        assert lines[0].startswith(f"checkpoint.py: error: {bad}: the weights") and named in lines[0], lines
        assert "do not fit the checkpoint's model_config" in lines[0]


@pytest.mark.parametrize("bits", [None, 8])
def test_collapse_refuses_an_inference_checkpoint_whose_weights_do_not_fit(
    bits, checkpoint_runs, tmp_path, capsys
) -> None:
    """An inference checkpoint is copied unchanged; one that cannot be built is refused, not copied as usable."""
    source = checkpoint_runs["mlet_collapsed"]
    if bits is not None:
        source = tmp_path / "q.pt"
        assert checkpoint.main(["quantize", str(checkpoint_runs["mlet_collapsed"]), str(source), f"--bits={bits}"]) == 0
    ckpt = load_checkpoint(source)
    ckpt["model"]["top.0.weight"] = torch.zeros(3, 3)
    bad, out = tmp_path / "bad.pt", tmp_path / "o.pt"
    torch.save(ckpt, bad)
    capsys.readouterr()
    assert checkpoint.main(["collapse", str(bad), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"checkpoint.py: error: {bad}: the ") and "top.0.weight" in err[0]
    assert not out.exists()


def test_command_line_usage_errors_are_one_line(capsys) -> None:
    for argv in ([], ["frobnicate"], ["info"], ["collapse", "only-one"]):
        with pytest.raises(SystemExit) as exit_:
            checkpoint.main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("checkpoint.py")


@pytest.mark.parametrize(
    ("command", "extra"), [("collapse", []), ("quantize", ["--bits=8"]), ("export-onnx", ["--no-verify"])]
)
@pytest.mark.parametrize("alias", ["same", "dotted", "symlink"])
def test_commands_refuse_to_write_over_their_input(command, extra, alias, checkpoint_runs, tmp_path, capsys) -> None:
    source = checkpoint_runs["mlet_collapsed" if command == "quantize" else "mlet"]
    target = tmp_path / "t.pt"
    target.write_bytes(source.read_bytes())
    out = {"same": target, "dotted": tmp_path / "." / "t.pt", "symlink": tmp_path / "link.pt"}[alias]
    if alias == "symlink":
        out.symlink_to(target)
    assert checkpoint.main([command, str(target), str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"checkpoint.py: error: OUT {out}: same file as IN; one would overwrite the other"]
    assert target.read_bytes() == source.read_bytes()


def test_export_onnx_refuses_external_data_over_its_input(checkpoint_runs, tmp_path, capsys) -> None:
    target = tmp_path / "m.onnx.data"  # a checkpoint that OUT's external data (OUT.data) would replace
    target.write_bytes(checkpoint_runs["mlet"].read_bytes())
    assert checkpoint.main(["export-onnx", str(target), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    line = f"checkpoint.py: error: OUT (external data) {target}: same file as IN; one would overwrite the other"
    assert err == [line]
    assert not (tmp_path / "m.onnx").exists()


def test_collapse_reports_the_input_size_before_writing(checkpoint_runs, tmp_path, capsys) -> None:
    assert checkpoint.main(["collapse", str(checkpoint_runs["mlet"]), str(tmp_path / "c.pt")]) == 0
    before, after = checkpoint_runs["mlet"].stat().st_size, (tmp_path / "c.pt").stat().st_size
    assert f"{checkpoint.mib(before)} -> {checkpoint.mib(after)}" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["collapse", "export-onnx"])
def test_output_under_a_file_is_one_line(command: str, checkpoint_runs, tmp_path, capsys) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    assert checkpoint.main([command, str(checkpoint_runs["mlet"]), str(a_file / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"checkpoint.py: error: OUT {a_file / 'out'}: {a_file} is a file, not a folder"]


def test_collapse_of_an_inference_checkpoint_says_so(checkpoint_runs, tmp_path, capsys) -> None:
    out = tmp_path / "again.pt"
    assert checkpoint.main(["collapse", str(checkpoint_runs["mlet_collapsed"]), str(out)]) == 0
    assert "already an inference checkpoint" in capsys.readouterr().out
    assert torch.equal(
        load_checkpoint(out)["model"]["tables.weight"],
        load_checkpoint(checkpoint_runs["mlet_collapsed"])["model"]["tables.weight"],
    )
