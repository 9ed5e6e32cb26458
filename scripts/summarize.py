"""Tables and plots from dlrm_mlet.py results: a sweep directory, or single results JSONs.

The code is mlet/repro/summary.py; see docs/reproducing.md.
"""

from mlet.repro.summary import cli

if __name__ == "__main__":
    cli()
