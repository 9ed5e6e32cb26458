"""Tables and plots from dlrm_mlet.py results: a sweep directory, or single results JSONs.

The code is mlet/repro/summary.py; see docs/reproducing.md.
"""

from mlet.core.signals import interrupt_exits  # the standard library only: loaded before the imports it guards

with interrupt_exits("summarize.py"):  # Ctrl-C while the modules import (torch: seconds): one line, status 130
    from mlet.repro.summary import cli

if __name__ == "__main__":
    cli()
