"""The paper's grid at Criteo-Kaggle scale on one GPU, in resumable pieces (``--report``: summary and ranks).

The code is mlet/repro/full_scale.py; see docs/reproducing.md.
"""

from mlet.repro.full_scale import cli

if __name__ == "__main__":
    cli()
