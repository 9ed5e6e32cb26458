"""scripts/summarize.py on results files and on sweeps whose grid leaves something out: labels, refusals, notes."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import fake_payload

from mlet.core.config import ModelConfig
from mlet.repro import summary as summarize
from mlet.repro import sweep
from mlet.repro.experiments import Config, RunSpec

# Three tables of 1000, 500 and 20 rows at d=4: 1520 rows, so 1520 * 4 * 4 bytes in float32, 1520 * (4 + 8) in
# int8 (d bytes, float32 scale and bias) and 1520 * (2 + 4) in int4 (d/2 bytes, float16 scale and bias).
TABLES = (1000, 500, 20)
SERVED = {None: 24320, 8: 18240, 4: 9120}


def write(path: Path, payload: dict) -> Path:
    path.write_text(json.dumps(payload))
    return path


def trained(config: Config, **flags: object) -> dict:
    """A training run's results JSON with the method's flags recorded as dlrm_mlet.py records them."""
    payload = fake_payload(RunSpec("sgd", config, 0.2, 1), 0.2)
    payload["args"] |= {
        "qr_flag": config.method == "qr",
        "qr_collisions": config.collisions or 4,
        "md_flag": config.method == "md",
        "md_temperature": config.temperature or 0.3,
        **flags,
    }
    return payload


def evaluation(bits: int | None, trained_hidden: int, **flags: object) -> dict:
    """``--inference-only`` of a collapsed (``bits`` None) or quantized checkpoint of a model trained with MLET of
    ``trained_hidden``: the model as built (collapsed, plain tables) and its served bytes; the evaluation's flags
    need not repeat the trained ones."""
    payload = trained(Config(4), inference_only=True, **flags)
    payload["model_config"] = ModelConfig(table_sizes=TABLES, dim=4, bottom_mlp=(13, 16, 4), top_mlp=(16, 1)).to_dict()
    payload["parameters"]["embedding_inference_bytes"] = SERVED[bits]
    payload["checkpoint"] = {"path": "m.pt", "kind": "inference", "trained_mlet_hidden": trained_hidden}
    return payload


def table_rows(out: str) -> dict[str, list[str]]:
    """The printed table's rows by run name: their cells."""
    rows = [line.strip("| ").split(" | ") for line in out.splitlines() if line.startswith("| ")]
    return {cells[0]: cells[1:] for cells in rows[1:]}


def test_results_files_are_labelled_by_method_and_precision_as_in_the_sweep_summary(tmp_path, capsys) -> None:
    files = {
        "qr": trained(Config(4, 0, "qr", collisions=4)),
        "md": trained(Config(4, 0, "md", temperature=0.3)),
        "mletqr": trained(Config(4, 16, "qr", collisions=4)),
        "mletmd": trained(Config(4, 16, "md", temperature=0.25)),
        "plain": trained(Config(4)),
        "ev_q8": evaluation(8, 16, mlet_hidden=16),
        "ev_q4": evaluation(4, 16, mlet_hidden=0),  # the flags of the evaluation need not name MLET
        "ev_c": evaluation(None, 16),
        "ev_plain_q8": evaluation(8, 0),
    }
    paths = [str(write(tmp_path / f"{name}.json", payload)) for name, payload in files.items()]
    assert summarize.main(paths) == 0
    rows = table_rows(capsys.readouterr().out)
    assert {name: cells[0] for name, cells in rows.items()} == {
        "qr": "QR c=4",
        "md": "MD a=0.3",
        "mletqr": "MLET K=16 + QR c=4",
        "mletmd": "MLET K=16 + MD a=0.25",
        "plain": "baseline",
        "ev_q8": "MLET K=16 int8",
        "ev_q4": "MLET K=16 int4",
        "ev_c": "MLET K=16",
        "ev_plain_q8": "baseline int8",
    }
    assert rows["ev_q8"][5] == "17.8 KiB" and rows["ev_c"][5] == "23.8 KiB"


def test_an_evaluation_is_labelled_by_its_recorded_bits(tmp_path, capsys) -> None:
    """Results written since the bits are recorded (``served_bits``) are labelled by them, not by the bytes."""
    recorded = evaluation(8, 16) | {"served_bits": 4}  # the bytes alone would say int8
    floats = evaluation(8, 16) | {"served_bits": None}
    paths = [str(write(tmp_path / f"{name}.json", p)) for name, p in (("recorded", recorded), ("floats", floats))]
    assert summarize.main(paths) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows["recorded"][0] == "MLET K=16 int4" and rows["floats"][0] == "MLET K=16"


def test_results_files_show_the_int8_and_int4_evaluations_of_a_training_run(tmp_path, capsys) -> None:
    payload = trained(Config(4, 16))
    payload["quantized"] = [
        {"bits": b, "final": {"auc": auc}, "val": {}, "parameters": {"embedding_inference_bytes": 10}}
        for b, auc in ((8, 0.7123), (4, 0.7001))
    ]
    assert summarize.main([str(write(tmp_path / "run.json", payload))]) == 0
    assert table_rows(capsys.readouterr().out)["run"][-1] == "0.7123 / 0.7001"


class FakeTrainer:
    """Stands in for dlrm_mlet.py in a sweep: writes each run's results JSON (AUC peaking at the rate 3.2)."""

    def __call__(self, spec: RunSpec, argv: list[str], log: Path) -> int:
        out = next(a.split("=", 1)[1] for a in argv if a.startswith("--results-json="))
        Path(out).write_text(json.dumps(fake_payload(spec, 3.2)))
        return 0


def run_sweep(run_dir: Path, *flags: str) -> None:
    """A small sweep (SGD, seed 1, MLET K=16 at d=2) of the fake trainer; ``flags``: more sweep.py flags."""
    argv = ["--run-dir", str(run_dir), "--mlet-dims", "2", "--mlet-hidden", "16", "--seeds", "1"]
    argv += ["--optimizers", "sgd", "--max-widen", "3", *flags, "--", "--data-generation=synthetic"]
    sweep.sweep(sweep.settings_from_args(sweep.build_parser().parse_args(argv)), runner=FakeTrainer())


def test_a_paper_rate_asked_for_that_no_run_used_is_refused(tmp_path, capsys) -> None:
    run_sweep(tmp_path, "--baseline-dims", "2", "8", "--lrs", "sgd=0.2,0.8", "--paper-lr", "sgd=0.2")
    capsys.readouterr()
    out = tmp_path / "o3"
    assert summarize.main([str(tmp_path), "--paper-lr", "sgd=0.5", "--no-plots", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        "summarize.py: error: --paper-lr sgd=0.5: no sgd runs at the paper rate 0.5 (rates run: 0.2, 0.8, 3.2, 12.8)\n"
    )
    assert not out.exists()
    assert summarize.main([str(tmp_path), "--paper-lr", "adam=0.001", "--no-plots", "--out", str(out)]) == 2
    assert "--paper-lr adam=...: the sweep has no adam runs (it ran sgd)" in capsys.readouterr().err
    assert summarize.main([str(tmp_path), "--paper-lr", "sgd=0.8", "--no-plots", "--out", str(out)]) == 0
    assert "| paper | sgd | baseline d=8 | 0.8 |" in (out / "summary.md").read_text()


def test_a_sweep_that_never_ran_its_paper_rate_says_so(tmp_path, capsys) -> None:
    run_sweep(tmp_path, "--baseline-dims", "2", "8", "--protocols", "tuned", "--lrs", "sgd=0.8,3.2")
    capsys.readouterr()
    assert summarize.main([str(tmp_path), "--no-plots"]) == 0
    gap = "no sgd runs at the paper rate 0.2 (rates run: 0.8, 3.2, 12.8)"
    assert f"summarize.py: warning: {tmp_path}: {gap}: the summary has no paper rows for it" in capsys.readouterr().err
    markdown = (tmp_path / "summary.md").read_text()
    assert f"- **no paper rows**: {gap}" in markdown and "| paper |" not in markdown


def test_results_files_refuse_the_sweep_only_flags_and_a_directory_among_them(tmp_path, capsys) -> None:
    files = [str(write(tmp_path / f"{name}.json", trained(Config(4, k)))) for name, k in (("plain", 0), ("mlet", 16))]
    (tmp_path / "repro").mkdir()
    for argv, message in [
        ([*files, "--out", str(tmp_path / "sj")], "--out: only for a sweep directory; the table of results files is"),
        ([*files, "--paper-lr", "sgd=0.2"], "--paper-lr: only for a sweep directory"),
        (
            [str(tmp_path / "repro"), files[1]],
            f"{tmp_path / 'repro'}: a directory among 2 paths (give one sweep directory, or results JSON files, not",
        ),
        ([str(tmp_path / "none.json"), files[1]], f"{tmp_path / 'none.json'}: no such results file (give one"),
    ]:
        assert summarize.main(argv) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(f"summarize.py: error: {message}") and captured.err.count("\n") == 1
        assert captured.out == ""
    assert not (tmp_path / "sj").exists()


def test_the_all_methods_section_says_why_a_grid_without_wide_baselines_has_no_levels(tmp_path) -> None:
    run_sweep(tmp_path, "--baseline-dims", "2", "4", "--protocols", "paper", "--lrs", "sgd=0.2,0.8")
    markdown = summarize.summarize_sweep(tmp_path, tmp_path, {"sgd": 0.2}, plots=False).markdown
    section = markdown.split("## All methods")[1].split("Pareto frontier")[0]
    assert (
        "**paper protocol, sgd**: no AUC levels: no float baseline at d=8, 16, 32 or 64 has a finite AUC here "
        "(float baselines: d=2, d=4); the frontier below still compares every method"
    ) in section
    assert "| method |" not in section


def test_a_folder_inside_a_sweep_or_its_record_names_the_sweep_directory_to_give(tmp_path, capsys) -> None:
    # A user who gave RUN_DIR/results (it holds the JSONs), RUN_DIR/logs or RUN_DIR/sweep.json was told "no
    # results JSONs of the sweep in RUN_DIR/results/results (run scripts/sweep.py first)", or a KeyError.
    run_sweep(tmp_path / "sweep", "--protocols", "paper", "--lrs", "sgd=0.2")
    loose = tmp_path / "loose"
    loose.mkdir()
    write(loose / "a.json", trained(Config(4)))
    capsys.readouterr()
    for given, message in [
        ("sweep/results", f"not a sweep directory (no sweep.json); {tmp_path / 'sweep'} is: give that"),
        ("sweep/logs", f"not a sweep directory (no sweep.json); {tmp_path / 'sweep'} is: give that"),
        ("sweep/sweep.json", f"a sweep's record, not a results JSON: give its directory, {tmp_path / 'sweep'}"),
        ("loose", f"not a sweep directory (no sweep.json or results/); give its 1 results JSON as files ({loose}/*"),
    ]:
        assert summarize.main([str(tmp_path / given), "--no-plots"]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(f"summarize.py: error: {tmp_path / given}: {message}"), captured.err
        assert captured.err.count("\n") == 1
