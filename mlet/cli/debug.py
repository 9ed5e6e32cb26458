"""``--debug-mode`` (upstream DLRM's): the architecture, the training batches and the parameters, printed.

Meant for tiny runs, as upstream's README example
(``--mini-batch-size=2 --data-size=6 --debug-mode``): every training batch
of the first epoch and every parameter are printed in full.
"""

from __future__ import annotations

import torch

from dlrm_model import DLRM
from mlet.core.launch import log
from mlet.data.sources import DataBundle


def print_architecture(model: DLRM) -> None:
    """The widths and sizes upstream's debug mode prints."""
    config = model.config
    log("model arch:")
    log(
        f"mlp top arch {len(config.top_mlp)} layers, with input to output dimensions: {config.interaction_width()}"
        f"-{'-'.join(map(str, config.top_mlp))}"
    )
    log(
        f"mlp bot arch {len(config.bottom_mlp) - 1} layers, with input to output dimensions: "
        f"{'-'.join(map(str, config.bottom_mlp))}"
    )
    log(f"# of features (sparse and dense): {len(config.table_sizes) + 1}; dense feature size {config.bottom_mlp[0]}")
    kind = (
        f" (MLET: trained as n x {config.mlet_hidden} @ {config.mlet_hidden} x {config.dim})"
        if config.mlet_hidden
        else ""
    )
    log(f"# of embeddings {len(config.table_sizes)}, with dimensions {config.dim}x{kind}: {list(config.table_sizes)}")


def print_batches(data: DataBundle, limit: int) -> None:
    """The first ``limit`` training batches of epoch 0: dense features, bag lengths per table, ids, labels."""
    log("data (inputs and targets):")
    for index, batch in enumerate(data.train.batches(0)):
        if index >= limit:
            break
        sparse = batch.sparse
        lengths = torch.diff(sparse.offsets).view(sparse.num_tables, -1)
        log(f"mini-batch: {index}")
        log(str(batch.dense))
        log(str(lengths))
        log(str(sparse.indices))
        log(str(batch.labels))


def print_parameters(model: DLRM, when: str) -> None:
    """Every parameter, by name."""
    log(f"{when} parameters (weights and bias):")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            log(f"{name}:\n{parameter.detach().cpu()}")
