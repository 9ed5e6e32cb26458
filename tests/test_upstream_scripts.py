"""Upstream DLRM's bench scripts, run with only the program name swapped (``python dlrm_s_pytorch.py`` ->
``python dlrm_mlet.py``), on generated files at small sizes.

The command lines are those of upstream's ``bench/dlrm_s_criteo_kaggle.sh``,
``bench/dlrm_s_criteo_terabyte.sh``, ``bench/run_and_time.sh`` (MLPerf) and
``bench/dlrm_s_benchmark.sh`` (facebookresearch/dlrm at 090956e): their flags
as the scripts pass them, piped through ``tee`` as there. The data are
generated in the layout the scripts expect (``./input/train.txt``,
``./input/day_0`` ...); the benchmark's model sizes are its variables, set small.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import ROOT

from mlet.data.preprocessing.raw_generate import RawGenerator

pytestmark = pytest.mark.slow

PROGRAM = f"{sys.executable} {ROOT / 'dlrm_mlet.py'}"

KAGGLE = (
    '$dlrm_pt_bin --arch-sparse-feature-size=16 --arch-mlp-bot="13-512-256-64-16" --arch-mlp-top="512-256-1" '
    "--data-generation=dataset --data-set=kaggle --raw-data-file=./input/train.txt "
    "--processed-data-file=./input/kaggleAdDisplayChallenge_processed.npz --loss-function=bce --round-targets=True "
    "--learning-rate=0.1 --mini-batch-size=128 --print-freq=1024 --print-time --test-mini-batch-size=16384 "
    "--test-num-workers=16 $dlrm_extra_option 2>&1 | tee run_kaggle_pt.log"
)
TERABYTE = (
    '$dlrm_pt_bin --arch-sparse-feature-size=64 --arch-mlp-bot="13-512-256-64" --arch-mlp-top="512-512-256-1" '
    "--max-ind-range=10000000 --data-generation=dataset --data-set=terabyte --raw-data-file=./input/day "
    "--processed-data-file=./input/terabyte_processed.npz --loss-function=bce --round-targets=True "
    "--learning-rate=0.1 --mini-batch-size=2048 --print-freq=1024 --print-time --test-mini-batch-size=16384 "
    "--test-num-workers=16 $dlrm_extra_option 2>&1 | tee run_terabyte_pt.log"
)
MLPERF = (
    '$dlrm_pt_bin --arch-sparse-feature-size=128 --arch-mlp-bot="13-512-256-128" '
    '--arch-mlp-top="1024-1024-512-256-1" --max-ind-range=40000000 --data-generation=dataset --data-set=terabyte '
    "--raw-data-file=./input/day --processed-data-file=./input/terabyte_processed.npz --loss-function=bce "
    "--round-targets=True --learning-rate=1.0 --mini-batch-size=2048 --print-freq=2048 --print-time "
    "--test-freq=102400 --test-mini-batch-size=16384 --test-num-workers=16 --memory-map --mlperf-logging "
    "--mlperf-auc-threshold=0.8025 --mlperf-bin-loader --mlperf-bin-shuffle $dlrm_extra_option 2>&1 "
    "| tee run_terabyte_mlperf_pt.log"
)
# dlrm_s_benchmark.sh's CPU PyTorch run: its variables (model sizes set small here) and its command.
BENCHMARK = """
ncores=2; numa_cmd=""
data=random; print_freq=2; rand_seed=727
mb_size=256; nbatches=6; bot_mlp="512-512-64"; top_mlp="1024-1024-1024-1"; emb_size=64; nindices=10
emb="1000-1000-1000-1000-1000-1000-1000-1000"; interaction="dot"; tnworkers=0; tmb_size=16384
_args=" --num-batches="${nbatches}" --data-generation="${data}" --arch-mlp-bot="${bot_mlp}\\
" --arch-mlp-top="${top_mlp}" --arch-sparse-feature-size="${emb_size}" --arch-embedding-size="${emb}\\
" --num-indices-per-lookup="${nindices}" --arch-interaction-op="${interaction}" --numpy-rand-seed="${rand_seed}\\
" --print-freq="${print_freq}" --print-time --enable-profiling "
outf="model1_CPU_PT_$ncores.log"
outp="dlrm_mlet.prof"
cmd="$numa_cmd $dlrm_pt_bin --mini-batch-size=$mb_size --test-mini-batch-size=$tmb_size \\
--test-num-workers=$tnworkers $_args $dlrm_extra_option > $outf"
eval $cmd
mv $outp ${outf//".log"/".prof"}
mv ${outp//".prof"/".json"} ${outf//".log"/".json"}
"""


def run_script(body: str, folder) -> subprocess.CompletedProcess:
    """``body`` under bash in ``folder``, with ``$dlrm_pt_bin`` the program and pipelines failing as a whole."""
    script = f'set -euo pipefail\ndlrm_extra_option=""\ndlrm_pt_bin="{PROGRAM}"\n{body}\n'
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", "-c", script], cwd=folder, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """``input/train.txt`` (Kaggle) and ``input/day_0`` ... ``day_2`` (Terabyte), generated."""
    folder = tmp_path_factory.mktemp("upstream")
    (folder / "input").mkdir()
    RawGenerator("kaggle", 14_000, seed=2, scale=0.001).write(folder / "input" / "train.txt")
    RawGenerator("terabyte", 6_000, seed=2, scale=0.0001).write_days(str(folder / "input" / "day"), 3)
    return folder


def test_criteo_kaggle_script(inputs) -> None:
    done = run_script(KAGGLE, inputs)
    log = (inputs / "run_kaggle_pt.log").read_text()
    assert done.returncode == 0, log + done.stderr
    assert "Finished training it 94/94 of epoch 0" in log and "ms/it" in log and "Testing at - 94/94" in log
    assert (inputs / "input" / "kaggleAdDisplayChallenge_processed.npz" / "meta.json").exists()


def test_criteo_terabyte_script(inputs) -> None:
    done = run_script(TERABYTE, inputs)
    log = (inputs / "run_terabyte_pt.log").read_text()
    assert done.returncode == 0, log + done.stderr
    assert "days 0-1 train, day 2 test/val" in log and "max-ind-range 10000000" in log
    assert "Finished training it 6/6 of epoch 0" in log and "Testing at - 6/6" in log


def test_mlperf_run_and_time_script(inputs) -> None:
    done = run_script(MLPERF, inputs)
    log = (inputs / "run_terabyte_mlperf_pt.log").read_text()
    assert done.returncode == 0, log + done.stderr
    assert "--memory-map: upstream DLRM's flag, ignored" in log
    assert ':::MLLOG {"namespace": "", "time_ms":' in log and '"key": "run_stop"' in log
    assert '"key": "eval_accuracy"' in log and "Testing at - 6/6" in log


def test_benchmark_script(tmp_path) -> None:
    done = run_script(BENCHMARK, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    log = (tmp_path / "model1_CPU_PT_2.log").read_text()
    assert "Finished training it 6/6 of epoch 0" in log and "ms/it" in log
    assert "Self CPU" in (tmp_path / "model1_CPU_PT_2.prof").read_text()
    assert (tmp_path / "model1_CPU_PT_2.json").stat().st_size > 0
