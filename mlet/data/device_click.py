"""The synthetic click model generated on the device, at full scale, as the Criteo-Kaggle path would train on it.

``data_utils.py generate kaggle`` writes :class:`~mlet.data.synthetic.ClickModel`
samples as a ``train.txt`` (with Kaggle's blank fields), and preprocessing turns
that file into arrays (upstream's 7-day split, a vocabulary of the values seen
in training). At Kaggle's real cardinalities (33.8M values) and size (45.8M
rows) that text file is 11 GB and the path takes an hour on a CPU. This module
makes the same arrays directly on a GPU in seconds:

* :class:`DeviceClickModel` is the click model of :mod:`mlet.data.synthetic`
  with its parameters and draws in torch on the device: the same latent vectors
  and biases (standard normal, the latents scaled by ``1/sqrt(rank)``), Zipf
  popularity with a random popularity-to-id permutation per table, log-normal
  dense counts driven by one table's latents each, the same logit formula and
  the intercept solved by bisection for the positive rate on 100k samples.
  The random numbers come from torch's generators, not numpy's, so the values
  differ from the CPU model's for the same seed (the distribution is the same);
  on one kind of device they are the same every time (:attr:`DeviceRows.checksum`).
* :func:`kaggle_rows` applies what the text file and its preprocessing add:
  the fields Kaggle leaves blank, in their groups and at their rates
  (:data:`~mlet.data.preprocessing.raw_generate.KAGGLE_MISSING`; a blank id is a
  value of its own, a blank count reads as 0), ``log(1 + count)`` for the
  dense features, upstream's ``dlrm`` split (7 days by row count; days 1-6
  train, the first half of day 7 test, the second half validation) and the
  vocabulary: per feature, id 1 is the most frequent training value (ties: the
  lower model id; the CPU path breaks ties by the written hex value), 0 is
  shared by the values never seen in training.

:func:`device_bundle` serves the rows as a :class:`~mlet.data.sources.DataBundle`
of :class:`~mlet.data.device.DeviceArraySource` (batches cut on the device; one
bundle per run, sharing the rows).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mlet.data import synthetic
from mlet.data.device import DeviceArraySource
from mlet.data.preprocessing.layouts import KAGGLE_CATEGORICAL, KAGGLE_DENSE
from mlet.data.preprocessing.raw_generate import KAGGLE_CARDINALITIES, KAGGLE_MISSING, scaled_sizes
from mlet.data.sources import DataBundle
from mlet.data.synthetic import ClickModelConfig

KAGGLE_ROWS = 45_840_617  # data rows of the Criteo-Kaggle train.txt
CHUNK_ROWS = 1 << 20
INTERCEPT_SAMPLES = 100_000
DAYS = 7


def device_generator(device: torch.device, *seeds: int) -> torch.Generator:
    """A generator on ``device`` seeded by a mix of ``seeds`` (any non-negative integers)."""
    mixed = 17
    for s in seeds:
        mixed = (mixed * 1_000_003 + int(s) * 7_919 + 104_729) % (2**63)
    return torch.Generator(device=device).manual_seed(mixed)


class DeviceClickModel:
    """The planted-signal click model (:class:`~mlet.data.synthetic.ClickModel`) with parameters on ``device``."""

    def __init__(self, config: ClickModelConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        gen = device_generator(device, config.seed, 2006, 5623)
        sizes = list(config.table_sizes)
        self.num_tables, rank, dense = len(sizes), config.rank, config.dense_features
        self.cdfs = [zipf_cdf(n, config.zipf_exponent, device) for n in sizes]
        self.popularity_to_id = [torch.randperm(n, generator=gen, device=device) for n in sizes]
        self.offsets = torch.tensor([0, *sizes[:-1]], device=device).cumsum(0)
        total = sum(sizes)
        self.latents = torch.randn(total, rank, generator=gen, device=device) / math.sqrt(rank)
        self.biases = torch.randn(total, generator=gen, device=device)
        f64 = torch.float64
        self.dense_location = torch.rand(dense, generator=gen, device=device, dtype=f64) * 2.5 + 0.5
        self.dense_scale = torch.rand(dense, generator=gen, device=device, dtype=f64) + 0.5
        self.dense_weights = torch.randn(dense, generator=gen, device=device, dtype=f64) / math.sqrt(dense)
        self.dense_driver = torch.randint(0, self.num_tables, (dense,), generator=gen, device=device)
        self.dense_direction = torch.randn(dense, rank, generator=gen, device=device) / math.sqrt(rank)
        self.intercept = 0.0
        self.intercept = self.solve_intercept(gen)

    def sample_ids(self, n: int, gen: torch.Generator) -> Tensor:
        """``n x T`` model ids: Zipf ranks mapped through each table's popularity permutation."""
        uniform = torch.rand(self.num_tables, n, generator=gen, device=self.device, dtype=torch.float64)
        columns = []
        for t, cdf in enumerate(self.cdfs):
            ranks = torch.searchsorted(cdf, uniform[t], right=True).clamp_(max=len(cdf) - 1)
            columns.append(self.popularity_to_id[t][ranks])
        return torch.stack(columns, dim=1)

    def sample_dense_counts(self, ids: Tensor, gen: torch.Generator) -> Tensor:
        """Non-negative integer counts (``n x D``), correlated with the latents of one driving table each."""
        rank = self.config.rank
        drivers = self.latents[ids[:, self.dense_driver] + self.offsets[self.dense_driver]]
        signal = torch.einsum("njr,jr->nj", drivers, self.dense_direction).double() * math.sqrt(rank)
        noise = torch.randn(signal.shape, generator=gen, device=self.device, dtype=torch.float64)
        log_count = self.dense_location + self.dense_scale * (0.6 * signal + 0.8 * noise)
        return torch.floor(torch.expm1(log_count.clamp(0.0, 12.0))).long()

    def logits(self, ids: Tensor, dense_counts: Tensor, gen: torch.Generator) -> Tensor:
        """The click logit of each sample (float64)."""
        cfg, tables = self.config, self.num_tables
        latents = self.latents[ids + self.offsets]
        total = latents.sum(1)
        pairwise = 0.5 * ((total * total).sum(1) - (latents * latents).sum((1, 2)))
        pairwise = pairwise.double() / math.sqrt(max(tables * (tables - 1) / 2, 1.0) / cfg.rank)
        biases = self.biases[ids + self.offsets].sum(1).double() / math.sqrt(tables)
        dense_term = (torch.log1p(dense_counts.double()) - self.dense_location) @ self.dense_weights
        logits = self.intercept + cfg.interaction_std * pairwise + cfg.bias_std * biases + cfg.dense_std * dense_term
        if cfg.noise_std:
            logits = logits + cfg.noise_std * torch.randn(
                len(ids), generator=gen, device=self.device, dtype=torch.float64
            )
        return logits

    def solve_intercept(self, gen: torch.Generator) -> float:
        """The intercept that makes about ``positive_rate`` of samples click (bisection, as the CPU model)."""
        ids = self.sample_ids(INTERCEPT_SAMPLES, gen)
        logits = self.logits(ids, self.sample_dense_counts(ids, gen), gen)
        lo, hi = -30.0, 30.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            rate = float(torch.sigmoid(logits + mid).mean())
            lo, hi = (mid, hi) if rate < self.config.positive_rate else (lo, mid)
        return 0.5 * (lo + hi)

    def sample(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``n`` samples: dense counts (n x D int64), model ids (n x T int64), labels (n, bool)."""
        ids = self.sample_ids(n, gen)
        counts = self.sample_dense_counts(ids, gen)
        logits = self.logits(ids, counts, gen)
        labels = torch.rand(n, generator=gen, device=self.device, dtype=torch.float64) < torch.sigmoid(logits)
        return counts, ids, labels


def zipf_cdf(n: int, exponent: float, device: torch.device) -> Tensor:
    """:func:`mlet.data.synthetic.zipf_cdf` (float64, summed on the host) on ``device``.

    Summed on the host because a GPU's parallel prefix sum may add in another
    order from one call to the next: the last bit of a boundary then moves,
    and with it the id of a sample drawn right on it (seen on an H200: two
    generations of the same rows differed in one id).
    """
    return torch.from_numpy(synthetic.zipf_cdf(n, exponent)).to(device)


def blank_fields(counts: Tensor, ids: Tensor, sizes: Tensor, gen: torch.Generator) -> None:
    """Kaggle's empty fields, in place: a group goes blank together at its rate; a blank id becomes the
    table's extra value ``n_t`` (its own vocabulary entry, as the missing key of the CPU path), a blank count 0."""
    n = len(ids)
    dense_index = {name: i for i, name in enumerate(KAGGLE_DENSE)}
    sparse_index = {name: i for i, name in enumerate(KAGGLE_CATEGORICAL)}
    for group, share in KAGGLE_MISSING:
        blank = torch.rand(n, generator=gen, device=ids.device) < share
        for name in group:
            if name in sparse_index:
                t = sparse_index[name]
                ids[:, t] = torch.where(blank, sizes[t], ids[:, t])
            else:
                counts[:, dense_index[name]].masked_fill_(blank, 0)


def split_bounds(rows: int) -> tuple[int, int]:
    """Upstream's ``dlrm`` split of ``rows``: (end of training = 6 of 7 days, end of test = half of day 7)."""
    per_day, extra = divmod(rows, DAYS)
    days = [per_day + (d < extra) for d in range(DAYS)]
    train_end = sum(days[: DAYS - 1])
    return train_end, train_end + math.ceil(days[-1] / 2)


@dataclass
class DeviceRows:
    """Preprocessed rows on the device: dense (N x 13 float32, log(1 + count)), ids (N x T int32, vocabulary
    ids), labels (N float32), the split bounds, each table's size and training id counts, how long it took and
    :meth:`checksum`'s text."""

    dense: Tensor
    ids: Tensor
    labels: Tensor
    train_end: int
    test_end: int
    table_sizes: list[int]
    train_counts: list[Tensor]
    model_table_sizes: list[int]
    seed: int
    seconds: float
    checksum_text: str = ""

    @property
    def rows(self) -> int:
        """All rows (train, test, validation)."""
        return self.labels.shape[0]

    def checksum(self) -> str:
        """A digest of every value (the same rows give the same text): sums of ids weighted by feature,
        of labels and of the dense features."""
        weights = torch.arange(1, self.ids.shape[1] + 1, device=self.ids.device, dtype=torch.int64)
        id_sum = int((self.ids.long() * weights).sum())
        return f"ids {id_sum:x} labels {int(self.labels.sum())} dense {float(self.dense.double().sum()):.6f}"

    def describe(self) -> str:
        """One line for logs and results."""
        positives = float(self.labels.mean())
        return (
            f"synthetic click model on the device (seed {self.seed}, {self.rows:,} rows, {positives:.1%} positives;"
            f" dlrm split: train {self.train_end:,}, test {self.test_end - self.train_end:,},"
            f" val {self.rows - self.test_end:,}; {sum(self.table_sizes):,} table rows seen in training"
            f" of {sum(self.model_table_sizes):,} model values)"
        )


def kaggle_rows(
    rows: int = KAGGLE_ROWS,
    seed: int = 1,
    scale: float = 1.0,
    device: torch.device | str = "cuda",
    chunk: int = CHUNK_ROWS,
    model: dict | None = None,
) -> DeviceRows:
    """``rows`` click-model samples at Kaggle's cardinalities times ``scale``, blanked, split and numbered as
    preprocessing does (see the module docstring); ``model``: click-model knobs other than the defaults."""
    start = time.perf_counter()
    device = torch.device(device)
    config = ClickModelConfig(table_sizes=scaled_sizes(KAGGLE_CARDINALITIES, scale), seed=seed, **(model or {}))
    click = DeviceClickModel(config, device)
    sizes = torch.tensor(config.table_sizes, device=device)
    dense = torch.empty((rows, config.dense_features), dtype=torch.float32, device=device)
    ids = torch.empty((rows, len(config.table_sizes)), dtype=torch.int32, device=device)
    labels = torch.empty(rows, dtype=torch.float32, device=device)
    for c, lo in enumerate(range(0, rows, chunk)):
        hi = min(lo + chunk, rows)
        gen = device_generator(device, seed, 1, c)
        counts, chunk_ids, chunk_labels = click.sample(hi - lo, gen)
        blank_fields(counts, chunk_ids, sizes, gen)
        dense[lo:hi] = torch.log1p(counts.clamp(min=0).float())
        ids[lo:hi] = chunk_ids.int()
        labels[lo:hi] = chunk_labels.float()
    del click
    train_end, test_end = split_bounds(rows)
    table_sizes, train_counts = number_by_frequency(ids, train_end, [n + 1 for n in config.table_sizes])
    made = DeviceRows(
        dense,
        ids,
        labels,
        train_end,
        test_end,
        table_sizes,
        train_counts,
        list(config.table_sizes),
        seed,
        time.perf_counter() - start,
    )
    made.checksum_text = made.checksum()
    return made


def number_by_frequency(ids: Tensor, train_end: int, keys: Sequence[int]) -> tuple[list[int], list[Tensor]]:
    """Renumber each column of ``ids`` in place by training frequency (1: most frequent; 0: unseen in training).

    ``keys``: the number of distinct model values per column. Returns each
    table's size (values seen in training, plus the shared 0) and each new id's training count.
    """
    sizes, counts = [], []
    for t, n in enumerate(keys):
        column = ids[:, t].long()
        seen = torch.bincount(column[:train_end], minlength=n)
        ordered, keys_by_count = torch.sort(seen, descending=True, stable=True)
        distinct = int((ordered > 0).sum())
        new_id = torch.zeros(n, dtype=torch.int64, device=ids.device)
        new_id[keys_by_count[:distinct]] = torch.arange(1, distinct + 1, device=ids.device)
        ids[:, t] = new_id[column].int()
        sizes.append(distinct + 1)
        counts.append(torch.cat([ordered.new_zeros(1), ordered[:distinct]]))
    return sizes, counts


def device_bundle(rows: DeviceRows, batch_size: int, test_batch_size: int, seed: int) -> DataBundle:
    """The rows as a run trains on them: shuffled training batches (seeded by ``seed``), the test and
    validation splits in order."""

    def source(lo: int, hi: int, batch: int, shuffle: bool) -> DeviceArraySource:
        part = slice(lo, hi)
        return DeviceArraySource(rows.dense[part], rows.ids[part], rows.labels[part], batch, shuffle, seed)

    return DataBundle(
        train=source(0, rows.train_end, batch_size, True),
        test=source(rows.train_end, rows.test_end, test_batch_size, False),
        table_sizes=list(rows.table_sizes),
        dense_features=rows.dense.shape[1],
        description=rows.describe(),
        val=source(rows.test_end, rows.rows, test_batch_size, False),
    )
