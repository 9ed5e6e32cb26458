"""The reference the benchmarks compare against: DLRM written the way upstream
DLRM (facebookresearch/dlrm, ``dlrm_s_pytorch.py``) and the MLET authors' fork
do it: one ``nn.EmbeddingBag`` per table and, for MLET, one bias-free
``nn.Linear`` per table, applied in a Python loop; upstream's interaction
(bmm, then gather of the lower triangle by index lists); sigmoid + ``BCELoss``;
one plain ``torch.optim.SGD`` over everything.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from mlet.data.preprocessing.raw_generate import KAGGLE_CARDINALITIES


def upstream_mlp(widths: list[int], sigmoid_last: bool) -> nn.Sequential:
    """Upstream's ``create_mlp``: Linear + ReLU, sigmoid after the last layer of the top MLP."""
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        n, m = widths[i], widths[i + 1]
        linear = nn.Linear(n, m, bias=True)
        with torch.no_grad():
            linear.weight.normal_(0.0, math.sqrt(2.0 / (m + n)))
            linear.bias.normal_(0.0, math.sqrt(1.0 / m))
        layers.append(linear)
        layers.append(nn.Sigmoid() if (sigmoid_last and i == len(widths) - 2) else nn.ReLU())
    return nn.Sequential(*layers)


class ReferenceDLRM(nn.Module):
    """Upstream-style DLRM; ``mlet_hidden > 0`` adds the fork's per-table projection."""

    def __init__(
        self, table_sizes: list[int], dim: int, bottom: list[int], top: list[int], mlet_hidden: int = 0
    ) -> None:
        super().__init__()
        width = mlet_hidden or dim
        self.emb_l = nn.ModuleList()
        for n in table_sizes:
            bag = nn.EmbeddingBag(n, width, mode="sum", sparse=True)
            with torch.no_grad():
                bag.weight.uniform_(-math.sqrt(1.0 / n), math.sqrt(1.0 / n))
            self.emb_l.append(bag)
        self.proj_l = (
            nn.ModuleList(nn.Linear(mlet_hidden, dim, bias=False) for _ in table_sizes) if mlet_hidden else None
        )
        num_features = len(table_sizes) + 1
        self.bot_l = upstream_mlp(bottom, sigmoid_last=False)
        self.top_l = upstream_mlp([dim + num_features * (num_features - 1) // 2, *top], sigmoid_last=True)
        self.li = torch.tensor([i for i in range(num_features) for j in range(i)])
        self.lj = torch.tensor([j for i in range(num_features) for j in range(i)])

    def forward(self, dense: torch.Tensor, offsets: list[torch.Tensor], indices: list[torch.Tensor]) -> torch.Tensor:
        """Probabilities; ``offsets``/``indices``: one tensor per table (upstream's lS_o, lS_i)."""
        x = self.bot_l(dense)
        ly = [emb(indices[k], offsets[k]) for k, emb in enumerate(self.emb_l)]
        if self.proj_l is not None:
            ly = [proj(v) for proj, v in zip(self.proj_l, ly)]
        batch, d = x.shape
        t = torch.cat([x, *ly], dim=1).view((batch, -1, d))
        z = torch.bmm(t, torch.transpose(t, 1, 2))
        zflat = z[:, self.li, self.lj]
        return self.top_l(torch.cat([x, zflat], dim=1)).squeeze(-1)


def scaled_cardinalities(scale: float) -> list[int]:
    """Kaggle's C1-C26 cardinalities times ``scale`` (at least 2 rows each)."""
    return [max(2, round(n * scale)) for n in KAGGLE_CARDINALITIES]


def random_one_hot(
    table_sizes: list[int], batch: int, dense: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense B x D, ids B x T (uniform), labels B (0/1)."""
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.integers(0, n, batch) for n in table_sizes], axis=1)
    return (
        torch.from_numpy(rng.random((batch, dense), dtype=np.float32)),
        torch.from_numpy(ids),
        torch.from_numpy(rng.integers(0, 2, batch).astype(np.float32)),
    )
