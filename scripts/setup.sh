#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment .venv from requirements.txt,
# and install the project into it (editable), so scripts/, bench/ and tests/ import it
# and the console commands (dlrm-mlet, dlrm-mlet-data, ...) exist.
# Idempotent: a second run only installs what changed. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/run_child.sh  # run_child: a signal to this script reaches the command it runs
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  run_child .venv/bin/python -m pip install --quiet -r requirements.txt
  run_child .venv/bin/python -m pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi
.venv/bin/python -c "import torch, numpy, sklearn, mlet; print(f'.venv ready: torch {torch.__version__}, numpy {numpy.__version__}')"
