"""Generated data: upstream-style random batches and the synthetic click model.

* :class:`RandomBatches` is DLRM's ``--data-generation=random``: uniform dense
  features, uniform (or upstream's gaussian) ids, uniform soft labels (0/1 with
  ``--round-targets``); for speed runs, nothing to learn.
* :class:`ClickModel` is ``--data-generation=synthetic``: a click log with a
  planted signal, on which the paper's question (does a wider, or a two-layer,
  embedding learn more?) can be asked without the real data. Each categorical
  value ``v`` of table ``t`` has a hidden latent vector ``u_t[v]`` in a shared
  ``rank``-dimensional space and a scalar bias ``b_t[v]``; value popularity is
  Zipf per table; dense features are log-normal counts. The click logit is

      intercept + interaction_std * sum_{i<j} <u_i, u_j> / norm
                + bias_std * sum_t b_t / sqrt(T) + dense_std * <w, log1p(x)>' + noise_std * N(0, 1)

  and the label is Bernoulli(sigmoid(logit)), with the intercept solved so that
  about ``positive_rate`` of samples click. A DLRM with dot interaction can
  represent the pairwise term exactly when ``d >= rank``, and only part of it
  when ``d < rank``: embedding width matters, as on the real data.

Everything is a deterministic function of the seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mlet.core.batch import SparseFeatures
from mlet.core.config import RandomConfig, SyntheticConfig
from mlet.core.errors import UserError

DENSE_FEATURES = 13
SAMPLE_CHUNK = 1 << 16


def batch_generator(seed: int, split: int, batch: int) -> torch.Generator:
    """Independent stream for one batch of one split, so any batch can be made alone."""
    return torch.Generator().manual_seed((seed * 1_000_003 + split * 7_919_993 + batch * 104_729 + 17) % (2**63))


class RandomBatches:
    """Upstream DLRM's random data, generated per batch (any batch, any order).

    Bags hold between 1 and ``indices_per_lookup`` ids (exactly that many when
    ``fixed``), as upstream's ``--num-indices-per-lookup[-fixed]``; ``random``
    says how ids and labels are drawn (:class:`~mlet.core.config.RandomConfig`).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        table_sizes: Sequence[int],
        dense_features: int,
        indices_per_lookup: int = 1,
        fixed: bool = True,
        seed: int = 0,
        split: int = 0,
        random: RandomConfig | None = None,
    ) -> None:
        self.random = random or RandomConfig()
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.table_sizes = torch.tensor(list(table_sizes), dtype=torch.int64)
        self.dense_features = dense_features
        self.indices_per_lookup = indices_per_lookup
        self.fixed = fixed
        self.seed, self.split = seed, split

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def make_batch(self, index: int) -> tuple[torch.Tensor, SparseFeatures, torch.Tensor]:
        """Batch ``index``: ``(dense B x D, sparse, labels B)``."""
        size = min(self.batch_size, self.num_samples - index * self.batch_size)
        gen = batch_generator(self.seed, self.split, index)
        dense = torch.rand(size, self.dense_features, generator=gen)
        num_tables = len(self.table_sizes)
        if self.fixed:
            lengths = torch.full((num_tables, size), self.indices_per_lookup, dtype=torch.int64)
        else:
            lengths = torch.randint(1, self.indices_per_lookup + 1, (num_tables, size), generator=gen)
        lengths = torch.minimum(lengths, self.table_sizes[:, None])
        table_of_index = torch.arange(num_tables).repeat_interleave(lengths.sum(1))
        indices = self.draw_ids(self.table_sizes[table_of_index], gen)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.flatten().cumsum(0)])
        labels = torch.rand(size, generator=gen)
        if self.random.round_targets:
            labels = labels.round()
        one_hot = self.fixed and self.indices_per_lookup == 1
        return dense, SparseFeatures(indices, offsets, num_tables, one_hot, max_bag=self.indices_per_lookup), labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, SparseFeatures, torch.Tensor]]:
        for i in range(len(self)):
            yield self.make_batch(i)

    def draw_ids(self, rows: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One id for each entry of ``rows`` (the rows of the table it indexes), drawn as ``random`` says."""
        if self.random.distribution == "uniform":
            return (torch.rand(rows.numel(), generator=gen, dtype=torch.float64) * rows).long()
        r = self.random
        mu = (r.low + r.high) / 2 if r.mu == -1 else r.mu
        draws = torch.randn(rows.numel(), generator=gen, dtype=torch.float64) * r.sigma + mu
        ids = draws.clamp(r.low, r.high).long()  # truncated toward zero, as upstream's astype(int64)
        return torch.minimum(ids.clamp(min=0), rows - 1)


@dataclass(frozen=True, kw_only=True)
class ClickModelConfig(SyntheticConfig):
    """The click model of one data: its knobs (``--synthetic-*``), tables, dense width and seed."""

    table_sizes: tuple[int, ...]
    dense_features: int = DENSE_FEATURES
    seed: int = 0


MODEL_FLAGS = {
    "--synthetic-rank": "rank",
    "--synthetic-zipf": "zipf_exponent",
    "--synthetic-interaction-std": "interaction_std",
    "--synthetic-bias-std": "bias_std",
    "--synthetic-dense-std": "dense_std",
    "--synthetic-noise-std": "noise_std",
    "--synthetic-positive-rate": "positive_rate",
}
"""The click model's knobs on the command line: flag -> :class:`ClickModelConfig` field."""


def check_model_flags(knobs: dict[str, float]) -> None:
    """Knob values by field name (as :data:`MODEL_FLAGS`): a :class:`UserError` naming the first bad flag.

    The rank is at least 1, the Zipf exponent and the standard deviations are
    finite and >= 0, the positive rate lies strictly between 0 and 1.
    """
    for flag, field in MODEL_FLAGS.items():
        value = knobs[field]
        if field == "rank":
            problem = "must be >= 1" if value < 1 else ""
        elif field == "positive_rate":
            problem = "must be in (0, 1)" if not 0 < value < 1 else ""
        else:
            problem = "must be a finite number >= 0" if not (math.isfinite(value) and value >= 0) else ""
        if problem:
            raise UserError(f"{flag}: {problem}, got {value}")


def zipf_cdf(n: int, exponent: float) -> np.ndarray:
    """Cumulative probabilities of ranks ``0..n-1`` under p(k) ~ (k + 1)^-exponent."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


class ClickModel:
    """The planted-signal click model; see the module docstring."""

    def __init__(self, config: ClickModelConfig) -> None:
        self.config = config
        rng = np.random.default_rng([config.seed, 2006, 5623])
        self.num_tables = len(config.table_sizes)
        self._cdfs = [zipf_cdf(n, config.zipf_exponent) for n in config.table_sizes]
        self._popularity_to_id = [rng.permutation(n) for n in config.table_sizes]
        self._latents = [
            (rng.standard_normal((n, config.rank)) / math.sqrt(config.rank)).astype(np.float32)
            for n in config.table_sizes
        ]
        self._biases = [rng.standard_normal(n).astype(np.float32) for n in config.table_sizes]
        self._dense_location = rng.uniform(0.5, 3.0, config.dense_features)
        self._dense_scale = rng.uniform(0.5, 1.5, config.dense_features)
        self._dense_weights = rng.standard_normal(config.dense_features) / math.sqrt(config.dense_features)
        self._dense_driver = rng.integers(0, self.num_tables, config.dense_features)
        self._dense_direction = (
            rng.standard_normal((config.dense_features, config.rank)) / math.sqrt(config.rank)
        ).astype(np.float32)
        self.intercept = 0.0
        self.intercept = self._solve_intercept(rng)

    def _sample_ids(self, n: int, rng: np.random.Generator) -> np.ndarray:
        ids = np.empty((n, self.num_tables), dtype=np.int64)
        for t in range(self.num_tables):
            ranks = np.searchsorted(self._cdfs[t], rng.random(n), side="right")
            ids[:, t] = self._popularity_to_id[t][np.minimum(ranks, len(self._cdfs[t]) - 1)]
        return ids

    def _sample_dense_counts(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Non-negative integer counts, correlated with the latents of one driving table each."""
        drivers = np.stack([self._latents[t][ids[:, t]] for t in self._dense_driver], axis=1)
        signal = np.einsum("njr,jr->nj", drivers, self._dense_direction) * math.sqrt(self.config.rank)
        log_count = self._dense_location + self._dense_scale * (0.6 * signal + 0.8 * rng.standard_normal(signal.shape))
        return np.floor(np.expm1(np.clip(log_count, 0.0, 12.0))).astype(np.int64)

    def _logits(self, ids: np.ndarray, dense_counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        latents = np.stack([self._latents[t][ids[:, t]] for t in range(self.num_tables)], axis=1)
        total = latents.sum(axis=1)
        pairwise = 0.5 * ((total * total).sum(1) - (latents * latents).sum((1, 2)))
        pairs = self.num_tables * (self.num_tables - 1) / 2
        pairwise /= math.sqrt(max(pairs, 1.0) / cfg.rank)
        biases = sum(self._biases[t][ids[:, t]] for t in range(self.num_tables)) / math.sqrt(self.num_tables)
        dense = np.log1p(dense_counts) - self._dense_location
        dense_term = dense @ self._dense_weights
        noise = rng.standard_normal(len(ids)) if cfg.noise_std else 0.0
        return (
            self.intercept
            + cfg.interaction_std * pairwise
            + cfg.bias_std * biases
            + cfg.dense_std * dense_term
            + cfg.noise_std * noise
        )

    def _solve_intercept(self, rng: np.random.Generator, n: int = 100_000) -> float:
        ids = self._sample_ids(n, rng)
        logits = self._logits(ids, self._sample_dense_counts(ids, rng), rng)
        lo, hi = -30.0, 30.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            rate = np.mean(1.0 / (1.0 + np.exp(-(logits + mid))))
            lo, hi = (mid, hi) if rate < self.config.positive_rate else (lo, mid)
        return 0.5 * (lo + hi)

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` samples from stream ``seed``: dense counts (n x D int64), ids (n x T int64), labels (n uint8)."""
        parts = list(self.sample_chunks(n, seed))
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]

    def sample_chunks(self, n: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`sample` in pieces of at most ``SAMPLE_CHUNK`` rows (bounded memory for big files).

        Chunk ``c`` draws from its own generator ``(model seed, seed, c)``, so the
        samples depend only on ``(n, seed)``.
        """
        for c, start in enumerate(range(0, n, SAMPLE_CHUNK)):
            rng = np.random.default_rng([self.config.seed, seed, c])
            size = min(SAMPLE_CHUNK, n - start)
            ids = self._sample_ids(size, rng)
            dense_counts = self._sample_dense_counts(ids, rng)
            logits = self._logits(ids, dense_counts, rng)
            labels = (rng.random(size) < 1.0 / (1.0 + np.exp(-logits))).astype(np.uint8)
            yield dense_counts, ids, labels
