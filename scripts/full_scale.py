"""The paper's grid at Criteo-Kaggle scale on one GPU, in resumable pieces (``--report``: summary and ranks).

The code is mlet/repro/full_scale.py; see docs/reproducing.md.
"""

from mlet.core.signals import interrupt_exits  # the standard library only: loaded before the imports it guards

with interrupt_exits("full_scale.py"):  # Ctrl-C while the modules import (torch: seconds): one line, status 130
    from mlet.repro.full_scale import cli

if __name__ == "__main__":
    cli()
