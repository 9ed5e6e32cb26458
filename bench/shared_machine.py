"""Training throughput alone and beside a second copy of itself: the old CPU thread default against the new (issue 18).

For each configuration this runs the command line (``dlrm_mlet.py`` in child
processes, as a user does) alone, then two copies at once, under each setting:

* ``old``: ``--adapt-threads=false``, torch's fixed thread count (2 on a 2-core
  machine): what ``dlrm_mlet.py`` did before issue 18;
* ``new``: the default, threads adapted to the other processes' load (``mlet/training/cpu_threads.py``);
* ``one_thread`` and ``passive`` (only if asked): ``OMP_NUM_THREADS=1`` and
  ``OMP_WAIT_POLICY=passive``, alternatives measured and rejected (the run keeps
  the count fixed when they are set).

Samples/s is each run's ``train_samples_per_second`` (``--results-json``).
Rounds interleave the settings. The threading variables of this process's
environment are not passed on. Each run also records the foreign load: the
cores kept busy by processes other than the runs during it (``/proc/stat``
less the runs' own CPU time); the table shows medians over the runs during
which others kept less than a quarter of a core busy ("rounds": how many
alone + loaded; all of them where none was quiet). Rounds accumulate in the result
file across invocations (so a long measurement can be split into short locked
stretches on a shared machine) unless ``--fresh``.

    flock /tmp/dlrm_cpu.lock .venv/bin/python bench/shared_machine.py --configs quickstart_mlet --rounds 1
    flock /tmp/dlrm_cpu.lock .venv/bin/python bench/shared_machine.py --configs kaggle_plain,kaggle_mlet

Writes bench/results/shared_machine.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT, command, print_table, save
from reference_dlrm import scaled_cardinalities

from mlet.training.cpu_threads import USER_VARIABLES, busy_ticks

QUICKSTART_ROWS = 2333334  # scripts/quickstart.sh: 2M training samples
KAGGLE = [
    "--data-generation=random",
    "--arch-embedding-size=" + "-".join(str(n) for n in scaled_cardinalities(0.01)),
    "--arch-sparse-feature-size=16",
    "--arch-mlp-bot=13-512-256-64-16",
    "--arch-mlp-top=512-256-1",
    "--mini-batch-size=2048",
    "--num-batches=60",
]
CONFIGS = {
    # the quickstart's MLET run ({data}: the --data folder), 1500 of its batches
    "quickstart_mlet": [
        "--data-generation=dataset",
        "--data-set=kaggle",
        "--raw-data-file={data}/train.txt",
        "--processed-data-file={data}/processed",
        "--mini-batch-size=256",
        "--learning-rate=1.0",
        "--arch-mlp-top=64-32-1",
        "--numpy-rand-seed=1",
        "--mlet-hidden=64",
        "--arch-sparse-feature-size=4",
        "--arch-mlp-bot=13-64-4",
        "--num-batches=1500",
    ],
    # the paper's Criteo DLRM, tables at 1% of Kaggle's cardinalities, random data
    "kaggle_plain": KAGGLE,
    "kaggle_mlet": [*KAGGLE, "--mlet-hidden=64"],
}
COMMON = ["--print-time", "--progress=false"]
SETTINGS: dict[str, tuple[list[str], dict[str, str]]] = {  # name: (extra flags, extra environment)
    "old": (["--adapt-threads=false"], {}),
    "new": ([], {}),
    "one_thread": ([], {"OMP_NUM_THREADS": "1"}),
    "passive": ([], {"OMP_WAIT_POLICY": "passive"}),
}
PYTHON = sys.executable
DISTURBED_CORES = 0.25  # a run during which others kept this much busy is left out of the medians


def all_busy_ticks() -> int:
    """Busy clock ticks of every CPU so far."""
    return busy_ticks(Path("/proc/stat").read_text(), set(range(os.cpu_count() or 1)))


def start(argv: list[str], env: dict[str, str], results: Path) -> subprocess.Popen:
    """``dlrm_mlet.py argv`` writing its results JSON to ``results`` and its log (stdout and stderr) beside it."""
    with results.with_suffix(".log").open("w") as log:
        return subprocess.Popen(
            [PYTHON, "dlrm_mlet.py", *argv, f"--results-json={results}"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def run_copies(argv: list[str], env: dict[str, str], copies: int, out: Path) -> dict:
    """Run ``copies`` processes of ``dlrm_mlet.py argv`` at once: their samples/s and thread-count log lines, and
    the foreign load (cores) meanwhile."""
    begin, busy = time.perf_counter(), all_busy_ticks()
    results = [out / f"{i}.json" for i in range(copies)]
    children = [start(argv, env, path) for path in results]
    own = 0.0
    for child, path in zip(children, results):
        _, status, usage = os.wait4(child.pid, 0)
        own += usage.ru_utime + usage.ru_stime
        if status != 0:
            raise RuntimeError(f"dlrm_mlet.py {' '.join(argv)} failed:\n{path.with_suffix('.log').read_text()[-3000:]}")
    wall = time.perf_counter() - begin
    foreign = max(0.0, (all_busy_ticks() - busy) / os.sysconf("SC_CLK_TCK") - own) / wall
    logs = [path.with_suffix(".log").read_text().splitlines() for path in results]
    return {
        "samples_per_second": [json.loads(path.read_text())["train_samples_per_second"] for path in results],
        "foreign_cores": round(foreign, 2),
        "seconds": round(wall, 1),
        "threads_log": [[line for line in log if line.startswith("cpu threads")] for log in logs],
    }


def measure(argv: list[str], setting: str, out: Path) -> dict:
    """One round of ``setting``: the run alone, then two copies at once."""
    flags, extra_env = SETTINGS[setting]
    env = {k: v for k, v in os.environ.items() if k not in USER_VARIABLES} | extra_env
    argv = [*argv, *COMMON, *flags]
    return {"idle": run_copies(argv, env, 1, out), "loaded": run_copies(argv, env, 2, out)}


def undisturbed(runs: list[dict]) -> list[dict]:
    """The runs during which other processes kept less than ``DISTURBED_CORES`` busy (all of them if none)."""
    return [r for r in runs if r["foreign_cores"] < DISTURBED_CORES] or runs


def summary(rounds: list[dict]) -> dict:
    """Medians over the undisturbed rounds: idle samples/s, loaded samples/s per copy (both copies pooled), their
    ratio."""
    idle, loaded = undisturbed([r["idle"] for r in rounds]), undisturbed([r["loaded"] for r in rounds])
    idle_rate = statistics.median(r["samples_per_second"][0] for r in idle)
    loaded_rate = statistics.median(v for r in loaded for v in r["samples_per_second"])
    return {
        "rounds": f"{len(idle)}+{len(loaded)} of {len(rounds)}",
        "idle": round(idle_rate),
        "loaded_per_copy": round(loaded_rate),
        "loaded_over_idle": round(loaded_rate / idle_rate, 3),
    }


def ensure_quickstart_data(folder: Path) -> None:
    """The quickstart's generated Kaggle-format rows in ``folder``, preprocessed (both made once)."""
    raw = folder / "train.txt"
    if not raw.exists():
        folder.mkdir(parents=True, exist_ok=True)
        generate = ["generate", "kaggle", f"--rows={QUICKSTART_ROWS}", "--seed=1", "--scale=0.001", f"--out={raw}"]
        subprocess.run([PYTHON, "data_utils.py", *generate], cwd=ROOT, check=True)
    if not (folder / "processed").exists():
        preprocess = [
            "preprocess",
            "--data-set=kaggle",
            f"--raw-data-file={raw}",
            f"--processed-data-file={folder / 'processed'}",
            "--progress=false",
        ]
        subprocess.run([PYTHON, "data_utils.py", *preprocess], cwd=ROOT, check=True)


def measure_rounds(stored: dict, configs: list[str], settings: list[str], rounds: int, data: Path) -> None:
    """Append ``rounds`` rounds of every setting of every configuration to ``stored`` (config -> argv and rounds
    per setting)."""
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds):
            for config in configs:
                argv = [a.format(data=data) for a in CONFIGS[config]]
                entry = stored.setdefault(config, {"argv": argv, "settings": {}})
                done = len(entry["settings"].get(settings[0], {"rounds": []})["rounds"])
                for setting in settings if done % 2 == 0 else settings[::-1]:  # A B, B A, ...: drift hits both alike
                    result = measure(argv, setting, Path(tmp))
                    result.update(
                        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                        load_average=os.getloadavg(),
                        command=command(),
                    )
                    entry["settings"].setdefault(setting, {"rounds": []})["rounds"].append(result)
                    print(f"round {round_ + 1} {config} {setting}: {json.dumps(result)}", flush=True)


def summarize(stored: dict) -> list[dict]:
    """Add each setting's summary and, where both were measured, new / old to ``stored``; the table rows."""
    rows = []
    for config, entry in stored.items():
        for setting, record in entry["settings"].items():
            record["summary"] = summary(record["rounds"])
            rows.append({"config": config, "setting": setting, **record["summary"]})
        if {"old", "new"} <= entry["settings"].keys():
            old, new = entry["settings"]["old"]["summary"], entry["settings"]["new"]["summary"]
            entry["new_over_old"] = {key: round(new[key] / old[key], 3) for key in ("idle", "loaded_per_copy")}
            rows.append({"config": config, "setting": "new / old", **entry["new_over_old"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of: {', '.join(CONFIGS)}")
    parser.add_argument("--settings", default="old,new", help=f"comma-separated, of: {', '.join(SETTINGS)}")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--data", default="runs/shared_machine", help="folder of the quickstart's data (generated if missing)"
    )
    parser.add_argument("--fresh", action="store_true", help="drop the rounds stored in the result file")
    args = parser.parse_args()
    configs, settings = args.configs.split(","), args.settings.split(",")
    unknown = sorted(set(configs) - CONFIGS.keys() | set(settings) - SETTINGS.keys())
    if unknown:
        parser.error(f"unknown configs or settings: {', '.join(unknown)}")
    data = (ROOT / args.data).resolve()
    if "quickstart_mlet" in configs:
        ensure_quickstart_data(data)

    path = RESULTS / "shared_machine.json"
    stored = {} if args.fresh or not path.exists() else json.loads(path.read_text())["configs"]
    measure_rounds(stored, configs, settings, args.rounds, data)
    print_table(summarize(stored), ["config", "setting", "rounds", "idle", "loaded_per_copy", "loaded_over_idle"])
    program = [Path(PYTHON).name, "dlrm_mlet.py", "<argv>", *COMMON, "<setting flags>", "--results-json=<tmp>"]
    print(
        f"wrote {save('shared_machine', {'run_command': ' '.join(program), 'settings': SETTINGS, 'configs': stored})}"
    )


if __name__ == "__main__":
    main()
