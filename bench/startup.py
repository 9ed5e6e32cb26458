"""Where a ``dlrm_mlet.py`` run's seconds go outside its training steps, with and without ``--compile``, on cold
and warm Triton / inductor caches.

Each run is a child process on a processed Kaggle-format cache (``cli_throughput.py``'s writer) whose log
lines are stamped with the seconds since its launch. The phases are read from the run's own lines:

* ``start_s``: launch to the ``input:`` line (imports, the data read, the model built, the data placed);
* ``build_s``: to the ``cpu threads:`` line (the trainer: optimizer and step; ``--compile`` imports torch's
  compiler here);
* ``first_step_s``: the first step alone (its ``ms/it``: ``--print-freq=1``);
* ``steps_s``: all the steps, the first included; ``test_s``: the evaluation after them (its ``Testing at``
  or ``Validating at`` line);
* ``exit_s``: from that line to the process's exit (results, checkpoints, shut-down); ``wall_s``: launch to exit.

A cold run has empty cache folders; the warm run repeats it on the folders it filled. With ``--repeats N`` each
pair runs N times (fresh folders each time) and every phase is the median. The baseline is the run without
``--compile`` on warm caches, in the same invocation: ``vs_baseline`` is each row's wall time over it.

    python3 bench/startup.py                      # a GPU: none and --compile=default, cold and warm
    python3 bench/startup.py --compile none       # a CPU (no --compile there)

Writes bench/results/startup.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from cli_throughput import cache_run_flags, processed_data
from common import OUT_HELP, print_table, save

ROOT = Path(__file__).resolve().parent.parent
MARKS = {"input": ("input: ",), "built": ("cpu threads: ",), "step": ("Finished training it ",)}
TESTED = ("Testing at ", "Validating at ")  # the evaluation's line (upstream names test; --eval-split=val)
PHASES = ["start_s", "build_s", "first_step_s", "steps_s", "test_s", "exit_s", "wall_s"]
FIRST_STEP = re.compile(r"Finished training it 1/\d+ of epoch 0, ([\d.,]+) ms/it")


def run_flags(data: Path, batch: int, steps: int, gpu: bool, extra: list[str]) -> list[str]:
    """The command line of one run: ``steps`` steps of ``batch`` on the cache at ``data``, each step logged."""
    device = ["--use-gpu", "--data-on-device=on"] if gpu else []
    return [
        *cache_run_flags(data, 16, batch, test_samples=65536),
        "--print-freq=1",
        f"--num-batches={steps}",
        *device,
        *extra,
    ]


def stamped_run(argv: list[str], caches: Path) -> tuple[list[tuple[float, str]], float]:
    """Run ``dlrm_mlet.py argv`` with its Triton and inductor caches in ``caches``: its output lines, each with
    the seconds since launch, and the seconds to its exit."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
        "TRITON_CACHE_DIR": str(caches / "triton"),
    }
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "dlrm_mlet", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert child.stdout is not None
    lines = [(time.perf_counter() - start, line.rstrip("\n")) for line in child.stdout]
    status = child.wait()
    wall = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"dlrm_mlet.py exited with {status}:\n" + "\n".join(line for _, line in lines[-20:]))
    return lines, wall


def marked(lines: list[tuple[float, str]], starts: tuple[str, ...], what: str) -> list[float]:
    """The times of the lines that start with one of ``starts``; a run without one is an error naming ``what``."""
    times = [t for t, line in lines if line.startswith(starts)]
    if not times:
        tail = "\n".join(line for _, line in lines[-10:])
        raise RuntimeError(f"the run printed no {what} line ({' / '.join(starts)}); its last lines:\n{tail}")
    return times


def phases(lines: list[tuple[float, str]], wall: float) -> dict:
    """The phases of a run (see the module docstring) from its stamped lines."""
    first = {name: marked(lines, starts, name)[0] for name, starts in MARKS.items()}
    last_step = marked(lines, MARKS["step"], "step")[-1]
    tested = marked(lines, TESTED, "evaluation")[-1]  # the last: --test-freq may test during the steps too
    first_step = [float(m.group(1).replace(",", "")) for _, line in lines if (m := FIRST_STEP.search(line))]
    if not first_step or tested < last_step:
        raise RuntimeError("the run's log has no first-step timing (--print-freq=1) or no evaluation after its steps")
    return {
        "start_s": first["input"],
        "build_s": first["built"] - first["input"],
        "first_step_s": first_step[0] / 1000,
        "steps_s": last_step - first["built"],
        "test_s": tested - last_step,
        "exit_s": wall - tested,
        "wall_s": wall,
    }


def median_row(runs: list[dict]) -> dict:
    """Each phase's median over ``runs`` (the repeats of one compile mode and cache state)."""
    return {
        **{k: runs[0][k] for k in ("compile", "caches")},
        **{p: statistics.median(r[p] for r in runs) for p in PHASES},
    }


def main() -> None:
    """Write the cache, run every (compile mode, cold/warm) pair, print and save the phases."""
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the processed cache")
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument(
        "--compile", nargs="+", choices=("none", "default"), default=["none", "default"] if gpu else ["none"]
    )
    parser.add_argument("--extra", default="--bf16" if gpu else "", help="more dlrm_mlet.py flags, one string")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each cold/warm pair (phases: medians)")
    parser.add_argument("--out", default="startup", help=OUT_HELP)
    args = parser.parse_args()
    if "default" in args.compile and not gpu:
        parser.error("--compile default needs a GPU (dlrm_mlet.py compiles only the graphed GPU step)")
    if "none" not in args.compile:
        parser.error("--compile must include none: the warm uncompiled run is the baseline")
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "processed")
        processed_data(data, args.rows)
        for repeat in range(args.repeats):
            for mode in args.compile:
                argv = run_flags(data, args.batch, args.steps, gpu, [*args.extra.split(), f"--compile={mode}"])
                for caches in ("cold", "warm"):  # the warm run reuses the folders the cold one filled
                    lines, wall = stamped_run(argv, Path(tmp, f"caches_{mode}_{repeat}"))
                    runs.append({"compile": mode, "caches": caches, **phases(lines, wall)})
                    print(runs[-1], flush=True)
    rows = [
        median_row([r for r in runs if (r["compile"], r["caches"]) == key])
        for key in dict.fromkeys((r["compile"], r["caches"]) for r in runs)
    ]
    baseline = next(r["wall_s"] for r in rows if r["compile"] == "none" and r["caches"] == "warm")
    for row in rows:
        row["vs_baseline"] = row["wall_s"] / baseline
    print_table(rows, ["compile", "caches", *PHASES, "vs_baseline"])
    payload = {
        "rows_in_data": args.rows,
        "batch": args.batch,
        "steps": args.steps,
        "extra": args.extra,
        "repeats": args.repeats,
        "rows": rows,
        "runs": runs,
    }
    print(f"wrote {save(args.out, payload)}")


if __name__ == "__main__":
    main()
