"""The multi-process machinery's parts, tested in one process: the sharding plan and each rank's share of a batch,
the row and exchange layouts (the all-to-all simulated), which failures become one-line errors, and the replicated
gradients' all-reduce (when it starts, and its order behind the exchange). ``test_distributed.py`` runs the
processes themselves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import random_inputs, small_config

import dlrm_mlet
from dlrm_model import make_mlp
from mlet.core.batch import Batch, OwnedBags, local_sizes, sample_range
from mlet.core.signals import Terminated
from mlet.data.preprocessing.raw_generate import KAGGLE_CARDINALITIES
from mlet.parallel import agent_watch, endings
from mlet.parallel.distributed import MultiProcess
from mlet.parallel.endings import Endings
from mlet.parallel.exchange import EmbeddingExchange, ExchangeLayout
from mlet.parallel.gradient_sum import GradientSum
from mlet.parallel.process_group import Comm, communication_failure
from mlet.parallel.sharded_model import DistributedDLRM
from mlet.parallel.sharding import BYTE_SLACK, RowLayout, ShardingPlan, table_bytes
from mlet_layers import EmbeddingTables


# -- the sharding plan and the batch's shares ------------------------------------
def reference_lpt(sizes: list[int], world: int) -> int:
    """Largest load of plain longest-processing-time-first scheduling."""
    loads = [0] * world
    for size in sorted(sizes, reverse=True):
        loads[loads.index(min(loads))] += size
    return max(loads)


@pytest.mark.parametrize("world", [2, 3, 4, 8])
def test_plan_balances_bytes_then_tables_on_kaggle(world: int) -> None:
    config = small_config(hidden=64, dim=16, sizes=tuple(KAGGLE_CARDINALITIES))
    sizes = table_bytes(config, "adagrad")
    plan = ShardingPlan.balanced(sizes, world)
    assert sorted(t for ts in plan.tables_of_rank for t in ts) == list(range(26))
    loads = [plan.rank_bytes(r) for r in range(world)]
    assert max(loads) <= reference_lpt(sizes, world) * (1 + BYTE_SLACK)
    counts = [len(ts) for ts in plan.tables_of_rank]
    assert max(counts) - min(counts) <= 2, counts
    assert plan == ShardingPlan.balanced(sizes, world)


def test_plan_with_more_ranks_than_tables() -> None:
    plan = ShardingPlan.balanced([100], 2)
    assert plan.tables_of_rank == ((0,), ())
    text = plan.describe([10], "sgd")
    assert "rank 0: tables 0 (1 table, 10 rows" in text and "rank 1: tables none (0 tables, 0 rows, 0 B)" in text
    assert text.startswith("sharding plan: 1 table on 2 processes, ")


def test_table_bytes_count_the_real_parameters() -> None:
    config = small_config(hidden=16)
    tables = EmbeddingTables(config.table_sizes, config.dim, config.mlet_hidden)
    assert sum(table_bytes(config, "sgd")) == tables.parameter_bytes()
    assert sum(table_bytes(config, "adam")) == 3 * tables.parameter_bytes()
    projection = len(config.table_sizes) * config.mlet_hidden * config.dim
    row_wise = tables.parameter_bytes() + 4 * sum(config.table_sizes) + 4 * projection  # a float a row; W2 per element
    assert sum(table_bytes(config, "rwsadagrad")) == row_wise


@pytest.mark.parametrize("batch", [1, 7, 33, 64])
def test_local_shares_cover_the_batch(batch: int) -> None:
    for world in (2, 3):
        sizes = local_sizes(batch, world)
        assert sum(sizes) == batch and max(sizes) - min(sizes) <= 1
        assert [sample_range(batch, world, r) for r in range(world)] == [
            (sum(sizes[:r]), sum(sizes[: r + 1])) for r in range(world)
        ]


def test_shard_keeps_own_samples_and_own_tables() -> None:
    config = small_config()
    dense, features = random_inputs(config, batch=7, seed=3, bag=3)
    labels = torch.arange(7, dtype=torch.float32)
    process = MultiProcess.__new__(MultiProcess)
    process.rank, process.world_size = 1, 2
    process.layout = (config, ShardingPlan(((0, 2), (1, 3)), (1, 1, 1, 1)))
    shard = process.share.of(Batch(dense, features, labels))
    assert shard.size == 7 and torch.equal(shard.labels, labels[4:]) and torch.equal(shard.dense, dense[4:])
    expected = features.select_tables([1, 3])
    assert torch.equal(shard.sparse.features.indices, expected.indices) and torch.equal(
        shard.sparse.features.offsets, expected.offsets
    )


def test_only_collective_failures_become_one_line_errors() -> None:
    assert communication_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 4x2)")) is None
    assert communication_failure(ValueError("Connection closed by peer")) is None
    failure = communication_failure(
        RuntimeError(
            "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
            "[127.0.0.1]:29063. This is typically caused by a remote worker crashing. Check the logs of the remote "
            "worker before reporting an error. GLHF!"
        )
    )
    assert failure is not None and str(failure) == (
        "torch.distributed: Connection closed by peer [127.0.0.1]:29063 (another process has stopped: see its "
        "message, if it left one)"
    )
    timeout = communication_failure(RuntimeError("[../gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting"))
    assert timeout is not None and str(timeout) == (
        "torch.distributed: Timed out waiting (another process has stopped or hangs; --dist-timeout sets how long "
        "collectives wait)"
    )


def test_a_failed_collective_says_what_the_store_knows_of_the_others_end() -> None:
    """What the other processes recorded of their end (:mod:`mlet.parallel.endings`): the lowest rank's line; none
    recorded, in a store that answered: no message to point to (killed)."""
    closed = RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:4001")
    known = Endings({2: "rank 2 (pid 7 on h) was terminated (SIGTERM)", 1: "rank 1 (pid 6 on h) was ..."}, True)
    assert str(communication_failure(closed, known)) == (
        "torch.distributed: rank 1 (pid 6 on h) was ...; the run cannot go on without it (Connection closed by "
        "peer [127.0.0.1]:4001)"
    )
    assert str(communication_failure(closed, Endings({}, readable=True))) == (
        "torch.distributed: Connection closed by peer [127.0.0.1]:4001 (another process ended without a message: "
        "killed, e.g. by kill -9 or for lack of memory?)"
    )


def sleeping_child() -> subprocess.Popen:
    """A process of this host that waits to be killed."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_endings_know_whether_their_processes_have_been_reaped() -> None:
    """torchrun waits for a process that ends before it stops the others: a recorded process whose pid is still
    there (running, or exited and not waited for) was not the cause of a SIGTERM torchrun sent."""
    child, here = sleeping_child(), socket.gethostname()
    line = f"rank 1 (pid {child.pid} on {here}) was terminated (SIGTERM)"
    try:
        there = Endings({1: line}, True, {1: 5.0}, {1: (here, child.pid)})
        assert there.none_reaped() and there.before(6.0).none_reaped()
        assert not Endings({1: line}, True, {1: 5.0}, {1: ("another-host", child.pid)}).none_reaped()
        assert not Endings({1: line}, True, {1: 5.0}).none_reaped()  # recorded without its place: not known
        assert not Endings({}, True).none_reaped()
        child.terminate()
        time.sleep(0.2)
        assert there.none_reaped()  # exited, not yet waited for: still there
    finally:
        child.kill()
        child.wait()
    assert not there.none_reaped()


@pytest.mark.parametrize("reaped", [False, True])
def test_a_sigterm_after_another_rank_recorded_its_end_names_it_only_once_that_rank_was_reaped(
    monkeypatch, reaped: bool
) -> None:
    """torchrun passes a SIGTERM to the whole run on to every rank. On a loaded machine rank 1 recorded its end
    before rank 0 was even scheduled to take its own SIGTERM, and rank 0 named rank 1 as if torchrun had stopped
    it because rank 1 ended. torchrun stops the rest only after it has waited for the one that ended: while rank
    1's pid is still there, rank 0's SIGTERM is the whole run's."""
    child = sleeping_child()
    line = f"rank 1 (pid {child.pid} on {socket.gethostname()}) was terminated (SIGTERM)"
    recorded = Endings({1: line}, True, {1: time.time() - 0.05}, {1: (socket.gethostname(), child.pid)})
    monkeypatch.setattr(endings, "others", lambda: recorded)
    monkeypatch.setattr(agent_watch, "started_by_torchrun", lambda: True)
    monkeypatch.setattr(agent_watch, "agent_gone", lambda: False)
    monkeypatch.setattr(dlrm_mlet, "arrived", lambda signum: None)  # the SIGTERM's time: when raised, below
    try:
        if reaped:
            child.kill()
            child.wait()
        earlier = dlrm_mlet.ended_before(Terminated())
    finally:
        child.kill()
        child.wait()
    assert (earlier is not None and earlier.first == line) if reaped else earlier is None


def test_row_layout_merges_neighbours_and_takes_each_ranks_rows() -> None:
    sizes = [2, 3, 4, 5]
    full = torch.arange(14.0).unsqueeze(1)
    split = RowLayout.of_tables(ShardingPlan(((0, 2), (1, 3)), (1, 1, 1, 1)), sizes)
    assert split.segments == (((0, 2), (5, 4)), ((2, 3), (9, 5)))
    assert split.take(full, 0).squeeze(1).tolist() == [0, 1, 5, 6, 7, 8]
    merged = RowLayout.of_tables(ShardingPlan(((0, 1), (2, 3)), (1, 1, 1, 1)), sizes)
    assert merged.segments == (((0, 5),), ((5, 9),))
    with pytest.raises(ValueError, match="expected 14 rows"):
        merged.take(full[:3], 0)


def test_exchange_layouts_deliver_each_ranks_vectors_and_return_each_owners_gradients() -> None:
    """The all-to-all simulated with each rank's :class:`ExchangeLayout`: 3 ranks, an uneven batch (4, 3, 3
    samples), a rank without tables, tables not in ascending order; forward and backward."""
    tables_of_rank, batch, dim = ((3, 0), (), (1, 2, 4)), 10, 2
    layouts = [ExchangeLayout.of(batch, tables_of_rank, r, dim, torch.device("cpu"), None) for r in range(3)]
    embedded = torch.randn(batch, 5, dim)  # every sample's vector of every table
    starts = [0, 4, 7, 10]

    def all_to_all(buffers: list[torch.Tensor], splits: str) -> list[torch.Tensor]:
        chunks = [buf.split(getattr(layout, splits)) for buf, layout in zip(buffers, layouts)]
        return [torch.cat([chunks[sender][receiver] for sender in range(3)]) for receiver in range(3)]

    pooled = [embedded[:, list(tables)].transpose(0, 1) for tables in tables_of_rank]  # owned x B x d, as looked up
    sent = [p.reshape(-1, dim)[layout.send_row].view(-1) for p, layout in zip(pooled, layouts)]
    received = all_to_all(sent, "send_splits")
    for r, layout in enumerate(layouts):
        out = received[r].view(-1, dim)[layout.received_row].view(layout.local_batch, 5, dim)
        assert torch.equal(out, embedded[starts[r] : starts[r + 1]])

    grads = torch.randn(batch, 5, dim)
    outgoing = [
        grads[starts[r] : starts[r + 1]].reshape(-1, dim)[layout.sent_row].view(-1) for r, layout in enumerate(layouts)
    ]
    incoming = all_to_all(outgoing, "recv_splits")
    for o, (tables, layout) in enumerate(zip(tables_of_rank, layouts)):
        back = incoming[o].view(-1, dim)[layout.pooled_row].view(len(tables), batch, dim)
        assert torch.equal(back, grads[:, list(tables)].transpose(0, 1))


# -- the replicated gradients' all-reduce --------------------------------------
@pytest.fixture
def one_process_group(tmp_path):
    """A gloo default group of this process alone."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


@pytest.mark.usefixtures("one_process_group")
def test_gradient_sum_starts_inside_backward_and_waits_for_every_gradient(monkeypatch) -> None:
    """The all-reduce starts in backward, once the last MLP gradient is accumulated (so that it overlaps the
    tables' backward); a backward that leaves a parameter without gradient starts nothing, and the update's
    ``finish`` then refuses in one line."""
    mlp = make_mlp([3, 4, 1], seed=0, salt=0, last_activation=False)
    params = list(mlp.parameters())
    gradient_sum = GradientSum(params, None)
    in_backward = []
    all_reduce = torch.distributed.all_reduce

    def recording(*args, **kwargs):
        in_backward.append(torch._C._current_graph_task_id() != -1)
        return all_reduce(*args, **kwargs)

    monkeypatch.setattr(torch.distributed, "all_reduce", recording)
    x = torch.randn(5, 3)
    mlp(x).sum().backward()
    assert in_backward == [True]
    expected = [p.grad.clone() for p in params]
    gradient_sum.finish()
    for param, grad in zip(params, expected):
        torch.testing.assert_close(param.grad, grad)  # one process: the sum is its own gradient
    for param in params:
        param.grad = None
    mlp[0](x).sum().backward()  # the last layer gets no gradient
    assert in_backward == [True] and gradient_sum.pending is None
    with pytest.raises(RuntimeError, match="has no gradient"):
        gradient_sum.finish()
    # A new forward resets: the first layer's gradients of that backward do not count towards the next one, which
    # starts the all-reduce once, after its own last gradient (else it would start with the first layer at None).
    for param in params:
        param.grad = None
    gradient_sum.reset()
    mlp(x).sum().backward()
    assert in_backward == [True, True]


@pytest.mark.usefixtures("one_process_group")
def test_backward_sends_the_embeddings_back_before_the_gradient_all_reduce(monkeypatch) -> None:
    """The order the overlap relies on: the bottom MLP runs before the exchange, so backward (latest first) starts
    the reverse all-to-all before the bottom MLP's backward, and the all-reduce, started when the bottom MLP's
    gradients are complete, queues behind it on the communicator and runs beside the tables' backward."""
    config = small_config(hidden=8)
    comm = Comm(0, 1, torch.device("cpu"), None)
    model = DistributedDLRM(config, comm, ShardingPlan.balanced(table_bytes(config, "sgd"), 1), seed=0)
    order: list[str] = []
    exchange_backward, start = EmbeddingExchange.backward, GradientSum.start

    def logged_backward(ctx, grad):
        order.append("all-to-all back")
        return exchange_backward(ctx, grad)

    def logged_start(self):
        order.append("all-reduce")
        return start(self)

    model.load_state_dict(model.state_dict(), assign=True)  # new parameter objects: the hooks must follow them
    monkeypatch.setattr(EmbeddingExchange, "backward", staticmethod(logged_backward))
    monkeypatch.setattr(GradientSum, "start", logged_start)
    dense, features = random_inputs(config, batch=6, seed=2)
    model.bottom_features(dense).sum().backward()  # a backward of the bottom MLP alone: no all-reduce
    for param in model.parameters():
        param.grad = None
    model(dense, OwnedBags(features, 6)).sum().backward()  # the forward forgets the bottom MLP's earlier gradients
    assert order == ["all-to-all back", "all-reduce"]


EXITING = """
import atexit, sys
from mlet.parallel.process_group import exit_process


class Held:
    def __del__(self):
        print("torn down", flush=True)  # the interpreter's teardown frees module globals


held = Held()
atexit.register(print, "exit handler ran")
print("last line", end="")  # unflushed when exit_process is called
exit_process(3)
"""


@pytest.mark.parametrize(("world_size", "handlers"), [("1", True), ("2", False)])
def test_a_command_ends_without_the_interpreters_teardown(world_size: str, handlers: bool) -> None:
    env = {**os.environ, "WORLD_SIZE": world_size, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", EXITING], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 3
    assert ("exit handler ran" in done.stdout) == handlers  # one process runs its atexit handlers
    assert "last line" in done.stdout and "torn down" not in done.stdout


def test_a_profiled_command_keeps_its_profile(tmp_path) -> None:
    script, profile = tmp_path / "exiting.py", tmp_path / "out.prof"
    script.write_text(EXITING)
    env = {**os.environ, "WORLD_SIZE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    command = [sys.executable, "-m", "cProfile", "-o", str(profile), str(script)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert profile.stat().st_size > 0, done.stderr  # cProfile writes it once the program has returned
