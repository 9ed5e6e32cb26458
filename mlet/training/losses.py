"""The training loss of ``--loss-function`` (``bce``, ``wbce``, ``mse``) with ``--loss-threshold``'s clamp,
as upstream DLRM defines them."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mlet.core.config import TrainConfig

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss(logits, labels)``: the batch's mean loss."""


def loss_function(config: TrainConfig, device: torch.device) -> LossFn:
    """``loss(logits, labels)`` for ``--loss-function`` (mean over the batch), with ``--loss-threshold``'s clamp."""
    loss = base_loss(config, device)
    t = config.loss_threshold
    if not 0.0 < t < 0.5:
        return loss
    # upstream clamps the probability p to [t, 1 - t]; on logits that is [logit(t), -logit(t)] (same gradients: none
    # beyond the bounds)
    bound = math.log((1 - t) / t)
    return lambda logits, labels: loss(logits.clamp(-bound, bound), labels)


def base_loss(config: TrainConfig, device: torch.device) -> LossFn:
    """``loss(logits, labels)`` for ``--loss-function`` (mean over the batch)."""
    if config.loss_function == "mse":
        return lambda logits, labels: F.mse_loss(torch.sigmoid(logits), labels)
    if config.loss_function == "bce":
        return F.binary_cross_entropy_with_logits
    weights = torch.tensor(config.loss_weights, device=device)

    def weighted_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_sample = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return (per_sample * weights[labels.round().long()]).mean()

    return weighted_bce
