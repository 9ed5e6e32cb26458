"""Model-layer internals below ``mlet_layers.py``: the quotient-remainder and mixed-dimension table kinds, and
the tables' side stream on a GPU."""
