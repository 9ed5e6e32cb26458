"""Run the paper's grid: baselines and MLET configs x optimizers x learning rates x seeds.

The code is mlet/repro/sweep.py; see docs/reproducing.md.
"""

from mlet.core.signals import interrupt_exits  # the standard library only: loaded before the imports it guards

with interrupt_exits("sweep.py"):  # Ctrl-C while the modules import (torch: seconds): one line, status 130
    from mlet.repro.sweep import cli

if __name__ == "__main__":
    cli()
