#!/usr/bin/env bash
# Reproduce the MLET paper's comparison on one data set: sweep -> summary -> rank analysis.
# Beside the paper's baseline-vs-MLET grid, the other reductions run too (quotient-remainder,
# mixed dimensions, MLET with each; every run also evaluated with int8 and int4 tables),
# and the summary compares them all (the Pareto table, pareto.png).
#
#   bash scripts/reproduce.sh kaggle|avazu [RAW_FILE] [sweep.py flags ...] [-- dlrm_mlet.py flags ...]
#
# With RAW_FILE (the real Criteo-Kaggle train.txt or Avazu train): the full grid
# (baseline d 2..64, MLET d 2..16 x K 16..128, seeds 1 2 3, SGD and Adagrad,
# both protocols), the paper's DLRM (bottom 13-512-256-64-d, top 512-256-1;
# Avazu: bottom 1-512-256-64-d), batch 128, one epoch.
# Without it: the embedded default. A synthetic click log in the data set's raw
# format is generated (ROWS rows, table sizes at SCALE of the real ones) and a
# reduced grid runs (MLET K=64 only, seeds 1 2, a smaller DLRM, batch 256),
# 2 runs at a time with 1 torch thread each: 57 minutes on 2 quiet CPU cores
# (Kaggle format, measured 2026-11-30; docs/reproducing.md).
#
# Flags after RAW_FILE override the grid (e.g. --seeds 1 2 3 --mlet-hidden 32 64);
# flags after -- go to every training run (e.g. -- --nepochs=2).
# RAW_FILE and RUN_DIR may be relative to the caller's directory.
# Results: RUN_DIR (default runs/criteo_kaggle or runs/avazu): results/*.json,
# logs/, checkpoints/ (the first seed's paper-rate runs, collapsed; with RAW_FILE d=4 only), sweep.json,
# summary.md + plots (scripts/summarize.py), rank/ (scripts/analyze_rank.py).
# An interrupted run continues where it stopped when started again. Failed runs (named by the sweep) are
# left out of the summary and the script ends with status 1; the same command retries them.
set -euo pipefail
CALLER_DIR=$PWD
# A path as given by the caller, made absolute against the caller's directory (the script works from the repository root).
from_caller() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$CALLER_DIR/$1" ;; esac; }
if [ $# = 0 ]; then
  echo "usage: bash scripts/reproduce.sh kaggle|avazu [RAW_FILE] [sweep.py flags ...] [-- dlrm_mlet.py flags ...]" >&2
  exit 2
fi
DATA_SET=$1
shift
case "$DATA_SET" in
  kaggle) NAME=criteo_kaggle; DENSE=13 ;;
  avazu) NAME=avazu; DENSE=1 ;;
  *) echo "reproduce.sh: error: data set must be kaggle or avazu, got '$DATA_SET'" >&2; exit 2 ;;
esac
RAW=""
if [ $# -gt 0 ] && [ "${1:0:1}" != "-" ]; then
  RAW=$(from_caller "$1"); shift
  [ -f "$RAW" ] || { echo "reproduce.sh: error: $RAW: no such file" >&2; exit 2; }
fi
if [ -n "${RUN_DIR:-}" ]; then RUN_DIR=$(from_caller "$RUN_DIR"); fi
cd "$(dirname "$0")/.."
source scripts/lib/run_child.sh  # run_child: a signal to this script reaches the command it runs
source scripts/lib/python.sh  # use_python: PY as given, or the .venv set up
RUN_DIR=${RUN_DIR:-runs/$NAME}
use_python reproduce.sh
SWEEP_FLAGS=() TRAIN_FLAGS=()
seen_dashes=0
for arg in "$@"; do
  if [ "$arg" = "--" ] && [ $seen_dashes = 0 ]; then seen_dashes=1; continue; fi
  if [ $seen_dashes = 1 ]; then TRAIN_FLAGS+=("$arg"); else SWEEP_FLAGS+=("$arg"); fi
done
DRY_RUN=0
for flag in "${SWEEP_FLAGS[@]}"; do [ "$flag" = --dry-run ] && DRY_RUN=1; done
[ $DRY_RUN = 1 ] || mkdir -p "$RUN_DIR"  # a dry run lists the runs still to do: it writes nothing
start=$(date +%s)

if [ -n "$RAW" ]; then
  GRID=(--seeds 1 2 3 --mlet-hidden 16 32 64 128 --mlp-bot-prefix "$DENSE-512-256-64" --checkpoint-dims 4 --jobs 1 --threads "$(nproc)"
        --qr-dims 4 16 64 --mlet-qr-dims 4 16 --md-dims 8 32 64 --mlet-md-dims 8 32)
  MODEL=(--arch-mlp-top=512-256-1 --mini-batch-size=128 --test-mini-batch-size=16384)
else
  ROWS=${ROWS:-400000}
  SCALE=${SCALE:-0.001}
  RAW=$RUN_DIR/synthetic_${DATA_SET}_${ROWS}rows_scale${SCALE}.txt  # other ROWS/SCALE: another file, and sweep.py refuses the mix
  if [ $DRY_RUN = 1 ] && [ ! -f "$RAW" ]; then
    echo "reproduce.sh: dry run: the data would be generated first ($RAW, $ROWS rows at scale $SCALE)"
  elif [ ! -f "$RAW" ]; then
    run_child "$PY" data_utils.py generate "$DATA_SET" --rows "$ROWS" --seed 1 --scale "$SCALE" --out "$RAW.tmp"
    mv "$RAW.tmp" "$RAW"
  fi
  GRID=(--seeds 1 2 --mlet-hidden 64 --mlp-bot-prefix "$DENSE-64" --max-widen 2 --jobs 2 --threads 1
        --qr-dims 4 16 64 --mlet-qr-dims 4 16 --md-dims 8 32 64 --mlet-md-dims 8 32)
  MODEL=(--arch-mlp-top=64-32-1 --mini-batch-size=256 --test-mini-batch-size=8192)
fi

# Exit status 1: some runs failed (each named above). The others are summarized and analysed all the same;
# any other failure (bad flags 2, Ctrl-C 130, SIGTERM 143) ends the script here.
sweep_status=0
run_child "$PY" scripts/sweep.py --run-dir "$RUN_DIR" --checkpoints paper \
  --lrs sgd=0.2,0.8,3.2 adagrad=0.0125,0.05,0.2 --paper-lr sgd=0.2 adagrad=0.05 --quantize-bits 8 4 \
  "${GRID[@]}" "${SWEEP_FLAGS[@]}" -- \
  --data-generation=dataset "--data-set=$DATA_SET" "--raw-data-file=$RAW" "--processed-data-file=$RUN_DIR/processed" \
  --progress=false --print-time "${MODEL[@]}" "${TRAIN_FLAGS[@]}" || sweep_status=$?
[ $sweep_status = 0 ] || [ $sweep_status = 1 ] || exit $sweep_status
if [ $DRY_RUN = 1 ]; then echo "reproduce.sh: dry run (the sweep's --dry-run): nothing generated, trained, summarized or analysed"; exit 0; fi
# Exit status 1: damaged results JSONs were left out (each named); the rest is summarized, and the script goes on.
summary_status=0
run_child "$PY" scripts/summarize.py "$RUN_DIR" > /dev/null || summary_status=$?
[ $summary_status = 0 ] || [ $summary_status = 1 ] || exit $summary_status
# Effective rank and rare/frequent ids: the first seed's paper-rate checkpoints of each optimizer.
for opt in sgd adagrad; do
  ckpts=("$RUN_DIR"/checkpoints/"$opt"_*.pt)
  [ -e "${ckpts[0]}" ] && run_child "$PY" scripts/analyze_rank.py "${ckpts[@]}" --out "$RUN_DIR/rank/$opt" > /dev/null
done
echo "reproduce.sh: done in $(( $(date +%s) - start )) s; see $RUN_DIR/summary.md and $RUN_DIR/rank/*/rank.md"
if [ $summary_status = 1 ]; then
  echo "reproduce.sh: damaged results JSONs (named above) are left out of the summary: the same command runs them again" >&2
fi
if [ $sweep_status = 1 ]; then
  echo "reproduce.sh: some runs failed (named above; logs in $RUN_DIR/logs); the summary leaves them out: the same command retries them" >&2
fi
[ $sweep_status = 0 ] && [ $summary_status = 0 ]
