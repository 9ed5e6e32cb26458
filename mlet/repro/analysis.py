"""The paper's explanations, made checkable: effective rank of trained tables, and metrics on rare vs frequent ids.

* **Effective rank** (Roy and Vetterli, "The effective rank: a measure of
  effective dimensionality", EUSIPCO 2007): for singular values
  ``s_1..s_r`` of a matrix, ``p_i = s_i / sum(s)`` and
  ``erank = exp(-sum p_i log p_i)``; it lies between 1 (one direction) and the
  rank (all singular values equal); a zero matrix has erank 0 here. It is
  computed for each table as used at inference: the plain ``n x d`` table of
  a baseline, the collapsed ``W1 @ W2`` of MLET.
* **Rare vs frequent ids**: each test sample gets the *training count of its
  rarest id*, the minimum over its categorical features of how many training
  samples carry the same id (ids unseen in training count 0, as do the ids that
  ``--cat-min-count`` folds into the shared rare index, which is seen as often as
  all of those together). Samples are binned by that count (``edges``
  ``10,100``: ``< 10``, ``10-99``, ``>= 100``) and AUC and log loss computed per bin.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from mlet.data.sources import ArraySource
from mlet.training.metrics import ctr_metrics


def singular_values(matrix: torch.Tensor) -> np.ndarray:
    """Singular values of a 2-D tensor, in float64, largest first."""
    if matrix.dim() != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(matrix.shape)}")
    if matrix.numel() == 0:
        return np.zeros(0)
    if matrix.is_cuda:
        return gram_singular_values(matrix)
    return torch.linalg.svdvals(matrix.detach().double().cpu()).numpy()


def gram_singular_values(matrix: torch.Tensor, chunk: int = 1 << 20) -> np.ndarray:
    """Singular values of a 2-D tensor from its small Gram matrix (``W^T W`` of a tall one), summed in float64
    on the tensor's device in row chunks, largest first.

    For the full-size tables of a GPU (millions of rows): no copy to the host
    and no SVD of the tall matrix. Values below about 1e-8 of the largest are
    lost to the squaring; the effective rank does not see them.
    """
    w = matrix.detach()
    if w.shape[0] < w.shape[1]:
        w = w.t()
    gram = torch.zeros(w.shape[1], w.shape[1], dtype=torch.float64, device=w.device)
    for part in w.split(chunk):
        rows = part.double()
        gram += rows.t() @ rows
    return torch.linalg.eigvalsh(gram).clamp(min=0).sqrt().flip(0).cpu().numpy()


def effective_rank(values: np.ndarray) -> float:
    """Roy and Vetterli's effective rank of a matrix with singular values ``values`` (0 for a zero matrix)."""
    values = np.asarray(values, dtype=np.float64)
    if np.any(values < 0) or not np.all(np.isfinite(values)):
        raise ValueError("singular values must be finite and non-negative")
    total = values.sum()
    if total <= 0:
        return 0.0
    p = values[values > 0] / total
    return float(math.exp(-np.sum(p * np.log(p))))


def finite_spectrum(matrix: torch.Tensor) -> np.ndarray | None:
    """Singular values of ``matrix``, or None when it holds a NaN or infinity (diverged weights have no spectrum)."""
    return singular_values(matrix) if bool(torch.isfinite(matrix).all()) else None


def table_spectra(weights: Sequence[torch.Tensor], frequent_rows: Sequence[np.ndarray] | None = None) -> list[dict]:
    """Per table: rows, width, singular values and effective rank.

    With ``frequent_rows`` (a boolean mask per table) also the effective rank
    of those rows alone (``effective_rank_frequent``, None when fewer than
    two): rows rarely or never seen in training keep much of their random
    initialisation, which is full rank, so the learned structure shows best
    in the frequent rows. A table with non-finite weights is marked
    ``diverged``; its singular values and effective ranks are None (so are
    those of its frequent rows, where they hold a non-finite weight too).
    """
    out = []
    for t, w in enumerate(weights):
        values = finite_spectrum(w)
        entry = {
            "table": t,
            "rows": int(w.shape[0]),
            "dim": int(w.shape[1]),
            "diverged": values is None,
            "singular_values": None if values is None else values.tolist(),
            "effective_rank": None if values is None else effective_rank(values),
        }
        if frequent_rows is not None:
            mask = torch.as_tensor(np.asarray(frequent_rows[t], dtype=bool))
            entry["frequent_rows"] = int(mask.sum())
            frequent = finite_spectrum(w[mask]) if int(mask.sum()) >= 2 else None
            entry["effective_rank_frequent"] = None if frequent is None else effective_rank(frequent)
        out.append(entry)
    return out


# -- rare vs frequent ids ----------------------------------------------------------------


def transformed_ids(source: ArraySource, rows: slice) -> np.ndarray:
    """The ids of ``rows`` as the model sees them, int64: read as a batch's are (a processed file's ids checked
    against their vocabulary, :class:`~mlet.data.preprocessing.vocabulary.IdBounds`, then the source's id
    transform), so a damaged file stops with one line naming it, the row and the feature."""
    return np.asarray(source.ids_of(rows), dtype=np.int64)


def training_counts(source: ArraySource, table_sizes: Sequence[int], chunk: int = 1 << 18) -> list[np.ndarray]:
    """For each table, how many training samples carry each id."""
    counts = [np.zeros(n, dtype=np.int64) for n in table_sizes]
    for lo in range(0, source.num_samples, chunk):
        ids = transformed_ids(source, slice(lo, min(lo + chunk, source.num_samples)))
        for t, n in enumerate(table_sizes):
            counts[t] += np.bincount(ids[:, t], minlength=n)[:n]
    return counts


def rarest_id_counts(ids: np.ndarray, counts: Sequence[np.ndarray]) -> np.ndarray:
    """Per sample (row of ``ids``, N x T): the training count of its rarest id."""
    if ids.shape[1] != len(counts):
        raise ValueError(f"ids have {ids.shape[1]} features, the counts {len(counts)} tables")
    per_table = np.stack([counts[t][ids[:, t]] for t in range(len(counts))], axis=1)
    return per_table.min(axis=1)


def parse_edges(text: str) -> list[int]:
    """``"10,100"`` -> ``[10, 100]`` (increasing positive integers); ValueError otherwise."""
    try:
        edges = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"expected increasing positive integers like 10,100, got '{text}'") from None
    if not edges or edges[0] < 1 or any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError(f"expected increasing positive integers like 10,100, got '{text}'")
    return edges


def bin_labels(edges: Sequence[int]) -> list[str]:
    """``[10, 100]`` -> ``["< 10", "10-99", ">= 100"]``."""
    labels = [f"< {edges[0]}"] + [f"{a}-{b - 1}" for a, b in itertools.pairwise(edges)]
    return [*labels, f">= {edges[-1]}"]


def frequency_metrics(probs: np.ndarray, labels: np.ndarray, rarest: np.ndarray, edges: Sequence[int]) -> list[dict]:
    """AUC, log loss, accuracy and sample share per bin of the rarest-id count."""
    which = np.searchsorted(np.asarray(edges), rarest, side="right")
    out = []
    for b, label in enumerate(bin_labels(edges)):
        mask = which == b
        out.append(
            {
                "bin": label,
                "share": float(mask.mean()) if len(mask) else math.nan,
                **ctr_metrics(probs[mask], labels[mask]),
            }
        )
    return out


def data_key(flags: dict) -> tuple:
    """What identifies a run's data, from its recorded flags (checkpoints with equal keys share it): the data
    set's file, split and preprocessing (sub-sampling and skipped rows change the training rows too), or the
    generated data's size, seed and every ``--synthetic-*`` knob of the click model."""
    names: tuple[str, ...] = (
        "data_generation",
        "data_set",
        "raw_data_file",
        "processed_data_file",
        "data_split",
        "data_split_seed",
        "cat_min_count",
        "max_ind_range",
        "data_sub_sample_rate",
        "skip_bad_rows",
    )
    if flags.get("data_generation") != "dataset":
        names += ("data_size", "num_batches", "mini_batch_size", "test_data_size", "numpy_rand_seed")
        names += tuple(sorted(name for name in flags if name.startswith("synthetic_")))
    return tuple(f"{n}={flags.get(n)}" for n in names)
