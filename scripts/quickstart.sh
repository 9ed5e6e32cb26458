#!/usr/bin/env bash
# The user path on synthetic data, end to end, in a few minutes on a CPU:
# generate a Criteo-Kaggle-format train.txt -> preprocess (cached) -> train a plain DLRM and an MLET one.
# Usage: bash scripts/quickstart.sh [rows]   (outputs under out/quickstart/)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
ROWS=${1:-300000}
OUT=out/quickstart
mkdir -p "$OUT"
PY=.venv/bin/python
[ -f "$OUT/train.txt" ] || $PY data_utils.py generate kaggle --rows "$ROWS" --seed 0 --scale 0.001 \
    --synthetic-rank 16 --synthetic-interaction-std 3 --out "$OUT/train.txt"
$PY data_utils.py preprocess --data-set=kaggle --raw-data-file="$OUT/train.txt" --processed-data-file="$OUT/processed"
COMMON=(--data-generation=dataset --data-set=kaggle --raw-data-file="$OUT/train.txt" --processed-data-file="$OUT/processed"
        --arch-mlp-top=64-1 --mini-batch-size=256 --optimizer=adagrad --learning-rate=0.05 --test-freq=500 --print-freq=250)
$PY dlrm_mlet.py "${COMMON[@]}" --arch-sparse-feature-size=16 --arch-mlp-bot=13-64-16 --results-json="$OUT/plain_d16.json"
$PY dlrm_mlet.py "${COMMON[@]}" --arch-sparse-feature-size=4 --mlet-hidden=64 --arch-mlp-bot=13-64-4 --results-json="$OUT/mlet_k64_d4.json"
$PY - "$OUT" <<'PY'
import json, sys
for name in ("plain_d16", "mlet_k64_d4"):
    r = json.load(open(f"{sys.argv[1]}/{name}.json"))
    print(f"{name}: test AUC {r['final']['auc']:.4f}, logloss {r['final']['logloss']:.4f}, {r['parameters']['inference']['count']:,} inference parameters")
PY
