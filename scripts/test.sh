#!/usr/bin/env bash
# The project's test command: set up .venv, lint and type-check, build the wheel, run the test suite.
# Usage: bash scripts/test.sh [extra pytest arguments]
#   bash scripts/test.sh -m "not slow"    # the fast subset (about 2 minutes on 2 cores) while iterating; CI runs everything
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/run_child.sh  # run_child: a signal to this script reaches the command it runs
run_child bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
run_child .venv/bin/mypy                         # the library and the commands ([tool.mypy] in pyproject.toml)
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
.venv/bin/python -m pip wheel --quiet --no-deps --wheel-dir "$wheels" . 2>&1 | grep -v "^WARNING: Location" || true
ls "$wheels"/dlrm_mlet-*.whl > /dev/null          # `pip install .` would get a wheel
# At a terminal pytest runs in the foreground as before: --pdb and breakpoint() read the terminal, which a command
# that run_child starts may not (its process group is not the terminal's); a terminal's Ctrl-C reaches it there.
if [ -t 0 ]; then .venv/bin/python -m pytest -q "$@"; else run_child .venv/bin/python -m pytest -q "$@"; fi
