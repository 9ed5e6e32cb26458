#!/usr/bin/env bash
# Quickstart: on the synthetic click model (26 tables, a scaled-down Criteo-Kaggle
# cardinality profile), train a baseline at d=4, a baseline at d=32 and MLET at d=4
# with K=64 on the same samples, and print AUC, log loss, sizes and speed.
# About 5 minutes on 2 CPU cores. Usage: bash scripts/quickstart.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN_DIR=${1:-runs/quickstart}
mkdir -p "$RUN_DIR"
SIZES=1460-583-10131-2202-305-24-12517-633-3-93-5683-8351-3194-27-14992-5461-10-5652-2173-4-7046-18-15-286-105-142
COMMON=(--data-generation=synthetic "--arch-embedding-size=$SIZES" --data-size=2000000 --test-data-size=100000
        --mini-batch-size=256 --learning-rate=1.0 --arch-mlp-top=64-32-1 --numpy-rand-seed=1
        --test-freq=2000 --print-time)

run() {
  local name=$1; shift
  echo "== $name: $*"
  .venv/bin/python dlrm_mlet.py "${COMMON[@]}" "$@" --results-json="$RUN_DIR/$name.json" | tee "$RUN_DIR/$name.log"
}

run baseline_d4 --arch-sparse-feature-size=4 --arch-mlp-bot=13-64-4
run baseline_d32 --arch-sparse-feature-size=32 --arch-mlp-bot=13-64-32
run mlet_d4_k64 --arch-sparse-feature-size=4 --arch-mlp-bot=13-64-4 --mlet-hidden=64
echo
.venv/bin/python scripts/results_table.py "$RUN_DIR/baseline_d4.json" "$RUN_DIR/baseline_d32.json" "$RUN_DIR/mlet_d4_k64.json" | tee "$RUN_DIR/summary.md"
