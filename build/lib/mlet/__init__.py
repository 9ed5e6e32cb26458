"""dlrm-mlet's library: the layers below the command-line files at the top of the tree.

Layers, bottom to top (a module imports only from its own layer or lower ones;
``tests/test_layers_imports.py`` keeps it so):

=================  ==========================================================
``mlet.core``      batches, configs, errors, launch environment, prefetching
``mlet.kernels``   Triton kernels, huge-page host memory
``mlet.data``      synthetic data, raw-file preprocessing, batch sources
model              ``mlet_layers.py``, ``dlrm_model.py`` (top-level files)
``mlet.training``  optimizers, the step, metrics, checkpoints, the loop
``mlet.parallel``  torchrun processes: sharding, all-to-all, process groups
``mlet.serving``   ONNX export
``mlet.repro``     the paper's grid, sweep, summary and analysis
commands           ``dlrm_mlet.py``, ``data_utils.py``, ``checkpoint.py``
=================  ==========================================================

See docs/architecture.md for the map.
"""
