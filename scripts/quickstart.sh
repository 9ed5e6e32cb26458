#!/usr/bin/env bash
# Quickstart, the user path end to end on synthetic data, on a CPU:
#   generate a Criteo-Kaggle-format train.txt from the synthetic click model
#   -> preprocess it (cached) -> train, on the same samples, a baseline at d=4,
#   a baseline at d=32 and MLET at d=4 with K=64 -> print AUC, log loss,
#   inference embedding size and speed.
# About 4 minutes on 2 quiet CPU cores. Usage: [LR=1.0] bash scripts/quickstart.sh [RUN_DIR] [ROWS] [-- dlrm_mlet.py flags ...]
# LR: the SGD learning rate of all three runs (1.0 suits the baselines; the paper's protocol uses 0.1-0.2).
# RUN_DIR may be relative to the caller's directory (default: the repository's runs/quickstart).
# Flags after -- go to the three training runs, as in reproduce.sh (e.g. -- --use-gpu on a GPU machine).
set -euo pipefail
CALLER_DIR=$PWD
# A path as given by the caller, made absolute against the caller's directory (the script works from the repository root).
from_caller() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$CALLER_DIR/$1" ;; esac; }
RUN_DIR=runs/quickstart
ROWS=2333334  # upstream's split: 6/7 train (2M samples), 1/14 test, 1/14 validation
USAGE="usage: [LR=1.0] bash scripts/quickstart.sh [RUN_DIR] [ROWS] [-- dlrm_mlet.py flags ...]"
POSITIONAL=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    -*) echo "quickstart.sh: error: $1: dlrm_mlet.py's flags go after -- ($USAGE)" >&2; exit 2 ;;
  esac
  POSITIONAL+=("$1"); shift
done
[ $# -gt 0 ] && shift  # the --
TRAIN_FLAGS=("$@")
[ ${#POSITIONAL[@]} -le 2 ] || { echo "quickstart.sh: error: too many arguments ($USAGE)" >&2; exit 2; }
if [ -n "${POSITIONAL[0]:-}" ]; then RUN_DIR=$(from_caller "${POSITIONAL[0]}"); fi
if [ -n "${POSITIONAL[1]:-}" ]; then ROWS=${POSITIONAL[1]}; fi
cd "$(dirname "$0")/.."
source scripts/lib/run_child.sh  # run_child: a signal to this script reaches the command it runs
source scripts/lib/python.sh  # use_python: PY as given, or the .venv set up
use_python quickstart.sh
mkdir -p "$RUN_DIR"
[ -f "$RUN_DIR/train.txt" ] ||
  run_child $PY data_utils.py generate kaggle --rows "$ROWS" --seed 1 --scale 0.001 --out "$RUN_DIR/train.txt"
COMMON=(--data-generation=dataset --data-set=kaggle "--raw-data-file=$RUN_DIR/train.txt" "--processed-data-file=$RUN_DIR/processed"
        --mini-batch-size=256 "--learning-rate=${LR:-1.0}" --arch-mlp-top=64-32-1 --numpy-rand-seed=1 --test-freq=2000 --print-time)

run() {
  local name=$1; shift
  echo "== $name: $*"
  run_child --tee "$RUN_DIR/$name.log" $PY dlrm_mlet.py "${COMMON[@]}" "$@" "${TRAIN_FLAGS[@]}" --results-json="$RUN_DIR/$name.json"
}

run baseline_d4 --arch-sparse-feature-size=4 --arch-mlp-bot=13-64-4
run baseline_d32 --arch-sparse-feature-size=32 --arch-mlp-bot=13-64-32
run mlet_d4_k64 --arch-sparse-feature-size=4 --arch-mlp-bot=13-64-4 --mlet-hidden=64
echo
run_child --tee "$RUN_DIR/summary.md" $PY scripts/summarize.py "$RUN_DIR/baseline_d4.json" "$RUN_DIR/baseline_d32.json" \
  "$RUN_DIR/mlet_d4_k64.json"
