"""dlrm-mlet's library: the layers below the command-line files at the top of the tree.

Each subpackage is a layer (core, kernels, data, training, parallel, serving, repro, with the model and
the command files placed between them); a module imports only from its own layer or lower ones. The
map and the rule: docs/architecture.md; the layer order is ``LAYERS`` in tests/test_architecture.py,
which enforces it.
"""
