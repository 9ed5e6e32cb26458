"""Effective rank of trained tables and AUC on rare vs frequent ids, for checkpoints of dlrm_mlet.py.

The code is mlet/repro/rank_analysis.py; see docs/reproducing.md.
"""

from mlet.core.signals import interrupt_exits  # the standard library only: loaded before the imports it guards

with interrupt_exits("analyze_rank.py"):  # Ctrl-C while the modules import (torch: seconds): one line, status 130
    from mlet.repro.rank_analysis import cli

if __name__ == "__main__":
    cli()
