"""Exact resume: an interrupted (or killed) run, resumed, ends where the uninterrupted run ends."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from helpers import LONG_RUN, ROOT, TINY, interrupt_after_save, run_cli
from helpers import RESUME_FLAGS as FLAGS

import dlrm_mlet
from mlet.training.checkpoints import load_checkpoint

TOTAL_ITERATIONS = 20


def assert_same_run(a: dict, b: dict) -> None:
    """Two final checkpoints hold the same weights, optimizer state, position and test history, bit for bit."""
    assert a["position"] == b["position"]
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys() and state_a
    for name in state_a:
        for key in state_a[name]:
            assert torch.equal(state_a[name][key], state_b[name][key]), (name, key)
    assert a["history"] == b["history"] and a["best"] == b["best"]
    assert a["train_samples"] == b["train_samples"] == TOTAL_ITERATIONS * 32


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[dict, dict]:
    """The uninterrupted run: its final checkpoint and results."""
    out = tmp_path_factory.mktemp("straight")
    code = dlrm_mlet.main([*FLAGS, f"--save-model={out / 'final.pt'}", f"--results-json={out / 'run.json'}"])
    assert code == 0
    return load_checkpoint(out / "final.pt"), json.loads((out / "run.json").read_text())


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "stop_at",
    [
        4,  # mid epoch 0
        10,  # last batch of epoch 0: saved before the end-of-epoch test
        15,  # mid epoch 1, right after a --test-freq test
    ],
)
@pytest.mark.slow
def test_interrupted_run_resumes_exactly(stop_at: int, straight, tmp_path, monkeypatch, capsys) -> None:
    ckpt = tmp_path / "run.pt"
    with monkeypatch.context() as patch:
        interrupt_after_save(patch, stop_at)
        code, _, _ = run_cli([*FLAGS, f"--save-model={ckpt}", f"--save-freq={stop_at}"], capsys)
    assert code == 130
    saved = load_checkpoint(ckpt)
    assert saved["position"]["iteration"] == stop_at
    assert saved["position"]["epoch"] == (stop_at - 1) // 10

    code, out, err = run_cli(
        [*FLAGS, f"--load-model={ckpt}", f"--save-model={ckpt}", f"--results-json={tmp_path / 'r.json'}"], capsys
    )
    assert code == 0, err
    assert f"resuming {ckpt} at epoch {saved['position']['epoch']}, batch {saved['position']['batch']}" in out
    assert "changed flags" not in out
    straight_ckpt, straight_results = straight
    assert_same_run(load_checkpoint(ckpt), straight_ckpt)
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["final"] == straight_results["final"] and results["best"] == straight_results["best"]
    assert results["iterations"] == TOTAL_ITERATIONS and [h["iteration"] for h in results["history"]] == [5, 10, 15, 20]


def test_more_epochs_extend_a_finished_run_exactly(straight, tmp_path, capsys) -> None:
    """A finished 1-epoch run resumed with --nepochs=2 equals the 2-epoch run (the change is logged)."""
    ckpt = tmp_path / "run.pt"
    one_epoch = [f for f in FLAGS if not f.startswith("--nepochs")] + ["--nepochs=1"]
    assert run_cli([*one_epoch, f"--save-model={ckpt}"], capsys)[0] == 0
    code, out, err = run_cli([*FLAGS, f"--load-model={ckpt}", f"--save-model={ckpt}"], capsys)
    assert code == 0, err
    assert "resuming with changed flags" in out and "--nepochs=2 (checkpoint: 1)" in out
    assert_same_run(load_checkpoint(ckpt), straight[0])


# Runs dlrm_mlet.py with an os.fsync that, on the checkpoint save of iteration
# KILL_AT (one file fsync per save with --save-freq=1), reports and waits: the
# temporary file is written but not yet synced or renamed when the test kills it.
PAUSING_RUN = r"""
import os, stat, sys, time
kill_at, saves, real_fsync = int(sys.argv[1]), [0], os.fsync
def fsync(fd):
    if stat.S_ISREG(os.fstat(fd).st_mode):
        saves[0] += 1
        if saves[0] == kill_at:
            print("pausing inside the save", flush=True)
            time.sleep(600)
    real_fsync(fd)
os.fsync = fsync
import dlrm_mlet
sys.exit(dlrm_mlet.main(sys.argv[2:]))
"""
KILL_AT = 13  # batch 3 of epoch 1


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_run_killed_mid_save_resumes_exactly(straight, tmp_path, capsys) -> None:
    """SIGKILL a training process inside a checkpoint save in epoch 1; the previous checkpoint is intact and
    resumes exactly."""
    ckpt = tmp_path / "run.pt"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    argv = [*FLAGS, f"--save-model={ckpt}", "--save-freq=1"]
    child = subprocess.Popen(
        [sys.executable, "-c", PAUSING_RUN, str(KILL_AT), *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in child.stdout:
            if line.startswith("pausing inside the save"):
                break
        else:
            pytest.fail("the run ended without reaching the save")
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    leftovers = list(tmp_path.glob(f".run.pt.*.{child.pid}.*.tmp"))
    assert len(leftovers) == 1  # the save it was killed in
    saved = load_checkpoint(ckpt)
    assert saved["position"]["epoch"] == 1 and saved["position"]["iteration"] == KILL_AT - 1

    code, out, err = run_cli([*FLAGS, f"--load-model={ckpt}", f"--save-model={ckpt}"], capsys)
    assert code == 0, err
    assert "resuming" in out and not leftovers[0].exists()  # the next save removed the dead writer's file
    assert_same_run(load_checkpoint(ckpt), straight[0])


EARLY = [*FLAGS, "--num-batches=3", "--nepochs=1", "--test-freq=0"]  # later flags win


@pytest.fixture(scope="module")
def early_checkpoint(tmp_path_factory) -> str:
    """The final checkpoint of a 3-iteration run."""
    path = tmp_path_factory.mktemp("early") / "early.pt"
    assert dlrm_mlet.main([*EARLY, f"--save-model={path}"]) == 0
    return str(path)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("--mini-batch-size=16", "--mini-batch-size"),
        ("--numpy-rand-seed=5", "--numpy-rand-seed"),
        ("--synthetic-zipf=1.2", "--synthetic-zipf"),
        ("--num-batches=10", "--num-batches"),
        ("--optimizer=sgd", "--optimizer"),
    ],
)
def test_resume_refuses_flags_that_change_the_data_stream_or_optimizer(
    change: str, named: str, early_checkpoint: str, capsys
) -> None:
    code, _, err = run_cli([*EARLY, change, f"--load-model={early_checkpoint}"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"dlrm_mlet.py: error: --load-model {early_checkpoint}: {named}: checkpoint has "
    )


@pytest.mark.parametrize(
    ("change", "named"), [("--rand-data-dist=gaussian", "--rand-data-dist"), ("--round-targets", "--round-targets")]
)
def test_resume_of_random_data_refuses_another_draw_of_ids_or_labels(change: str, named: str, tmp_path, capsys) -> None:
    """Random data's id distribution and label rounding define its training stream, as the click model's flags do."""
    flags = [*TINY, "--numpy-rand-seed=3"]
    path = tmp_path / "random.pt"
    assert dlrm_mlet.main([*flags, f"--save-model={path}"]) == 0
    code, _, err = run_cli([*flags, change, "--nepochs=2", f"--load-model={path}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{named}: checkpoint has " in err


def test_resume_refuses_training_data_of_another_size(early_checkpoint: str, tmp_path, capsys) -> None:
    """A change of the training data that no compared flag names is still caught, by the data's size."""
    ckpt = load_checkpoint(early_checkpoint)
    del ckpt["args"]["num_batches"]  # as if the size came from a flag the checkpoint does not know
    edited = tmp_path / "edited.pt"
    torch.save(ckpt, edited)
    code, _, err = run_cli([*EARLY, "--num-batches=10", f"--load-model={edited}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert (
        "the training data differ from the checkpoint's "
        "(320 samples in 10 batches per epoch, the checkpoint's: 96 in 3)" in err
    )


def test_resume_with_another_learning_rate_is_allowed_and_logged(early_checkpoint: str, tmp_path, capsys) -> None:
    out_ckpt = tmp_path / "more.pt"
    code, out, err = run_cli(
        [*EARLY, "--learning-rate=0.1", "--nepochs=2", f"--load-model={early_checkpoint}", f"--save-model={out_ckpt}"],
        capsys,
    )
    assert code == 0, err
    assert (
        "resuming with changed flags (the run continues with the new values): "
        "--learning-rate=0.1 (checkpoint: 0.3), --nepochs=2 (checkpoint: 1)" in out
    )
    resumed = load_checkpoint(out_ckpt)
    assert resumed["position"]["iteration"] == 6 and resumed["lr_schedule"]["base_lr"] == 0.1


QR = ["--qr-flag", "--qr-threshold=100"]  # of the tables 500-80-20-7, only the first is a pair


@pytest.mark.slow
def test_another_qr_threshold_that_splits_the_same_tables_resumes_exactly(tmp_path, capsys) -> None:
    """--qr-threshold decides which tables are pairs; 200 splits the same one as 100, so the model is the same.
    (It was refused as a changed architecture, compared by the flag's value.)"""
    straight = tmp_path / "straight.pt"
    assert run_cli([*FLAGS, *QR, f"--save-model={straight}"], capsys)[0] == 0
    ckpt = tmp_path / "run.pt"
    one_epoch = [f for f in FLAGS if not f.startswith("--nepochs")] + ["--nepochs=1"]
    assert run_cli([*one_epoch, *QR, f"--save-model={ckpt}"], capsys)[0] == 0
    code, out, err = run_cli(
        [*FLAGS, *QR, "--qr-threshold=200", f"--load-model={ckpt}", f"--save-model={ckpt}"], capsys
    )
    assert code == 0, err
    assert "--qr-threshold=200 (checkpoint: 100)" in out and f"resuming {ckpt} at epoch 1, batch 0" in out
    assert_same_run(load_checkpoint(ckpt), load_checkpoint(straight))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--qr-threshold=50"], "--qr-threshold: checkpoint has 100, the flags give 50, which changes how table 1"),
        (["--qr-threshold=200", "--qr-collisions=8"], "--qr-collisions: checkpoint has 4, the flags give 8"),
        (["--qr-threshold=600"], "--qr-threshold: checkpoint has 100, the flags give 600, which changes how table 0"),
    ],
)
def test_a_qr_flag_that_changes_a_table_is_refused_naming_it(change: list[str], named: str, tmp_path, capsys) -> None:
    ckpt = tmp_path / "early.pt"
    assert run_cli([*EARLY, *QR, f"--save-model={ckpt}"], capsys)[0] == 0
    code, _, err = run_cli([*EARLY, *QR, *change, "--nepochs=2", f"--load-model={ckpt}"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"dlrm_mlet.py: error: --load-model {ckpt}: {named}"), lines


def test_a_checkpoint_of_an_earlier_schedule_rule_is_resumed_with_a_line(
    early_checkpoint: str, tmp_path, capsys
) -> None:
    """Same schedule flags, another next rate: the checkpoint was written under the schedule's earlier rule (the
    decay one iteration later, 1e-7 after it); the resumed run says its rates differ. A plain resume says nothing."""
    ckpt = load_checkpoint(early_checkpoint)
    ckpt["lr_schedule"]["next_lr"] *= 0.5
    edited = tmp_path / "old_rule.pt"
    torch.save(ckpt, edited)
    code, out, err = run_cli([*EARLY, "--nepochs=2", f"--load-model={edited}"], capsys)
    assert code == 0, err
    assert "learning rate: the checkpoint's next step was to train at" in out
    code, out, err = run_cli([*EARLY, "--nepochs=2", f"--load-model={early_checkpoint}"], capsys)
    assert code == 0, err
    assert "learning rate: the checkpoint's" not in out


def test_checkpoint_holds_rng_schedule_and_position(early_checkpoint: str) -> None:
    ckpt = load_checkpoint(early_checkpoint)
    assert ckpt["kind"] == "training" and ckpt["optimizer"]["optimizer"] == "adagrad" and ckpt["optimizer"]["state"]
    assert ckpt["position"] == {
        "epoch": 1,
        "batch": 0,
        "iteration": 3,
        "batches_per_epoch": 3,
        "train_samples_per_epoch": 96,
        "shuffle_seed": 123,
    }
    assert ckpt["lr_schedule"] == {
        "base_lr": 0.3,
        "warmup_steps": 3,
        "decay_start": 8,
        "decay_steps": 10,
        "next_lr": 0.3,
    }
    assert set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert ckpt["args"]["learning_rate"] == 0.3 and ckpt["best"]["iteration"] == 3


def test_rerunning_a_command_says_it_replaces_its_checkpoint(tmp_path, capsys) -> None:
    checkpoint = tmp_path / "m.pt"
    assert run_cli([*TINY, f"--save-model={checkpoint}"], capsys)[0] == 0
    code, out, _ = run_cli([*TINY, f"--save-model={checkpoint}"], capsys)  # the same command again, as after Ctrl-C
    assert code == 0
    line = f"--save-model {checkpoint}: exists; this run starts over and replaces it at its first save"
    assert f"{line} (to continue the run saved there instead, add --load-model={checkpoint})" in out
    code, out, _ = run_cli([*TINY, f"--save-model={checkpoint}", f"--load-model={checkpoint}"], capsys)
    assert code == 0 and "exists; this run starts over" not in out  # continuing it: nothing to say about that
    nothing_left = f"--nepochs 1: {checkpoint} has trained 1 epoch already (iteration 12); nothing is left to train"
    assert nothing_left in out  # but it had finished (the default --nepochs is 1)


def signal_during(monkeypatch, method: str, iteration: int, signum: int) -> None:
    """Send this process ``signum`` once, from inside the trainer's ``method`` (``step``: the step that ends at
    ``iteration``; ``test``, ``save``: the one at ``iteration``)."""
    original, sent = getattr(dlrm_mlet.Trainer, method), []
    at = iteration - 1 if method == "step" else iteration

    def during(self, *args):
        if self.iteration == at and not sent:
            sent.append(signum)
            os.kill(os.getpid(), signum)  # its Python handler runs here, inside the method
        return original(self, *args)

    monkeypatch.setattr(dlrm_mlet.Trainer, method, during)


@pytest.mark.parametrize(
    ("signum", "method", "stop_at"),
    [
        (signal.SIGTERM, "step", 4),  # mid epoch 0
        (signal.SIGINT, "step", 10),  # the last step of epoch 0, before its test
        (signal.SIGINT, "test", 15),  # a --test-freq test mid epoch 1: the resumed run tests there first
        (signal.SIGTERM, "test", 10),  # the end-of-epoch test
    ],
    ids=["sigterm-step-4", "sigint-step-10", "sigint-test-15", "sigterm-test-10"],
)
@pytest.mark.slow
def test_a_signal_during_training_saves_the_run_where_it_stops_and_it_resumes_exactly(
    signum: int, method: str, stop_at: int, straight, tmp_path, monkeypatch, capsys
) -> None:
    """Ctrl-C or SIGTERM (a batch system's, before its kill) to a run with --save-model and no --save-freq lost
    the whole run: the checkpoint is written at the end. Now the step in flight ends, the checkpoint is written
    there, and the run resumed from it equals the run never stopped. (A signal that comes between steps, as in a
    test, stops at once: the model is whole there.)"""
    ckpt = tmp_path / "run.pt"
    with monkeypatch.context() as patch:
        signal_during(patch, method, stop_at, signum)
        code, out, err = run_cli([*FLAGS, f"--save-model={ckpt}"], capsys)
    name, words, status = {
        signal.SIGTERM: ("SIGTERM", "terminated (SIGTERM)", 143),
        signal.SIGINT: ("Ctrl-C", "interrupted", 130),
    }[signum]
    assert (code, err) == (status, f"dlrm_mlet.py: {words}\n")
    epoch, batch = (stop_at - 1) // 10, stop_at - 10 * ((stop_at - 1) // 10)
    assert (
        f"{name} at iteration {stop_at} (epoch {epoch}, batch {batch} of 10): saving the run to {ckpt} before"
        f" stopping (a second one stops at once)\nsaved {ckpt}; continue the run with --load-model={ckpt}\n"
    ) in out
    assert load_checkpoint(ckpt)["position"]["iteration"] == stop_at

    code, out, err = run_cli(
        [*FLAGS, f"--load-model={ckpt}", f"--save-model={ckpt}", f"--results-json={tmp_path / 'r.json'}"], capsys
    )
    assert code == 0, err
    straight_ckpt, straight_results = straight
    assert_same_run(load_checkpoint(ckpt), straight_ckpt)
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["final"] == straight_results["final"] and [h["iteration"] for h in results["history"]] == [
        5,
        10,
        15,
        20,
    ]


def test_a_second_signal_during_that_save_stops_at_once_and_keeps_the_checkpoint_before(
    tmp_path, monkeypatch, capsys
) -> None:
    """The checkpoint of a large model takes a while to write; a second SIGTERM (or Ctrl-C) ends the run at once,
    and the file holds the last checkpoint written before (here --save-freq's at iteration 3), whole."""
    ckpt = tmp_path / "run.pt"
    signal_during(monkeypatch, "step", 5, signal.SIGTERM)
    original = dlrm_mlet.Trainer.save_when_stopped

    def second_signal(self, stop) -> None:
        signal_during(monkeypatch, "save", self.iteration, signal.SIGTERM)
        original(self, stop)

    monkeypatch.setattr(dlrm_mlet.Trainer, "save_when_stopped", second_signal)
    code, out, err = run_cli([*FLAGS, f"--save-model={ckpt}", "--save-freq=3"], capsys)
    assert (code, err) == (143, "dlrm_mlet.py: terminated (SIGTERM)\n")
    assert "SIGTERM at iteration 5 " in out and f"saved {ckpt}" not in out
    assert load_checkpoint(ckpt)["position"]["iteration"] == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.pt"]  # no temporary left


def test_a_signal_while_the_best_model_is_written_writes_it_too(tmp_path, monkeypatch, capsys) -> None:
    """SIGTERM while --save-best writes the model of a test that beat the best: the file was left as it was, and
    the resumed run does not test at that point again, so the best model was lost. Now it is written first."""
    best, ckpt = tmp_path / "best.pt", tmp_path / "run.pt"
    signal_during(monkeypatch, "save", 5, signal.SIGTERM)  # the first test's, which beats none
    code, out, err = run_cli([*FLAGS, f"--save-model={ckpt}", f"--save-best={best}"], capsys)
    assert code == 143, err
    assert f"saved {best} (best auc)\nsaved {ckpt}; continue the run with --load-model={ckpt}\n" in out
    kept, saved = load_checkpoint(best), load_checkpoint(ckpt)
    assert kept["position"]["iteration"] == saved["position"]["iteration"] == 5
    assert all(torch.equal(kept["model"][name], tensor) for name, tensor in saved["model"].items())


def test_a_signal_before_the_first_step_saves_nothing(tmp_path, monkeypatch, capsys) -> None:
    """Nothing trained, nothing to keep: a run started over must not replace the checkpoint of the run before with
    its untrained weights. Nor is a step stopped midway kept (a KeyboardInterrupt raised inside it): its update may
    be partial."""
    ckpt = tmp_path / "run.pt"
    ckpt.write_bytes(b"the run before's checkpoint")
    step = dlrm_mlet.Trainer.step

    def stopped_in_step_4(self, batch):
        if self.iteration == 3:
            raise KeyboardInterrupt
        return step(self, batch)

    for method, stopped in (("run_epoch", stopped_before_training), ("step", stopped_in_step_4)):
        with monkeypatch.context() as patch:
            patch.setattr(dlrm_mlet.Trainer, method, stopped)
            code, out, _ = run_cli([*FLAGS, f"--save-model={ckpt}"], capsys)
        assert code == 130 and "saving the run" not in out, method
        assert ckpt.read_bytes() == b"the run before's checkpoint"


def stopped_before_training(self, *args) -> None:
    """A Trainer method that stops the run (as Ctrl-C)."""
    raise KeyboardInterrupt


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_to_a_training_process_saves_the_run(tmp_path) -> None:
    """As a batch system ends a job: SIGTERM to ``dlrm_mlet.py`` training (batches made ahead by a thread, the
    command's own handlers), with --save-model and no --save-freq."""
    ckpt = tmp_path / "run.pt"
    command = [sys.executable, "dlrm_mlet.py", *LONG_RUN, f"--save-model={ckpt}", "--progress=false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("Finished training it"):
                break
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert (child.returncode, err) == (143, "dlrm_mlet.py: terminated (SIGTERM)\n"), out[-2000:]
    stopped = re.search(r"^SIGTERM at iteration (\d+) \(epoch 0, batch \1 of 1000000\): saving the run to ", out, re.M)
    assert stopped is not None and f"saved {ckpt}; continue the run with --load-model={ckpt}\n" in out, out[-2000:]
    assert load_checkpoint(ckpt)["position"]["iteration"] == int(stopped[1]) > 0
