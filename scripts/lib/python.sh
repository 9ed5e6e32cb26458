# Sourced by the scripts (after run_child.sh): use_python sets PY, the Python that runs their commands.
# PY given by the caller (e.g. PY=python3 on a GPU machine with its own torch build, or offline): used as it is,
# once it is found to be a command. Otherwise the repository's .venv, set up or refreshed first by
# scripts/setup.sh (idempotent: it installs only what requirements.txt changed).
use_python() {  # use_python SCRIPT_NAME
  if [ -n "${PY:-}" ]; then
    command -v "$PY" > /dev/null || { echo "$1: error: PY=$PY: no such command" >&2; exit 2; }
  else
    run_child bash scripts/setup.sh
    PY=.venv/bin/python
  fi
}
