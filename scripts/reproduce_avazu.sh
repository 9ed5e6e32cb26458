#!/usr/bin/env bash
# bash scripts/reproduce_avazu.sh [RAW_FILE] [sweep.py flags ...] [-- dlrm_mlet.py flags ...]: see scripts/reproduce.sh.
exec bash "$(dirname "$0")/reproduce.sh" avazu "$@"
