"""Effective rank of trained tables and AUC on rare vs frequent ids, for checkpoints of dlrm_mlet.py.

The code is mlet/repro/rank_analysis.py; see docs/reproducing.md.
"""

from mlet.repro.rank_analysis import cli

if __name__ == "__main__":
    cli()
