"""The sweep orchestrator (with a fake trainer) and the summaries it feeds."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from helpers import FakeTrainer, fake_payload, make_settings, sample_file

from mlet.core.errors import UserError
from mlet.repro import summary as summarize
from mlet.repro import sweep, sweep_plan
from mlet.repro.experiments import Config, RunSpec
from mlet.repro.protocols import select
from mlet.repro.run_results import load_run_dir


def lrs_run(run_dir: Path) -> dict[str, list[float]]:
    return {
        c.label: sorted({r.spec.lr for r in load_run_dir(run_dir) if r.spec.config == c})
        for c in (Config(2), Config(8), Config(2, 16))
    }


def test_grid_widens_until_the_best_rate_is_interior(tmp_path) -> None:
    settings = make_settings(tmp_path)
    trainer = FakeTrainer(peak=3.2)
    totals = sweep.sweep(settings, runner=trainer)
    # initial 0.2, 0.8; 0.8 best -> 3.2; 3.2 best -> 12.8; 3.2 interior: stop
    assert lrs_run(tmp_path) == {label: [0.2, 0.8, 3.2, 12.8] for label in ("base_d2", "base_d8", "mlet_d2_k16")}
    assert totals == {"finished": 3 * 4 * 2, "failed": 0, "skipped": 0}
    assert len(trainer.calls) == len(set(trainer.calls)) == 24
    tuned = select(load_run_dir(tmp_path), "tuned", settings.paper_lrs)
    assert {s.lr for s in tuned} == {3.2} and not any(s.at_edge for s in tuned)


def test_widening_stops_at_the_limit_and_reports_the_edge(tmp_path) -> None:
    settings = make_settings(tmp_path, "--max-widen", "1")
    sweep.sweep(settings, runner=FakeTrainer(peak=1000.0))
    assert lrs_run(tmp_path)["base_d2"] == [0.2, 0.8, 3.2]
    assert all(s.at_edge and s.lr == 3.2 for s in select(load_run_dir(tmp_path), "tuned", {}))


def test_finished_runs_are_skipped_and_missing_ones_rerun(tmp_path) -> None:
    settings = make_settings(tmp_path, "--protocols", "paper")
    first = FakeTrainer()
    sweep.sweep(settings, runner=first)
    assert sorted(first.calls) == sorted(
        f"sgd_{c}_lr0.2_s{s}" for c in ("base_d2", "base_d8", "mlet_d2_k16") for s in (1, 2)
    )
    again = FakeTrainer()
    assert sweep.sweep(settings, runner=again) == {"finished": 0, "failed": 0, "skipped": 6} and again.calls == []
    (tmp_path / "results" / "sgd_base_d8_lr0.2_s2.json").unlink()  # as if interrupted before this run ended
    resumed = FakeTrainer()
    sweep.sweep(settings, runner=resumed)
    assert resumed.calls == ["sgd_base_d8_lr0.2_s2"]
    manifest = json.loads((tmp_path / "sweep.json").read_text())
    assert len(manifest["sessions"]) == 3 and manifest["settings"]["paper_lrs"] == {
        "sgd": 0.2,
        "adagrad": 0.05,
        "adam": 0.001,
    }


def test_a_failed_run_is_not_retried_in_its_session_and_is_in_the_next(tmp_path) -> None:
    settings = make_settings(tmp_path)
    bad = "sgd_base_d2_lr3.2_s1"  # a widened run
    trainer = FakeTrainer(fail={bad})
    totals = sweep.sweep(settings, runner=trainer)
    assert totals["failed"] == 1 and trainer.calls.count(bad) == 1
    assert lrs_run(tmp_path)["base_d2"] == [0.2, 0.8, 3.2]  # no decision on base_d2 beyond 3.2 without its seed 1
    assert json.loads((tmp_path / "sweep.json").read_text())["runs"][bad]["status"].startswith("failed")
    retry = FakeTrainer()
    sweep.sweep(settings, runner=retry)
    assert retry.calls[0] == bad and lrs_run(tmp_path)["base_d2"] == [0.2, 0.8, 3.2, 12.8]


def test_run_flags_and_bad_command_lines(tmp_path) -> None:
    settings = make_settings(tmp_path, "--checkpoints", "paper", "--mlp-bot-prefix", "13-32")
    argv = sweep_plan.run_argv(RunSpec("sgd", Config(4, 64), 0.2, 1), settings, test_freq=7)
    for flag in (
        "--arch-sparse-feature-size=4",
        "--arch-mlp-bot=13-32-4",
        "--mlet-hidden=64",
        "--optimizer=sgd",
        "--learning-rate=0.2",
        "--numpy-rand-seed=1",
        "--test-freq=7",
    ):
        assert flag in argv
    assert f"--results-json={tmp_path / 'results' / 'sgd_mlet_d4_k64_lr0.2_s1.json'}" in argv
    assert any(a.startswith("--save-collapsed=") for a in argv)
    assert not any(
        a.startswith("--save-collapsed=")
        for a in sweep_plan.run_argv(RunSpec("sgd", Config(4, 64), 0.8, 1), settings, None)
    )
    narrow = make_settings(tmp_path, "--checkpoints", "paper", "--checkpoint-dims", "2")
    assert sweep_plan.wants_checkpoint(
        RunSpec("sgd", Config(2, 16), 0.2, 1), narrow
    ) and not sweep_plan.wants_checkpoint(RunSpec("sgd", Config(8), 0.2, 1), narrow)
    parser = sweep.build_parser()
    for bad, named in [
        (["--", "--learning-rate=0.1"], "--learning-rate"),
        (["--lrs", "sgd=fast"], "--lrs"),
        (["--paper-lr", "sgd=0.1,0.2"], "--paper-lr"),
        (["--jobs", "0"], "--jobs"),
        (["--max-widen", "-1"], "--max-widen"),
        (["--run-dir", str(Path(__file__))], "--run-dir"),
        (["--baseline-dims", "0"], "--baseline-dims"),
        (["--lrs", "sgdd=0.1,0.2"], "--lrs: unknown optimizer 'sgdd'"),
        (["--paper-lr", "adagard=0.1"], "--paper-lr: unknown optimizer 'adagard'"),
    ]:
        with pytest.raises(UserError, match=named):
            sweep.settings_from_args(parser.parse_args(["--run-dir", str(tmp_path), *bad]))


def test_summarize_writes_the_headline_table_and_plots(tmp_path) -> None:
    settings = make_settings(tmp_path)
    sweep.sweep(settings, runner=FakeTrainer(peak=0.2))  # peak at the paper rate: the protocols agree
    text = summarize.summarize_sweep(tmp_path, tmp_path / "out", summarize.paper_lrs_of(tmp_path, [])).markdown
    for name in ("auc_vs_size.png", "auc_vs_step.png", "lr_curves.png", "summary.md", "summary.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    # MLET d=2 is as good as a plain d=8 in the fake trainer (+ nothing): it matches d=8 exactly -> 4x,
    # the widest baseline
    payload = json.loads((tmp_path / "out" / "summary.json").read_text())
    strict = [r for r in payload["reductions"] if r["rule"] == "strict"]
    assert {(r["protocol"], r["matched_dim"], r["factor"], r["lower_bound"]) for r in strict} == {
        ("paper", 8, 4.0, True),
        ("tuned", 8, 4.0, True),
    }
    base8 = next(s for s in payload["selections"] if s["protocol"] == "paper" and s["config"] == "base_d8")
    # the fake trainer's AUC at the peak rate: 0.70 + 0.01 * log2(8) + 0.0005 * seed, seeds 1 and 2
    assert base8["test_auc_mean"] == pytest.approx(0.73075) and base8["test_auc_std"] == pytest.approx(
        0.0005 / math.sqrt(2)
    )
    assert (
        base8["val_auc_mean"] == pytest.approx(0.72975)
        and base8["seeds"] == [1, 2]
        and base8["lrs_tried"] == [0.05, 0.2, 0.8]
    )
    assert "| paper | sgd | d=2 K=16 | >= 4x (d=8) | 4.00 ± 0.00 (n=2) |" in text
    assert "| paper | sgd | baseline d=8 | 0.2 | 2 | 0.7308 ± 0.0004 |" in text
    assert "| tuned | sgd | MLET d=2 K=16 | 0.2 | 2 |" in text


def test_summarize_command_line(tmp_path, capsys) -> None:
    sweep.sweep(make_settings(tmp_path, "--protocols", "paper"), runner=FakeTrainer())
    files = sorted((tmp_path / "results").glob("*.json"))
    assert summarize.main([str(f) for f in files[:2]]) == 0
    assert "| run | tables | d | test AUC |" in capsys.readouterr().out
    assert summarize.main([str(tmp_path / "nothing")]) == 2
    assert "no such results file" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert summarize.main([str(tmp_path / "bad.json")]) == 2
    assert "not a dlrm_mlet.py results JSON" in capsys.readouterr().err
    assert summarize.main([str(tmp_path / "results")]) == 2  # a directory that is not a sweep: its own is named
    assert f"not a sweep directory (no sweep.json); {tmp_path} is: give that" in capsys.readouterr().err
    (tmp_path / "other" / "empty").mkdir(parents=True)  # outside any sweep, no JSONs
    assert summarize.main([str(tmp_path / "other" / "empty")]) == 2
    assert "no results JSONs" in capsys.readouterr().err


def test_a_run_dir_of_other_training_flags_is_refused_naming_the_differences(tmp_path) -> None:
    sweep.sweep(make_settings(tmp_path, "--protocols", "paper"), runner=FakeTrainer())
    sweep.check_run_dir(make_settings(tmp_path, "--protocols", "paper", "--seeds", "1", "2", "3"))  # a wider grid: fine
    other = sweep.settings_from_args(
        sweep.build_parser().parse_args(
            ["--run-dir", str(tmp_path), "--", "--data-generation=random", "--mini-batch-size=64", "--use-gpu"]
        )
    )
    with pytest.raises(UserError) as refused:
        sweep.check_run_dir(other)
    assert str(refused.value) == (
        f"--run-dir {tmp_path}: its runs were trained otherwise: --data-generation=random where it had "
        "--data-generation=synthetic; this sweep adds --mini-batch-size=64; this sweep adds --use-gpu; finished runs "
        "would be taken for this sweep's: give another --run-dir (or the same flags)"
    )
    with pytest.raises(UserError, match=r"=64; --device cuda:1 where it had --device cpu; finished"):
        sweep.check_run_dir(other, sources={"--use-gpu": ("--device cuda:1", "--device cpu")})
    with pytest.raises(UserError, match=r"otherwise: --mlp-bot-prefix 13-32 where it had 13-512-256-64; finished"):
        sweep.check_run_dir(make_settings(tmp_path, "--protocols", "paper", "--mlp-bot-prefix", "13-32"))
    fewer = make_settings(tmp_path, "--protocols", "paper")
    fewer.train_flags = []
    with pytest.raises(UserError, match=r"otherwise: this sweep leaves out --data-generation=synthetic; finished"):
        sweep.check_run_dir(fewer)


def test_an_interrupted_sweep_closes_its_session(tmp_path, monkeypatch, capsys) -> None:
    def interrupted(spec: RunSpec, argv: list[str], log: Path) -> int:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep.sweep(make_settings(tmp_path, "--protocols", "paper"), runner=interrupted)
    session = json.loads((tmp_path / "sweep.json").read_text())["sessions"][-1]
    assert "ended" in session and "wall_seconds" in session
    monkeypatch.setattr(sweep, "subprocess_runner", lambda threads: interrupted)
    argv = [
        "--run-dir",
        str(tmp_path / "cli"),
        "--protocols",
        "paper",
        "--baseline-dims",
        "2",
        "--mlet-dims",
        "--seeds",
        "1",
    ]
    assert (
        sweep.main(
            [
                *argv,
                "--",
                "--data-generation=synthetic",
                "--arch-embedding-size=20-10",
                "--data-size=64",
                "--mini-batch-size=32",
            ]
        )
        == 130
    )
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == "sweep.py: interrupted; finished runs are kept, the same command continues with the rest"
    )


@pytest.mark.parametrize(
    ("train_flags", "message"),
    [
        (
            ["--data-generation=synthetic"],
            "--protocols tuned: needs a data set's validation split; --data-generation=synthetic has none",
        ),
        (["--data-generation=synthetic", "--eval-split=val"], "--protocols tuned: needs a data set's validation split"),
    ],
)
def test_the_tuned_protocol_needs_a_validation_split(train_flags: list[str], message: str, tmp_path, capsys) -> None:
    argv = [
        "--run-dir",
        str(tmp_path),
        "--baseline-dims",
        "2",
        "--mlet-dims",
        "--seeds",
        "1",
        "--dry-run",
        "--",
        *train_flags,
    ]
    assert sweep.main([*argv, "--arch-embedding-size=20-10", "--data-size=64"]) == 2
    assert message in capsys.readouterr().err


def test_tuned_selection_needs_validation_metrics(tmp_path) -> None:
    sweep.sweep(make_settings(tmp_path), runner=FakeTrainer())
    results = load_run_dir(tmp_path)
    assert select(results, "tuned", {})
    for r in results:
        r.val_auc = math.nan  # as runs without a validation split
    assert select(results, "tuned", {}) == []


def test_summarize_keeps_to_the_sweep_and_says_what_is_missing_or_left_out(tmp_path) -> None:
    settings = make_settings(tmp_path, "--protocols", "paper")
    sweep.sweep(settings, runner=FakeTrainer())
    results = tmp_path / "results"
    stray = json.loads((results / "sgd_base_d2_lr0.2_s2.json").read_text())
    stray["args"]["numpy_rand_seed"] = 3
    stray["final"]["auc"] = 0.99
    (results / "sgd_base_d2_lr0.2_s3.json").write_text(json.dumps(stray))  # a seed the sweep did not run
    (results / "sgd_base_d8_lr0.2_s1.json").unlink()
    text = summarize.summarize_sweep(
        tmp_path, tmp_path / "out", summarize.paper_lrs_of(tmp_path, []), plots=False
    ).markdown
    assert (
        "**left out** (not in sweep.json's optimizers, configs or seeds): 1 results, e.g. sgd_base_d2_lr0.2_s3" in text
    )
    assert "**incomplete**: 1 runs of the sweep's grid have no results yet (e.g. sgd_base_d8_lr0.2_s1)" in text
    assert "0.99" not in text


def test_summarize_refuses_runs_of_other_flags_and_an_out_file(tmp_path, capsys) -> None:
    sweep.sweep(make_settings(tmp_path, "--protocols", "paper"), runner=FakeTrainer())
    odd = tmp_path / "results" / "sgd_base_d8_lr0.2_s2.json"
    payload = json.loads(odd.read_text())
    payload["args"]["nepochs"] = 5
    odd.write_text(json.dumps(payload))
    assert summarize.main([str(tmp_path), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert f"{odd}: trained with other flags than" in err and "(--nepochs: 5 against 1)" in err
    payload["args"]["nepochs"] = 1
    odd.write_text(json.dumps(payload))
    (tmp_path / "afile").write_text("x")
    assert summarize.main([str(tmp_path), "--no-plots", "--out", str(tmp_path / "afile")]) == 2
    assert f"--out {tmp_path / 'afile'}: is a file; give a folder" in capsys.readouterr().err


def test_a_diverged_run_is_recorded_as_such(tmp_path) -> None:
    class Diverging(FakeTrainer):
        def __call__(self, spec: RunSpec, argv: list[str], log: Path) -> int:
            code = super().__call__(spec, argv, log)
            out = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("--results-json=")))
            payload = json.loads(out.read_text())
            payload["final"]["auc"] = None  # what dlrm_mlet.py writes for non-finite predictions
            out.write_text(json.dumps(payload))
            return code

    sweep.sweep(make_settings(tmp_path, "--protocols", "paper"), runner=Diverging())
    runs = json.loads((tmp_path / "sweep.json").read_text())["runs"]
    assert {r["status"] for r in runs.values()} == {"finished (diverged: non-finite metrics)"}


def method_payload(spec: RunSpec, argv: list[str]) -> dict:
    """``fake_payload`` for any method, with the flags the sweep passed and quantized variants when asked."""
    payload = fake_payload(spec, 0.8)
    c = spec.config
    share = {"": 1.0, "qr": 0.25, "md": 0.3}[c.method]  # the method's bytes against the baseline at the same d
    payload["parameters"]["embedding_inference_bytes"] = int(400 * c.dim * share)
    flags = dict(a.removeprefix("--").split("=", 1) if "=" in a else (a.removeprefix("--"), "true") for a in argv)
    payload["args"] |= {
        "qr_flag": flags.get("qr-flag") == "true",
        "qr_collisions": int(flags.get("qr-collisions", 4)),
        "md_flag": flags.get("md-flag") == "true",
        "md_temperature": float(flags.get("md-temperature", 0.3)),
    }
    bits = [int(b) for b in flags.get("quantize-emb-with-bit", "32").split("-") if b != "32"]
    payload["quantized"] = [
        {
            "bits": b,
            "final": {**payload["final"], "auc": payload["final"]["auc"] - (0.0005 if b == 8 else 0.004)},
            "val": payload["val"],
            "parameters": {"embedding_inference_bytes": payload["parameters"]["embedding_inference_bytes"] * b // 32},
        }
        for b in bits
    ]
    return payload


def test_every_method_is_run_quantized_and_compared(tmp_path) -> None:
    """QR, MD and MLET with each go through the sweep with their flags; every run is also evaluated with int8 and
    int4 tables; the summary's Pareto table and frontier compare them all."""
    settings = make_settings(
        tmp_path,
        "--protocols",
        "paper",
        "--qr-dims",
        "8",
        "--mlet-qr-dims",
        "2",
        "--md-dims",
        "8",
        "--mlet-md-dims",
        "8",
        "--md-temperatures",
        "0.25",
        "--quantize-bits",
        "8",
        "4",
        "--checkpoints",
        "paper",
    )
    labels = [c.label for c in settings.configs]
    assert labels[3:] == ["qr_d8_c4", "mlet_qr_d2_k16_c4", "md_d8_t0.25", "mlet_md_d8_k16_t0.25"]
    argvs = {}

    def trainer(spec: RunSpec, argv: list[str], log: Path) -> int:
        argvs[spec.name] = argv
        out = next(a.split("=", 1)[1] for a in argv if a.startswith("--results-json="))
        Path(out).write_text(json.dumps(method_payload(spec, argv)))
        return 0

    sweep.sweep(settings, runner=trainer)
    qr = argvs["sgd_mlet_qr_d2_k16_c4_lr0.2_s1"]
    assert {"--qr-flag", "--qr-collisions=4", "--mlet-hidden=16", "--quantize-emb-with-bit=8-4"} <= set(qr)
    assert {"--md-flag", "--md-temperature=0.25"} <= set(argvs["sgd_md_d8_t0.25_lr0.2_s1"])
    assert not any(a.startswith(("--qr", "--md")) for a in argvs["sgd_base_d8_lr0.2_s1"])
    saved = {name for name, argv in argvs.items() if any(a.startswith("--save-collapsed") for a in argv)}
    assert saved == {"sgd_base_d2_lr0.2_s1", "sgd_base_d8_lr0.2_s1", "sgd_mlet_d2_k16_lr0.2_s1"}  # not QR/MD
    markdown = summarize.summarize_sweep(tmp_path, tmp_path, {"sgd": 0.2}, plots=True).markdown
    assert (tmp_path / "pareto.png").stat().st_size > 10_000
    assert plt.get_fignums() == []  # every figure closed once written: they were all kept open
    table = markdown.split("## All methods")[1].split("**tuned protocol")[0]
    # the level: baseline d=8's AUC; QR d=8 has its AUC (fake) at a quarter of its bytes; the quantized copies
    # lose a little AUC (fake: 0.0005 int8, 0.004 int4) and miss the level, except those of the wider MLET models
    assert "| baseline | d=8: 3.12 KiB (1x) |" in table
    assert "| QR c=4 | d=8: 800 B (4x) |" in table and "| QR c=4 int8 | - |" in table
    assert "| MLET K=16 + QR c=4 | d=2: 200 B (16x) |" in table
    assert "| MLET K=16 + MD a=0.25 int4 | d=8: 120 B (27x) |" in table
    rows = [line.split(" | ")[0].strip("| ") for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows.index("MLET K=16") < rows.index("QR c=4") < rows.index("MD a=0.25") < rows.index("MLET K=16 + QR c=4")
    methods = json.loads((tmp_path / "summary.json").read_text())["methods"]
    assert {p["bits"] for p in methods["points"]} == {32, 8, 4}
    frontier = methods["frontier"]["paper/sgd"]
    assert [p["inference_embedding_bytes"] for p in frontier] == sorted(
        p["inference_embedding_bytes"] for p in frontier
    )
    assert all(b["test_auc_mean"] > a["test_auc_mean"] for a, b in itertools.pairwise(frontier))


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("13-x", "--mlp-bot-prefix: expected dash-separated integers, got '13-x'"),
        (
            "12-64",
            "--mlp-bot-prefix: must start with 13 for kaggle (the 13 counts I1-I13), got '12-64' "
            "(each run's --arch-mlp-bot is it with d appended: 12-64-4)",
        ),
    ],
)
def test_a_bad_bottom_mlp_prefix_is_named_as_typed(prefix: str, message: str, tmp_path, capsys) -> None:
    argv = ["--run-dir", str(tmp_path / "run"), "--dry-run", "--baseline-dims", "4", "--mlet-dims",
            "--mlp-bot-prefix", prefix, "--", "--data-generation=dataset", "--data-set=kaggle",
            f"--raw-data-file={sample_file('criteo_kaggle_train_head1999.txt')}",
            f"--processed-data-file={tmp_path / 'processed'}"]  # fmt: skip
    assert sweep.main(argv) == 2
    assert capsys.readouterr().err == f"sweep.py: error: {message}\n"


def test_a_dry_run_reads_no_data_and_writes_nothing(tmp_path, capsys) -> None:
    raw = tmp_path / "train.txt"
    raw.write_bytes(sample_file("criteo_kaggle_train_head1999.txt").read_bytes())
    before = sorted(tmp_path.rglob("*"))
    argv = ["--run-dir", str(tmp_path / "run"), "--dry-run", "--baseline-dims", "4", "--mlet-dims", "--seeds", "1",
            "--optimizers", "sgd", "--", "--data-generation=dataset", "--data-set=kaggle", f"--raw-data-file={raw}",
            f"--processed-data-file={tmp_path / 'processed'}"]  # fmt: skip
    assert sweep.main(argv) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["sgd_base_d4_lr0.05_s1", "sgd_base_d4_lr0.2_s1",
                                                        "sgd_base_d4_lr0.8_s1"]  # fmt: skip
    assert sorted(tmp_path.rglob("*")) == before  # no processed data, no run folder
    raw.unlink()  # listing needs no data: a missing raw file is noted, not refused
    assert sweep.main(argv) == 0
    assert f"sweep.py: --raw-data-file: {raw}: no such file (a run would need it" in capsys.readouterr().out


def test_a_grid_that_leaves_out_earlier_seeds_or_configs_warns_that_the_summary_will(tmp_path, capsys) -> None:
    # A trial added a seed with '--seeds 6' to a directory of seeds 1-5: sweep.json then held seeds [6] only, and
    # the summary left the 70 earlier runs out, with no word from the sweep that it would.
    sweep.sweep(make_settings(tmp_path, "--protocols", "paper"), runner=FakeTrainer())
    capsys.readouterr()
    argv = ["--run-dir", str(tmp_path), "--baseline-dims", "2", "--mlet-dims", "--seeds", "3", "--optimizers", "sgd"]
    argv += ["--lrs", "sgd=0.2,0.8", "--paper-lr", "sgd=0.2", "--max-widen", "3", "--protocols", "paper"]
    assert sweep.main([*argv, "--dry-run", "--", "--data-generation=synthetic"]) == 0
    err = capsys.readouterr().err
    assert err == (
        f"sweep.py: warning: --run-dir {tmp_path}: this grid leaves out seeds 1, 2 and configs base_d8, mlet_d2_k16 "
        "of the last one; summarize.py follows this grid and leaves their runs out (give them again to keep them)\n"
    )
    grid = ["--baseline-dims", "2", "8", "--mlet-dims", "2", "--mlet-hidden", "16", "--seeds", "1", "2", "3"]
    wider = [*argv[:2], *grid, *argv[7:]]
    assert sweep.main([*wider, "--dry-run", "--", "--data-generation=synthetic"]) == 0  # a grid that grows: no word
    assert capsys.readouterr().err == ""
