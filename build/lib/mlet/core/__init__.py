"""The bottom layer: batches, configs, errors and the launch environment; imports nothing of the project."""
