"""Training: optimizers, the (graphed) step, metrics, checkpoints and resume, and the training loop."""
