#!/usr/bin/env bash
# Criteo Terabyte end to end, as upstream DLRM's MLPerf script trains it (bench/run_and_time.sh's model and flags):
#
#   bash scripts/criteo_terabyte.sh [DAY_PREFIX_OR_FOLDER] [-- dlrm_mlet.py flags ...]
#
# With a path (the real download: DIR/day_0 ... day_23, plain or .gz): preprocessing (one process per day
# file, cached in RUN_DIR/processed) and one epoch of upstream's MLPerf model (d=128, bottom 13-512-256-128,
# top 1024-1024-512-256-1, batch 2048, SGD 1.0, --max-ind-range=40000000, stop at AUC 0.8025).
# Without it: the embedded default. DAYS day files of ROWS rows each are generated in the real layout
# (Terabyte's cardinalities times SCALE) and the same path runs with a smaller model.
# Flags after -- go to dlrm_mlet.py (e.g. -- --mlet-hidden=64 --arch-sparse-feature-size=16 ...).
# RUN_DIR and the path may be relative to the caller's directory; RUN_DIR's default is the repository's
# runs/criteo_terabyte, wherever the script is started from.
set -euo pipefail
CALLER_DIR=$PWD
# A path as given by the caller, made absolute against the caller's directory (the script works from the repository root).
from_caller() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$CALLER_DIR/$1" ;; esac; }
RAW=""
if [ $# -gt 0 ] && [ "$1" != "--" ]; then RAW=$(from_caller "$1"); shift; fi
[ $# -gt 0 ] && [ "$1" = "--" ] && shift
if [ -n "${RUN_DIR:-}" ]; then RUN_DIR=$(from_caller "$RUN_DIR"); fi
cd "$(dirname "$0")/.."
source scripts/lib/run_child.sh  # run_child: a signal to this script reaches the command it runs
source scripts/lib/python.sh  # use_python: PY as given, or the .venv set up
RUN_DIR=${RUN_DIR:-runs/criteo_terabyte}
use_python criteo_terabyte.sh
mkdir -p "$RUN_DIR"
if [ -n "$RAW" ]; then
  MODEL=(--arch-sparse-feature-size=128 --arch-mlp-bot=13-512-256-128 --arch-mlp-top=1024-1024-512-256-1
         --test-freq=102400 --print-freq=2048)
else
  DAYS=${DAYS:-4} ROWS=${ROWS:-250000} SCALE=${SCALE:-0.0005}
  RAW=$RUN_DIR/synthetic_${DAYS}days_${ROWS}rows_scale${SCALE}/day
  if [ ! -e "${RAW}_$((DAYS - 1)).gz" ]; then
    run_child "$PY" data_utils.py generate terabyte --days "$DAYS" --rows "$ROWS" --seed 1 --scale "$SCALE" \
      --out "$RAW.gz"
  fi
  MODEL=(--arch-sparse-feature-size=16 --arch-mlp-bot=13-64-16 --arch-mlp-top=64-32-1 --test-freq=100 --print-freq=50)
fi
run_child --tee "$RUN_DIR/train.log" "$PY" dlrm_mlet.py --data-generation=dataset --data-set=terabyte \
  "--raw-data-file=$RAW" "--processed-data-file=$RUN_DIR/processed" --loss-function=bce --round-targets=True \
  --learning-rate=1.0 --mini-batch-size=2048 --test-mini-batch-size=16384 --print-time --mlperf-auc-threshold=0.8025 \
  --max-ind-range=40000000 --progress=false "${MODEL[@]}" "--results-json=$RUN_DIR/results.json" "$@"
echo "criteo_terabyte.sh: done; see $RUN_DIR/train.log and $RUN_DIR/results.json"
