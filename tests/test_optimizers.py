"""Optimizers: sparse/dense pairing, name-keyed state, the learning-rate policy."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import random_inputs, train_random_steps

from mlet.training.optimizers import LRPolicy, build_optimizer


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
def test_state_roundtrip_continues_exactly(make_model, name: str) -> None:
    """Train 6 steps, save, load into a fresh model/optimizer, train 6 more == 12 straight."""
    straight = make_model(16, seed=3)
    opt = build_optimizer(name, 0.05, straight.sparse_parameters(), straight.dense_parameters())
    train_random_steps(straight, opt, 12, first=0, batch=16, bag=2)

    half = make_model(16, seed=3)
    opt1 = build_optimizer(name, 0.05, half.sparse_parameters(), half.dense_parameters())
    train_random_steps(half, opt1, 6, first=0, batch=16, bag=2)
    saved_model, saved_opt = copy.deepcopy(half.state_dict()), copy.deepcopy(opt1.state_dict())

    resumed = make_model(16, seed=99)
    opt2 = build_optimizer(name, 0.05, resumed.sparse_parameters(), resumed.dense_parameters())
    resumed.load_state_dict(saved_model)
    opt2.load_state_dict(saved_opt)
    train_random_steps(resumed, opt2, 6, first=6, batch=16, bag=2)
    for (n, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), n


def test_state_is_keyed_by_parameter_name(make_model) -> None:
    model = make_model(8)
    opt = build_optimizer("adagrad", 0.1, model.sparse_parameters(), model.dense_parameters())
    train_random_steps(model, opt, 1, first=0, batch=16, bag=2)
    state = opt.state_dict()
    assert state["optimizer"] == "adagrad"
    assert set(state["state"]) == set(dict(model.named_parameters()))
    assert state["state"]["tables.weight"]["sum"].shape == model.tables.weight.shape


def test_loading_state_of_another_optimizer_is_refused(make_model) -> None:
    model = make_model(0)
    saved = build_optimizer("adagrad", 0.1, model.sparse_parameters(), model.dense_parameters()).state_dict()
    with pytest.raises(ValueError, match="--optimizer=adagrad"):
        build_optimizer("sgd", 0.1, model.sparse_parameters(), model.dense_parameters()).load_state_dict(saved)


def test_table_gradients_are_sparse(make_model) -> None:
    model = make_model(16)
    dense, features = random_inputs(model.config, 8, seed=0)
    model(dense, features).sum().backward()
    assert model.tables.weight.grad.is_sparse
    assert not model.tables.projection.grad.is_sparse


class UpstreamSchedule(torch.optim.lr_scheduler.LRScheduler):
    """Upstream DLRM's LRPolicyScheduler rules, restated: the rate comes from torch's step count,
    which is 1 before the first optimizer step; outside warm-up and decay the last rate set holds."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: int, decay_start: int, decay_steps: int) -> None:
        self.warmup, self.decay_start, self.decay_steps = warmup, decay_start, decay_steps
        self.held: list[float] = []
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        count, bases = self._step_count, self.base_lrs
        if count < self.warmup:
            self.held = [b * count / self.warmup for b in bases]
        elif self.decay_start <= count < self.decay_start + self.decay_steps:
            scale = ((self.decay_steps - (count - self.decay_start)) / self.decay_steps) ** 2
            self.held = [max(1e-7, b * scale) for b in bases]
        elif self.decay_steps == 0:
            return list(bases)
        return self.held


def upstream_rates(base: float, warmup: int, decay_start: int, decay_steps: int, steps: int) -> list[float]:
    """The rate of each of ``steps`` optimizer steps, stepping the scheduler after each, as upstream's loop."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    schedule = UpstreamSchedule(optimizer, warmup, decay_start, decay_steps)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


@pytest.mark.parametrize(
    ("warmup", "decay_start", "decay_steps"), [(4, 4, 5), (0, 0, 3), (0, 1, 4), (4, 10, 0), (0, 0, 0), (2, 2, 1)]
)
def test_lr_policy_matches_upstream_step_by_step(warmup: int, decay_start: int, decay_steps: int) -> None:
    """Where upstream's warm-up leads straight into the decay (or there is no decay), every step is upstream's."""
    policy = LRPolicy(0.1, warmup, decay_start, decay_steps)
    expected = upstream_rates(0.1, warmup, decay_start, decay_steps, 24)
    assert [policy.lr(s) for s in range(24)] == pytest.approx(expected, rel=1e-12)


def test_lr_policy_decays_on_upstreams_steps_and_holds_the_last_rate() -> None:
    """The trial's case (warm-up 4, decay from 10 over 5 steps): upstream's rates from step 9 on; the one
    documented difference is the base rate, not upstream's last warm-up rate, between warm-up and decay."""
    policy = LRPolicy(base_lr=0.1, warmup_steps=4, decay_start=10, decay_steps=5)
    ours = [policy.lr(s) for s in range(20)]
    upstream = upstream_rates(0.1, 4, 10, 5, 20)
    assert ours[9:] == pytest.approx(upstream[9:], rel=1e-12)
    assert ours[9:16] == pytest.approx([0.1, 0.064, 0.036, 0.016, 0.004, 0.004, 0.004])
    assert ours[:9] == pytest.approx([0.025, 0.05, 0.075] + [0.1] * 6)
    assert upstream[3:9] == pytest.approx([0.075] * 6)


def test_lr_policy_floor() -> None:
    """The decayed rate never falls below 1e-7 (upstream's minimum), nor above a base under it."""
    assert LRPolicy(1e-4, 0, 0, 1000).lr(998) == 1e-7
    assert LRPolicy(1e-9, 0, 0, 10).lr(50) == 1e-9
    assert LRPolicy(0.3).lr(10_000) == 0.3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sgd", "adagrad"])
@pytest.mark.parametrize(("hidden", "bag"), [(0, 1), (16, 1), (16, 3)])
def test_fused_update_follows_torch_optimizer(make_model, name: str, hidden: int, bag: int) -> None:
    """100 steps: per-step loss to 1e-4 and parameters to 1e-4 against sparse-gradient torch optimizers."""
    plain = make_model(hidden, seed=4)
    fused = copy.deepcopy(plain)
    reference = build_optimizer(name, 0.1, plain.sparse_parameters(), plain.dense_parameters())
    fast = build_optimizer(name, 0.1, fused.sparse_parameters(), fused.dense_parameters(), fused_tables=fused.tables)
    expected, got = train_random_steps(plain, reference, 100, bag=bag), train_random_steps(fused, fast, 100, bag=bag)
    assert max(abs(a - b) for a, b in zip(expected, got)) < 1e-4
    assert fused.tables.weight.grad is None  # rows were updated in the backward, no gradient kept
    for (n, a), b in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4, msg=n)
    assert not torch.equal(plain.tables.weight, make_model(hidden, seed=4).tables.weight)  # it trained


def test_fused_row_adagrad_with_repeated_rows() -> None:
    """Repeated rows in one step: one Adagrad step on the summed gradient (as torch on a coalesced sparse gradient)."""
    from mlet.training.optimizers import RowAdagrad

    weight = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    expected = weight.clone().requires_grad_(True)
    rows = torch.tensor([4, 1, 4, 4, 0])
    grads = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    RowAdagrad(weight, torch.tensor(0.5))(rows, grads.clone())
    reference = torch.optim.Adagrad([expected], lr=0.5)
    expected.grad = torch.zeros(6, 3).index_add_(0, rows, grads)
    reference.step()
    torch.testing.assert_close(weight, expected.detach(), rtol=1e-6, atol=1e-6)
    assert torch.equal(weight[[2, 3, 5]], torch.randn(6, 3, generator=torch.Generator().manual_seed(0))[[2, 3, 5]])


def test_state_moves_between_fused_and_torch_optimizers(make_model) -> None:
    model = make_model(8)
    fused = build_optimizer(
        "adagrad", 0.1, model.sparse_parameters(), model.dense_parameters(), fused_tables=model.tables
    )
    train_random_steps(model, fused, 3, bag=1)
    saved = copy.deepcopy(fused.state_dict())
    other = make_model(8)
    torch_opt = build_optimizer("adagrad", 0.1, other.sparse_parameters(), other.dense_parameters())
    torch_opt.load_state_dict(saved)
    assert torch.equal(torch_opt.state_dict()["state"]["tables.weight"]["sum"], saved["state"]["tables.weight"]["sum"])
    back = build_optimizer(
        "adagrad", 0.1, other.sparse_parameters(), other.dense_parameters(), fused_tables=other.tables
    )
    back.load_state_dict(torch_opt.state_dict())
    assert torch.equal(back.state_dict()["state"]["top.0.weight"]["sum"], saved["state"]["top.0.weight"]["sum"])


def row_wise_adagrad_reference(weight: torch.Tensor, momentum: torch.Tensor, rows, grads, lr: float) -> None:
    """Upstream DLRM's row-wise sparse Adagrad written out: coalesce the row gradients, add each row's mean
    squared gradient to its accumulator, step by the gradient over the accumulator's root (eps 1e-10)."""
    coalesced = torch.sparse_coo_tensor(rows.unsqueeze(0), grads, weight.shape).coalesce()
    for row, g in zip(coalesced.indices()[0].tolist(), coalesced.values(), strict=True):
        momentum[row] += g.pow(2).mean()
        weight[row] -= lr * g / (momentum[row].sqrt() + 1e-10)


def test_fused_row_wise_adagrad_follows_upstreams_rule() -> None:
    """Repeated rows sum first, the accumulator is one float a row, untouched rows stay, three steps."""
    from mlet.training.optimizers import RowWiseAdagrad

    weight = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    expected, momentum = weight.clone(), torch.zeros(6)
    fused = RowWiseAdagrad(weight, torch.tensor(0.5))
    for step, rows in enumerate([[4, 1, 4, 4, 0], [1, 5, 1], [4, 4, 3]]):
        ids = torch.tensor(rows)
        grads = torch.randn(len(rows), 3, generator=torch.Generator().manual_seed(step + 1))
        grads[ids == 3] *= 1e-11  # a row of tiny gradients: eps (1e-10) after the root, not under it
        fused(ids, grads.clone())
        row_wise_adagrad_reference(expected, momentum, ids, grads, 0.5)
    torch.testing.assert_close(weight, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused.state["momentum"], momentum, rtol=1e-6, atol=1e-7)
    assert fused.state["momentum"].shape == (6,) and float(fused.state["step"]) == 3
    assert torch.equal(weight[2], torch.randn(6, 3, generator=torch.Generator().manual_seed(0))[2])


@pytest.mark.parametrize("hidden", [0, 16])
def test_row_wise_adagrad_state_roundtrip_continues_exactly(make_model, hidden: int) -> None:
    """Tables row-wise, MLPs (and MLET's projection) element-wise as upstream; saved state continues exactly."""
    model = make_model(hidden, seed=2)
    opt = build_optimizer("rwsadagrad", 0.1, model.sparse_parameters(), model.dense_parameters(), model.tables)
    train_random_steps(model, opt, 3, bag=3)
    saved_model, saved_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert saved_state["state"]["tables.weight"]["momentum"].shape == (model.tables.weight.shape[0],)
    assert saved_state["state"]["bottom.0.weight"]["sum"].shape == model.bottom[0].weight.shape
    if hidden:
        assert saved_state["state"]["tables.projection"]["sum"].shape == model.tables.projection.shape
    straight = train_random_steps(model, opt, 3, first=3, bag=3)
    resumed_model = make_model(hidden, seed=9)
    resumed_model.load_state_dict(saved_model)
    resumed = build_optimizer(
        "rwsadagrad", 0.1, resumed_model.sparse_parameters(), resumed_model.dense_parameters(), resumed_model.tables
    )
    resumed.load_state_dict(saved_state)
    assert train_random_steps(resumed_model, resumed, 3, first=3, bag=3) == straight
    with pytest.raises(ValueError, match="runs with the fused table update only"):
        build_optimizer("rwsadagrad", 0.1, model.sparse_parameters(), model.dense_parameters())


def test_state_bytes_count_row_wise_state_per_row() -> None:
    from mlet.training.optimizers import state_bytes

    table, mlp = torch.zeros(1000, 16), torch.zeros(64, 13)
    assert state_bytes("sgd", [table], [mlp]) == 0
    assert state_bytes("adagrad", [table], [mlp]) == 4 * (16000 + 832)
    assert state_bytes("rwsadagrad", [table], [mlp]) == 4 * (1000 + 832)
    assert state_bytes("adam", [table], [mlp]) == 8 * (16000 + 832)


def test_every_fused_optimizer_has_a_row_update() -> None:
    from mlet.core.config import FUSED_OPTIMIZERS
    from mlet.training.optimizers import DENSE_UPDATES, ROW_UPDATES

    assert set(ROW_UPDATES) == set(DENSE_UPDATES) == set(FUSED_OPTIMIZERS)
