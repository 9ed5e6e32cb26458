"""Evaluation: predictions over a whole test set and CTR metrics from scikit-learn."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from mlet.core.batch import StepBatch
from mlet.training.precision import autocast


@torch.no_grad()
def predict(
    model: torch.nn.Module, batches: Iterable[StepBatch], device: torch.device, bf16: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Click probabilities and labels for every sample of ``batches`` (no padding, no truncation);
    ``bf16``: the forward pass as ``--bf16`` trains it."""
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for batch in batches:
        # asynchronous only onto a GPU: a copy from one to the host returns before it has landed, and the CPU
        # would read the batch half-copied (a GPU run's quantized copies, evaluated on the CPU, met ids out of range)
        batch = batch.to(device, non_blocking=device.type == "cuda")
        with autocast(device, bf16):
            logits = model(batch.dense, batch.sparse)
        probs.append(torch.sigmoid(logits.float()))
        labels.append(batch.labels)
    model.train(was_training)
    if not probs:
        return np.zeros(0, np.float64), np.zeros(0, np.float64)
    return torch.cat(probs).cpu().double().numpy(), torch.cat(labels).cpu().double().numpy()


def load_metric_functions() -> None:
    """Import scikit-learn's metrics now (about a second), before a timed run starts, rather than in its first
    evaluation (``--mlperf-logging``: the time from ``run_start`` counts)."""
    import sklearn.metrics  # noqa: F401  # imported for its side effect: the module is then loaded


def ctr_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUC, log loss and accuracy (threshold 0.5) of click probabilities.

    AUC is NaN when the labels hold a single class (it is undefined then).
    All three are NaN when a probability is not finite (a diverged model: a
    NaN would otherwise count as a "no click" prediction). Labels are rounded
    to 0/1 (upstream's ``--round-targets``) for all three.
    """
    # imported here (see load_metric_functions): scikit-learn takes about a second to import, which --help, a
    # flag error and a run that never evaluates need not wait for
    from sklearn.metrics import log_loss, roc_auc_score

    hard = np.round(labels)
    finite = bool(np.isfinite(probs).all())
    both_classes = len(np.unique(hard)) == 2
    return {
        "auc": float(roc_auc_score(hard, probs)) if both_classes and finite else math.nan,
        "logloss": float(log_loss(hard, np.clip(probs, 1e-12, 1 - 1e-12), labels=[0, 1]))
        if len(hard) and finite
        else math.nan,
        "accuracy": float(np.mean((probs > 0.5) == (hard > 0.5))) if len(hard) and finite else math.nan,
        "samples": len(hard),
    }
