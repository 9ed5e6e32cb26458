"""Run the paper's grid: baselines and MLET configs x optimizers x learning rates x seeds.

The code is mlet/repro/sweep.py; see docs/reproducing.md.
"""

from mlet.repro.sweep import cli

if __name__ == "__main__":
    cli()
